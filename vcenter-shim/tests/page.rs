//! The status page in a real browser (headless Chromium, Debian's `chromium`): the real `fdm-shim`
//! serves it over loopback for a cluster whose datastores hold what agents write there (the
//! master's report with a dead host and a restart, its claims, the hosts' heartbeat records, the
//! live ones advancing); an operator logs in with a token that has `+` and `/` in it, and the
//! rendered page must show the dead verdict, the restart events, who holds each datastore, the
//! heartbeats that stopped and the admission summary, with no Rust debug text anywhere; then it
//! must say that its data is stale, first when the master stops reporting, then when the shim is
//! gone. Screenshots are left in `target/test-artefacts/`. Skipped, saying why, without Chromium.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod browser;
mod shim_process;

use browser::{Browser, artefact_dir, find_chromium};
use fdm_agent::core::{Event, Role, Verdict};
use fdm_agent::runtime::report::report_event;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::ops::ClaimWrite;
use heartbeat_fs::records::{
    ClusterReport, DatastoreClaim, HeartbeatRecord, HostFlags, ReportEvent, ReportedHost,
    ReportedVm,
};
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use serde_json::{Value, json};
use shim_process::Shim;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A base64 token, as `head -c 32 /dev/urandom | base64` makes them, with both `+` and `/`: the
/// characters a token in a URL query got wrong.
const TOKEN: &str = "q+Vd3/Lr0x+9Zk/P2mWb7sT+yN4/aE1cH6uJ8oRfG0=";

/// Rust `Debug` text of domain types, which must never reach an operator (issue 16).
const DEBUG_TEXT: [&str; 6] = [
    "HostId(",
    "VmId(",
    "DatastoreId(",
    "Some(",
    "Time(",
    "Epoch(",
];

impl Shim {
    fn ok(&self, method: &str, path: &str, body: Value) {
        let (code, v) = self.call(method, path, Some(body));
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the master host-1 reports: host-3 died, its VM vm-3 is being restarted on host-2.
fn master_events(t0: u64) -> Vec<ReportEvent> {
    let events = [
        Event::RoleChanged {
            from: Role::Candidate,
            to: Role::Master,
            reason: "election won".into(),
        },
        Event::ClaimAcquired {
            datastore: DatastoreId(1),
            epoch: Epoch(4),
        },
        Event::ClaimAcquired {
            datastore: DatastoreId(2),
            epoch: Epoch(4),
        },
        Event::VerdictChanged {
            subject: HostId(3),
            from: Verdict::Alive,
            to: Verdict::Unreachable,
            reason: "network heartbeats stopped".into(),
        },
        Event::VerdictChanged {
            subject: HostId(3),
            from: Verdict::Unreachable,
            to: Verdict::Dead,
            reason: "network and datastore heartbeats stopped, leases expired, no probe answer"
                .into(),
        },
        Event::RestartNeeded {
            vm: VmId(3),
            from: Some(HostId(3)),
            reason: "host dead".into(),
        },
        Event::RestartIssued {
            vm: VmId(3),
            target: HostId(2),
            epoch: Epoch(4),
            attempt: 1,
        },
        Event::VmRestarted {
            vm: VmId(3),
            on: HostId(2),
            attempt: 1,
        },
    ];
    events
        .iter()
        .enumerate()
        .map(|(i, e)| report_event(i as u64 + 1, t0 + i as u64 * 700, e))
        .collect()
}

fn report(sequence: u64, t0: u64, generation: u64) -> ClusterReport {
    ClusterReport {
        cluster: ClusterId(1),
        master: HostId(1),
        master_incarnation: 1001,
        epoch: Epoch(4),
        sequence,
        unix_ms: unix_ms(),
        config_generation: generation,
        ha_paused: false,
        hosts: vec![
            ReportedHost {
                host: HostId(1),
                verdict: "alive".into(),
                network_age_ms: Some(0),
            },
            ReportedHost {
                host: HostId(2),
                verdict: "alive".into(),
                network_age_ms: Some(310),
            },
            ReportedHost {
                host: HostId(3),
                verdict: "dead".into(),
                network_age_ms: Some(41_000 + sequence * 500),
            },
        ],
        vms: vec![
            ReportedVm {
                vm: VmId(1),
                host: Some(HostId(1)),
                state: Some("running".into()),
                restart: "idle".into(),
            },
            ReportedVm {
                vm: VmId(2),
                host: Some(HostId(2)),
                state: Some("running".into()),
                restart: "idle".into(),
            },
            ReportedVm {
                vm: VmId(3),
                host: Some(HostId(2)),
                state: None,
                restart: "restarting on host-2 from host-3 (attempt 1)".into(),
            },
        ],
        events: master_events(t0),
    }
}

fn heartbeat(host: u32, sequence: u64) -> HeartbeatRecord {
    HeartbeatRecord {
        cluster: ClusterId(1),
        host: HostId(host),
        incarnation: 500 + u64::from(host),
        sequence,
        flags: HostFlags::default().with(HostFlags::MASTER, host == 1),
        power_on_generation: 0,
        master: HostId(1),
    }
}

/// What the agents of a cluster write on its datastores, until `reporting`/`running` turn false:
/// host-1 (master) claims both datastores, renews the claims and writes its report; host-1 and
/// host-2 beat on both; host-3 beat once, long ago, and is dead.
fn agents_writing(
    ds: Vec<PathBuf>,
    generation: u64,
    reporting: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = unix_ms() - 60_000;
        let mut dirs: Vec<(DatastoreId, DatastoreDir, DatastoreClaim)> = ds
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = DatastoreId(i as u32 + 1);
                let mut dir = DatastoreDir::open(p).expect("datastore");
                let claim = DatastoreClaim {
                    cluster: ClusterId(1),
                    datastore: id,
                    owner: HostId(1),
                    owner_incarnation: 1001,
                    epoch: Epoch(4),
                    renewal: 1,
                    released: false,
                };
                dir.write_claim(
                    &claim,
                    ClaimWrite::Acquire {
                        expect: None,
                        lapsed: false,
                    },
                )
                .expect("claim");
                dir.write_heartbeat(&heartbeat(3, 77)).expect("heartbeat");
                (id, dir, claim)
            })
            .collect();
        // Each host's heartbeat sector is its own open file on the datastore.
        let mut host2: Vec<DatastoreDir> = ds
            .iter()
            .map(|p| DatastoreDir::open(p).expect("datastore"))
            .collect();
        let mut seq = 1;
        while running.load(Ordering::SeqCst) {
            for ((_, dir, claim), other) in dirs.iter_mut().zip(host2.iter_mut()) {
                claim.renewal = seq;
                let _ = dir.write_claim(claim, ClaimWrite::Renew);
                let _ = dir.write_heartbeat(&heartbeat(1, seq));
                let _ = other.write_heartbeat(&heartbeat(2, seq));
                if reporting.load(Ordering::SeqCst) && seq % 3 == 0 {
                    let _ = dir.write_report(&report(seq, t0, generation));
                }
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(150));
        }
    })
}

/// A line for the person running the tests, shown even when the harness captures the output of
/// passing tests (it captures `println!`, not writes to the stderr handle).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn assert_no_debug_text(what: &str, text: &str) {
    for mark in DEBUG_TEXT {
        assert!(!text.contains(mark), "{what} shows {mark:?}:\n{text}");
    }
}

/// The text of the element `selector` matches, or null.
fn text_of(selector: &str) -> String {
    format!("document.querySelector({selector:?})?.innerText ?? null")
}

#[test]
fn the_status_page_shows_a_dead_host_and_its_restart_and_says_when_it_is_stale() {
    let Some(chromium) = find_chromium() else {
        say(
            "skipping the status-page browser test: no chromium found (Debian's `chromium`; \
             scripts/install-test-deps.sh installs it, FDM_CHROMIUM names another)",
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    std::fs::write(root.join("token"), format!("{TOKEN}\n")).unwrap();
    let ds: Vec<PathBuf> = (1..=2).map(|i| root.join(format!("ds{i}"))).collect();
    for d in &ds {
        std::fs::create_dir(d).unwrap();
    }

    // The inventory, through the API.
    let shim = Shim::start(root, 1, TOKEN);
    for h in 1..=3u32 {
        shim.ok(
            "POST",
            "/v1/hosts",
            json!({"id": h, "name": format!("esx{h}"), "address": format!("127.0.0.1:{}", 7400 + h),
                   "cpu_mhz": 16000, "memory_mb": 65536}),
        );
    }
    for (i, d) in ds.iter().enumerate() {
        let mounts: Vec<Value> = (1..=3)
            .map(|h| json!({"host": h, "path": d.display().to_string()}))
            .collect();
        shim.ok(
            "POST",
            "/v1/datastores",
            json!({"id": i + 1, "name": format!("san-{}", i + 1), "mounts": mounts}),
        );
    }
    for (id, name, home, priority) in [
        (1, "db", 1, "Highest"),
        (2, "web", 2, "Medium"),
        (3, "cache", 1, "High"),
        (4, "scratch", 2, "Low"),
    ] {
        shim.ok(
            "POST",
            "/v1/vms",
            json!({"id": id, "name": name, "home": home, "priority": priority,
                   "cpu_mhz": 2000, "memory_mb": 4096, "protected": id != 4}),
        );
    }
    shim.ok(
        "PUT",
        "/v1/config/ha",
        json!({"admission": {"HostFailuresTolerated": 1}}),
    );
    let reporting = Arc::new(AtomicBool::new(true));
    let running = Arc::new(AtomicBool::new(true));
    let (_, cfg) = shim.call("GET", "/v1/config", None);
    let generation = cfg["generation"].as_u64().expect("generation");
    let writer = agents_writing(ds.clone(), generation, reporting.clone(), running.clone());

    // The page is public and holds no data; the JSON needs the token, which the page sends as a
    // header, so `+` and `/` arrive intact.
    let mut b = Browser::launch(&chromium, 1400, 1000);
    b.navigate(&format!("{}/", shim.url));
    b.wait_for(
        "!document.getElementById('login').hidden && document.activeElement?.id === 'token'",
        Duration::from_secs(10),
    )
    .expect("the page asks for the token, the field focused");
    assert_eq!(b.eval("document.getElementById('main').hidden"), true);

    // A wrong token is refused, in words.
    b.type_text("not-the-token");
    b.press_enter();
    b.wait_for(
        "document.getElementById('login-error').innerText.includes('refused this token')",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("the wrong token is not refused:\n{}", b.visible_text()));
    assert_eq!(b.eval("sessionStorage.getItem('fdm-token')"), Value::Null);

    // The right one, typed into the form.
    b.eval("document.getElementById('token').value = ''; document.getElementById('token').focus(); true");
    b.type_text(TOKEN);
    b.press_enter();
    b.wait_for(
        "document.querySelector('[data-host=\"3\"] .verdict')?.innerText === 'dead'",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|| panic!("host-3 is not shown dead:\n{}", b.visible_text()));
    // The live hosts' heartbeats advance; host-3's stopped long enough to have lapsed.
    b.wait_for(
        "(document.querySelector('[data-host=\"3\"]')?.innerText ?? '').includes('stopped') && \
         (document.querySelector('[data-datastore=\"2\"]')?.innerText ?? '').includes('renewed') && \
         document.querySelectorAll('#events tr[data-event]').length >= 8",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|| panic!("heartbeats, claims or events missing:\n{}", b.visible_text()));
    assert_eq!(
        b.eval("sessionStorage.getItem('fdm-token')"),
        TOKEN,
        "the token is kept for the tab"
    );
    let href = b.eval("location.href");
    assert!(
        !href.as_str().unwrap_or("").contains("token"),
        "no token in the address: {href}"
    );

    let shot = artefact_dir().join("status-page.png");
    b.screenshot(&shot);
    say(&format!("status page screenshot: {}", shot.display()));

    // What the operator sees.
    let host = |id: u32| format!("document.querySelector('[data-host=\"{id}\"]')?.innerText ?? ''");
    let h3 = b.eval(&host(3));
    let h3 = h3.as_str().unwrap_or_default();
    assert!(h3.contains("host-3") && h3.contains("esx3"), "{h3}");
    assert_eq!(
        b.eval("document.querySelector('[data-host=\"3\"] .verdict').className"),
        "badge verdict v-dead",
        "the dead verdict in its colour"
    );
    let h1 = b.eval(&host(1));
    let h1 = h1.as_str().unwrap_or_default();
    assert!(
        h1.contains("master")
            && h1.contains("alive")
            && h1.contains("san-1")
            && h1.contains("san-2"),
        "the master with its heartbeats on both datastores: {h1}"
    );
    let h2 = b.eval(&host(2));
    assert!(
        h2.as_str()
            .is_some_and(|t| t.contains("slave of host-1") && !t.contains("stopped")),
        "host-2 is a slave of the master, beating: {h2}"
    );
    for d in 1..=2 {
        let row = b.eval(&format!(
            "document.querySelector('[data-datastore=\"{d}\"]').innerText"
        ));
        let row = row.as_str().unwrap_or_default();
        assert!(
            row.contains(&format!("san-{d}"))
                && row.contains("host-1, host-2, host-3")
                && row.contains("host-1 (master), epoch 4"),
            "datastore {d}: name, mounts and claim holder: {row}"
        );
    }
    let vm3 = b.eval("document.querySelector('[data-vm=\"3\"]').innerText");
    let vm3 = vm3.as_str().unwrap_or_default();
    assert!(
        vm3.contains("cache")
            && vm3.contains("restarting on host-2 from host-3")
            && vm3.contains("High")
            && vm3.contains("host-2"),
        "vm-3's restart in words, its priority: {vm3}"
    );
    let vm4 = b.eval("document.querySelector('[data-vm=\"4\"]').innerText");
    assert!(
        vm4.as_str()
            .is_some_and(|t| t.contains("unprotected") && t.contains("not reported")),
        "{vm4}"
    );
    let events = b.eval("document.getElementById('events').innerText");
    let events = events.as_str().unwrap_or_default();
    for words in [
        "host-3 declared dead: network and datastore heartbeats stopped",
        "vm-3 needs a restart",
        "restarting vm-3 on host-2 (attempt 1",
        "vm-3 restarted on host-2 (attempt 1)",
    ] {
        assert!(
            events.contains(words),
            "the events show {words:?}:\n{events}"
        );
    }
    // Times in UTC, to the second, newest first.
    let first_time = b.eval("document.querySelector('#events tr td.time').innerText");
    assert!(
        first_time
            .as_str()
            .is_some_and(|t| t.len() == 19 && t.as_bytes()[4] == b'-' && t.as_bytes()[13] == b':'),
        "{first_time}"
    );
    assert_eq!(
        b.eval("document.querySelector('#events tr').dataset.name"),
        "vm-restarted"
    );
    let admission = b.eval("document.getElementById('admission').innerText");
    let admission = admission.as_str().unwrap_or_default();
    assert!(
        admission.contains("tolerate 1 host failure") && admission.contains("OK"),
        "{admission}"
    );
    let summary = b.eval("document.getElementById('summary').innerText");
    assert!(
        summary
            .as_str()
            .is_some_and(|t| t.contains("2 of 3 alive") && t.contains("1 dead")),
        "{summary}"
    );
    assert_eq!(b.eval("document.body.dataset.stale"), "false");
    assert!(
        b.eval("document.getElementById('stale').hidden") == true,
        "no stale banner while the data is fresh"
    );
    let dom = b.dom();
    assert_no_debug_text("the rendered status page", &dom);
    assert!(!dom.contains(TOKEN), "the token is not in the page");

    // The session survives a reload without asking again.
    b.navigate(&format!("{}/", shim.url));
    b.wait_for(
        "document.getElementById('login').hidden && document.querySelector('[data-host=\"3\"] .verdict')?.innerText === 'dead'",
        Duration::from_secs(10),
    )
    .expect("still logged in after a reload");

    // The master stops reporting: the page says its data is old.
    reporting.store(false, Ordering::SeqCst);
    let stale = b
        .wait_for(
            "document.body.dataset.stale === 'true' && !document.getElementById('stale').hidden && document.getElementById('stale').innerText",
            Duration::from_secs(20),
        )
        .expect("a stale report is shown as stale");
    assert!(
        stale
            .as_str()
            .is_some_and(|t| t.contains("report is stale") && t.contains("host-1")),
        "{stale}"
    );
    assert_eq!(b.eval(&text_of("#live")), "stale");

    // The shim goes away: the page says it is not updating, and keeps what it showed.
    drop(shim);
    let gone = b
        .wait_for(
            "(document.getElementById('stale').innerText || '').includes('Not updating') && document.getElementById('stale').innerText",
            Duration::from_secs(20),
        )
        .expect("a failed fetch is shown");
    assert!(
        gone.as_str()
            .is_some_and(|t| t.contains("cannot reach fdm-shim")),
        "{gone}"
    );
    assert_eq!(
        b.eval("document.querySelector('[data-host=\"3\"] .verdict')?.innerText"),
        "dead"
    );
    let shot = artefact_dir().join("status-page-stale.png");
    b.screenshot(&shot);
    say(&format!("stale status page screenshot: {}", shot.display()));
    assert_no_debug_text("the stale status page", &b.dom());

    b.drain_events();
    // Only the refused connections to the stopped shim may be logged as errors.
    let unexpected: Vec<&String> = b
        .errors
        .iter()
        .filter(|e| !e.contains("ERR_CONNECTION_REFUSED") && !e.contains("401"))
        .collect();
    assert!(unexpected.is_empty(), "page errors: {unexpected:#?}");
    running.store(false, Ordering::SeqCst);
    writer.join().expect("writer thread");
}

//! The `fdm-agent` binary on its own (no root needed): configuration errors, the degraded modes it
//! starts in (a datastore not mounted, libvirt not answering), SIGHUP reload and SIGTERM.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_agent::wait::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_fdm-agent");

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    fn config(dir: &Path, extra: &str, datastore: &Path) -> String {
        format!(
            "host_id = 1\ncluster_id = 5\nsecret_file = \"secret\"\nbind = \"127.0.0.1:{}\"\n\
             state_dir = \"state\"\nstatus_socket = \"{}\"\nprobe = \"none\"\n{extra}\n\
             [[datastores]]\nid = 1\npath = \"{}\"\n",
            free_port(),
            dir.join("agent.sock").display(),
            datastore.display()
        )
    }

    fn start(driver: &str, datastore: Option<&str>, extra: &str) -> Daemon {
        Self::start_with_env(driver, datastore, extra, &[])
    }

    fn start_with_env(
        driver: &str,
        datastore: Option<&str>,
        extra: &str,
        env: &[(&str, &Path)],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret"), "7e".repeat(32)).expect("secret");
        let ds = match datastore {
            Some(p) => PathBuf::from(p),
            None => {
                let p = dir.path().join("ds1");
                std::fs::create_dir(&p).expect("ds");
                p
            }
        };
        let text = format!("{}{driver}", Self::config(dir.path(), extra, &ds));
        std::fs::write(dir.path().join("agent.toml"), text).expect("agent.toml");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        // systemd names the process its watchdog is for (WATCHDOG_PID): a shell that sets it to
        // its own pid, then becomes the agent, does the same.
        let mut cmd = if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", EXE]);
            c
        } else {
            Command::new(EXE)
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(dir.path().join("agent.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        Daemon {
            dir,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(15), || {
            self.log().contains(needle).then_some(())
        })
        .is_some()
    }

    fn status(&self) -> Option<serde_json::Value> {
        wait_until(Duration::from_secs(10), || {
            let s =
                fdm_agent::runtime::status::query(&self.dir.path().join("agent.sock"), "status")
                    .ok()?;
            serde_json::from_str(&s).ok()
        })
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    fn still_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const PROCESS: &str = "[driver]\nkind = \"process\"\n";

/// `fdm-agent <command> --config <path>`, to completion.
fn with_config(command: &str, config: &Path) -> std::process::Output {
    Command::new(EXE)
        .args([command, "--config"])
        .arg(config)
        .output()
        .expect("fdm-agent")
}

#[test]
fn check_config_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "host_id = 0\ncluster_id = 1\nsecret_file = \"nope\"\nbind = \"here\"\nstate_dir = \"s\"\n\
         watchdog = \"hope\"\n[driver]\nkind = \"libvirt\"\n[timings]\nds_lease = 1\n",
    )
    .unwrap();
    let config = dir.path().join("agent.toml");
    let out = with_config("check-config", &config);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "host_id:",
        "secret_file:",
        "bind:",
        "watchdog:",
        "driver.uri:",
        "timings.ds_lease:",
    ] {
        assert!(text.contains(field), "{field} not named in:\n{text}");
    }
    // `run` refuses the same file with the same reasons and does not start.
    let out = with_config("run", &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host_id"));
    // Not TOML at all.
    std::fs::write(&config, "host_id = [").unwrap();
    let out = with_config("check-config", &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not valid TOML"));
}

/// Settings that parse but would be dangerous: each is its own line naming the field, in plain
/// words, and neither `check-config` nor `run` accepts the file.
#[test]
fn check_config_refuses_dangerous_settings_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "0".repeat(64)).unwrap();
    std::fs::create_dir(dir.path().join("ds1")).unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "host_id = 1\ncluster_id = 1\nsecret_file = \"secret\"\nbind = \"127.0.0.1:7400\"\n\
         state_dir = \"s\"\nwatchdog = \"device:\"\n\
         isolation_addresses = [\"10.0.0.254\", \"gateway.example\"]\n\
         [driver]\nkind = \"process\"\n\
         [[datastores]]\nid = 1\npath = \"ds1\"\n[[datastores]]\nid = 2\npath = \"ds1\"\n\
         [[seed_hosts]]\nid = 1\naddress = \"127.0.0.1:7999\"\n\
         [[seed_hosts]]\nid = 2\naddress = \"127.0.0.2:7400\"\n\
         [[seed_hosts]]\nid = 2\naddress = \"127.0.0.3:7400\"\n\
         [timings]\nclaim_lease = 3\nnet_lease = 1000\n",
    )
    .unwrap();
    let config = dir.path().join("agent.toml");
    let out = with_config("check-config", &config);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "secret_file: all 32 bytes are zero",
        "watchdog: `device:`",
        "isolation_addresses[1]: `gateway.example` is not an IP address",
        "datastores[1].path:",
        "seed_hosts[0].address:",
        "seed_hosts[2].id: 2 is zero or a duplicate",
        "timings.claim_lease: 3 ms;",
        "timings.net_lease: 1000 ms;",
    ] {
        assert!(text.contains(field), "{field} not named in:\n{text}");
    }
    let prefix = format!("{}: ", config.display());
    for line in text.lines() {
        assert!(line.starts_with(&prefix), "not a problem line: {line}");
        // Plain words, not Rust's Debug form of an error or an option.
        for debug in ["Invalid {", "Unknown(", "Some(", "field:", "\\\""] {
            assert!(!line.contains(debug), "Debug text in: {line}");
        }
    }
    let out = with_config("run", &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timings.claim_lease"), "{err}");
}

#[test]
fn a_datastore_missing_at_start_is_a_degraded_start_not_a_refusal() {
    let mut d = Daemon::start(PROCESS, Some("/nonexistent/fdm-ds"), "");
    let s = d.status().expect("the agent runs and answers");
    assert_eq!(s["host"], 1);
    assert!(d.wait_log("not a mounted directory now"), "{}", d.log());
    assert!(d.still_running());
}

#[test]
fn libvirt_unavailable_is_logged_and_the_agent_keeps_heartbeating() {
    let mut d = Daemon::start(
        "[driver]\nkind = \"libvirt\"\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
        None,
        "",
    );
    assert!(d.status().is_some(), "the agent answers: {}", d.log());
    assert!(d.wait_log("hypervisor unavailable"), "{}", d.log());
    // Its datastore heartbeat goes on, so the cluster never takes this host for dead.
    let hb = d.dir.path().join("ds1/.fdm/hb/1.hb");
    let first = std::fs::read(&hb).expect("heartbeat written");
    std::thread::sleep(Duration::from_millis(1200));
    assert_ne!(
        std::fs::read(&hb).unwrap(),
        first,
        "heartbeat sector not advancing"
    );
    assert!(d.still_running());
}

#[test]
fn sighup_applies_timings_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let mut d = Daemon::start(PROCESS, None, "");
    assert!(d.status().is_some(), "{}", d.log());
    let path = d.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}[timings]\nheartbeat_interval = 400\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log("heartbeat_interval_ms=400"),
        "reload not applied:\n{}",
        d.log()
    );
    std::fs::write(&path, "host_id = ").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.wait_log("keeping the running one"), "{}", d.log());
    assert!(d.still_running());
    assert!(d.status().is_some());
    // SIGTERM: a clean stop.
    d.signal(libc::SIGTERM);
    let mut child = d.child.take().unwrap();
    let exit = wait_until(Duration::from_secs(5), || child.try_wait().unwrap())
        .expect("no exit after SIGTERM");
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn the_shipped_example_config_is_a_valid_agent_file() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/agent.toml.example"
    ))
    .expect("dist/agent.toml.example");
    // Every field it names exists (unknown fields are refused) and has the right type.
    let f: fdm_agent::runtime::config::AgentFile = toml::from_str(&text).expect("parses");
    assert_eq!(f.driver.kind, "libvirt");
    assert_eq!(f.datastores.len(), 2);
    // With its secret present it validates (datastore mounts absent here are only warnings).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "ab".repeat(32)).unwrap();
    let local = text.replace("/etc/fdm/secret", "secret");
    let cfg = fdm_agent::runtime::config::AgentConfig::parse(&local, dir.path())
        .expect("the example validates");
    assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
}

/// Rust `Debug` text of domain types, which must never reach an operator (issue 16); the
/// management plane's test with real agents greps `fdmctl`, `fdm-agent status` and the page.
const DEBUG_TEXT: [&str; 6] = [
    "HostId(",
    "VmId(",
    "DatastoreId(",
    "Some(",
    "Time(",
    "Epoch(",
];

/// The README's main job: a local cluster loses a host (and, in the second run, its master) and
/// every lost VM runs again exactly once, narrated in plain words.
#[test]
fn the_demo_fails_over_a_slave_and_a_master() {
    for args in [&["demo"][..], &["demo", "--kill-master"][..]] {
        let out = Command::new(EXE).args(args).output().expect("demo");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("dead verdict after"), "{text}");
        assert!(
            text.contains("every lost VM runs again, exactly once"),
            "{text}"
        );
        // The master's restart events, in the events' own words.
        assert!(text.contains("restarting vm-"), "{text}");
        for mark in DEBUG_TEXT {
            assert!(!text.contains(mark), "{args:?} prints {mark:?}:\n{text}");
        }
    }
}

#[test]
fn under_systemd_the_agent_says_ready_pings_the_watchdog_and_says_stopping() {
    // systemd's side of `Type=notify` and `WatchdogSec`: a datagram socket in NOTIFY_SOCKET and
    // the watchdog interval in WATCHDOG_USEC (here 400 ms: pings every 200 ms).
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let path = sock_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let usec = Path::new("400000");
    let mut d = Daemon::start_with_env(
        PROCESS,
        None,
        "",
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", usec)],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 256];
    let mut read_until = |seen: &mut Vec<String>, want: &dyn Fn(&[String]) -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < end && !want(seen) {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        want(seen)
    };
    let pings = |s: &[String]| s.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        read_until(&mut seen, &|s| s.iter().any(|m| m.contains("READY=1"))
            && pings(s) >= 3),
        "no READY=1 and watchdog pings: {seen:?}\n{}",
        d.log()
    );
    assert!(
        seen.iter().position(|m| m.contains("READY=1"))
            < seen.iter().position(|m| m.contains("WATCHDOG=1")),
        "ready before the first ping: {seen:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(
        read_until(&mut seen, &|s| s.iter().any(|m| m.contains("STOPPING=1"))),
        "no STOPPING=1 after SIGTERM: {seen:?}"
    );
    let mut child = d.child.take().expect("running");
    let exit = wait_until(Duration::from_secs(5), || child.try_wait().unwrap())
        .expect("no exit after SIGTERM");
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn the_shipped_systemd_units_verify() {
    // `systemd-analyze verify` checks every directive and that the programs exist: the units are
    // checked with /bin/true standing in for the binaries they install at /usr/bin.
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
    let mut units = Vec::new();
    for unit in ["fdm-agent.service", "fdm-shim.service"] {
        let text = std::fs::read_to_string(dist.join(unit)).expect("unit");
        for want in [
            "Type=notify",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "Documentation=",
        ] {
            assert!(text.contains(want), "{unit} lacks {want}");
        }
        let text = text
            .replace("/usr/bin/fdm-agent", "/bin/true")
            .replace("/usr/bin/fdm-shim", "/bin/true");
        let path = dir.path().join(unit);
        std::fs::write(&path, text).expect("write unit");
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// `fdm-agent ARGS` with its standard output a pipe whose reader is already gone, as under
/// `fdm-agent status | head -1` once `head` has its line: (exit status, standard error).
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(EXE)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("fdm-agent");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let d = Daemon::start(PROCESS, None, "");
    d.status().expect("the agent answers");
    let socket = d.dir.path().join("agent.sock");
    let socket = socket.to_str().unwrap();
    let config = d.dir.path().join("agent.toml");
    let config = config.to_str().unwrap();
    for args in [
        &["status", "--socket", socket][..],
        &["status", "--socket", socket, "--output", "json"],
        &["status", "--socket", socket, "--json"],
        &["check-config", "--config", config],
        &["--help"],
        &["status", "--help"],
    ] {
        let (status, err) = into_closed_pipe(args);
        assert!(status.success(), "fdm-agent {args:?}: {status}: {err}");
        assert!(err.is_empty(), "fdm-agent {args:?} wrote to stderr: {err}");
    }
    // As an operator types it: the first line, and no complaint.
    let out = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" status --socket \"$1\" | head -1",
        ])
        .args([EXE, socket])
        .output()
        .expect("bash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "agent on           host-1\n"
    );
}

#[test]
fn status_is_aligned_words_or_the_agents_json() {
    let d = Daemon::start(PROCESS, None, "");
    d.status().expect("the agent answers");
    let socket = d.dir.path().join("agent.sock");
    let run = |args: &[&str]| {
        let out = Command::new(EXE)
            .arg("status")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("fdm-agent status");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The only agent of its cluster becomes its master.
    assert!(
        wait_until(Duration::from_secs(15), || run(&[])
            .contains("role               master")
            .then_some(()))
        .is_some(),
        "{}",
        run(&[])
    );
    let text = run(&[]);
    assert!(text.starts_with("agent on           host-1\n"), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().eq([
            "HOST",
            "VERDICT",
            "NETWORK",
            "HB",
            "DATASTORE",
            "HB"
        ])),
        "{text}"
    );
    assert!(text.contains("TIME (UTC)"), "{text}");
    for raw in ["null", "Some(", "HostId(", "0.0000"] {
        assert!(!text.contains(raw), "{raw:?} in:\n{text}");
    }
    // `--output json` and the old `--json` print the agent's JSON, one line.
    for args in [&["--output", "json"][..], &["--json"]] {
        let json = run(args);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["host"], 1);
        let _: fdm_agent::runtime::status_view::AgentStatus =
            serde_json::from_value(v).expect("the status type reads it");
    }
    let out = Command::new(EXE)
        .args(["status", "--socket"])
        .arg(&socket)
        .args(["--output", "yaml"])
        .output()
        .expect("fdm-agent status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[possible values: text, json]"), "{err}");
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_accepted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    for (args, env) in [
        (&["--log-format", "xml", "run", "--config"][..], None),
        (&["run", "--log-format", "xml", "--config"], None),
        (&["run", "--config"], Some("xml")),
    ] {
        let mut cmd = Command::new(EXE);
        cmd.args(args).arg(&config);
        if let Some(v) = env {
            cmd.env("FDM_LOG_FORMAT", v);
        }
        let out = cmd.output().expect("fdm-agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'")
                && err.contains("[possible values: text, json]"),
            "{args:?}: {err}"
        );
    }
}

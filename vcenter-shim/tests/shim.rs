//! End-to-end tests: the real `fdm-shim` binary on a loopback port with a temporary database and
//! temporary datastores, driven over HTTP and through the real `fdmctl` binary. The property test of
//! every number a request carries drives the write path's own functions (request parsing, the
//! rules, `service::check_write`) without HTTP, to run thousands of cases in seconds; one smaller
//! run of it goes through the server.
// Tests wait for the server's background poller with real sleeps.
#![allow(clippy::disallowed_methods)]

use fdm_agent::core::Timings;
use fdm_agent::wait::wait_until;
use heartbeat_fs::fs::DatastoreDir;
use heartbeat_fs::records::{
    AdmissionPolicy, ClusterConfig, ClusterReport, IsolationResponse, LayoutError, ReportEvent,
    ReportedHost, ReportedVm,
};
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vcenter_shim::admission::AdmissionReport;
use vcenter_shim::client::{self, Client};
use vcenter_shim::error::{ErrorBody, ShimError};
use vcenter_shim::model::{
    DatastoreSpec, HaView, HostSpec, Inventory, MaintenanceAction, MountSpec, Stored, VmSpec,
    WriteAnswer,
};
use vcenter_shim::service::{AdmissionGate, ClusterState, WriteOutcome, check_write};
use vcenter_shim::store::StoredEvent;
use vcenter_shim::validate::{
    self, MAX_CONCURRENT_POWER_ONS, MAX_HOST_FAILURES_TOLERATED, MAX_MEMORY_MB, MAX_RETRIES,
    MAX_WAIT_MS,
};
use vcenter_shim::{admission, api};

const TOKEN: &str = "test-token-0123456789";

struct Server {
    child: Child,
    url: String,
    token_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start fdm-shim with datastore 2 reachable only through a `--datastore-root` override.
    fn start() -> Server {
        Self::start_keeping(1000)
    }

    /// The same, keeping only the newest `events` events.
    fn start_keeping(events: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        for ds in ["ds1", "ds2-real"] {
            std::fs::create_dir(dir.path().join(ds)).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_fdm-shim"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(dir.path().join("shim.db"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--datastore-root")
            .arg(format!("2={}", dir.path().join("ds2-real").display()))
            .args(["--poll-interval-ms", "100", "--retry-interval-ms", "200"])
            .args(["--io-timeout-ms", "3000", "--event-retention"])
            .arg(events.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("fdm-shim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            url,
            token_file,
            dir,
        }
    }

    fn ds1(&self) -> PathBuf {
        self.dir.path().join("ds1")
    }
    fn ds2(&self) -> PathBuf {
        self.dir.path().join("ds2-real")
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        let (code, r) = match resp {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let text = r.into_string().unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, body, Some(TOKEN))
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fdmctl"));
        cmd.args(args)
            .env("FDM_URL", &self.url)
            .env("FDM_TOKEN_FILE", &self.token_file);
        cmd
    }

    /// Run fdmctl against this server: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.ctl_command(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctl(args);
        assert!(ok, "fdmctl {args:?} failed: {err}\n{out}");
        out
    }

    /// Host `esx<id>` of 10 GHz / 64 GB.
    fn add_host(&self, id: &str) {
        self.ctl_ok(&[
            "host",
            "add",
            "--id",
            id,
            "--name",
            &format!("esx{id}"),
            "--address",
            &format!("10.0.0.{id}:7400"),
            "--cpu-mhz",
            "10000",
            "--memory-mb",
            "65536",
        ]);
    }

    /// Two hosts of 10 GHz / 64 GB; ds1 mounted by both at its real path; ds2 mounted at a path the
    /// shim does not see, reachable through the override.
    fn basic_inventory(&self) {
        for id in ["1", "2"] {
            self.add_host(id);
        }
        let ds1 = self.ds1().display().to_string();
        self.ctl_ok(&[
            "datastore",
            "add",
            "--id",
            "1",
            "--name",
            "ds1",
            "--mount",
            &format!("1={ds1}"),
            "--mount",
            &format!("2={ds1}"),
        ]);
        self.ctl_ok(&[
            "datastore",
            "add",
            "--id",
            "2",
            "--name",
            "ds2",
            "--mount",
            "2=/vmfs/volumes/ds2",
        ]);
    }
}

fn read_config(mount: &Path) -> Option<ClusterConfig> {
    DatastoreDir::open(mount).unwrap().read_config().unwrap()
}

fn field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("<none>")
}

#[test]
fn unauthorized_requests_are_refused() {
    let s = Server::start();
    for path in [
        "/v1/state",
        "/v1/hosts",
        "/v1/events",
        "/v1/config/ha",
        "/v1/admission",
    ] {
        assert_eq!(
            s.request("GET", path, None, None).0,
            401,
            "{path} without token"
        );
        assert_eq!(
            s.request("GET", path, None, Some("wrong-token-0123456")).0,
            401,
            "{path}"
        );
    }
    let body = json!({"id": 1, "name": "esx1", "address": "10.0.0.1:7400"});
    let (code, v) = s.request("POST", "/v1/hosts", Some(body), Some("nope"));
    assert_eq!(code, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    // Nothing was created by the refused write.
    assert_eq!(s.call("GET", "/v1/hosts", None), (200, json!([])));
    // The token in the query works too, for reads (the status page sends the header).
    assert_eq!(
        s.request("GET", &format!("/v1/state?token={TOKEN}"), None, None)
            .0,
        200
    );
    // The status page itself is public, its data is not.
    let (code, page) = s.request("GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap().contains("/v1/state"));
    // fdmctl without a token gets the 401 as an error.
    let out = s
        .ctl_command(&["status"])
        .env_remove("FDM_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn writes_are_validated_and_errors_name_the_field() {
    let s = Server::start();
    s.basic_inventory();
    let ds1 = s.ds1().display().to_string();
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/hosts",
            json!({"id": 1, "name": "again", "address": "10.0.0.9:1"}),
            409,
            "id",
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"id": 3, "name": "esx3", "address": "nowhere"}),
            400,
            "address",
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"id": 3, "name": "esx3", "address": "10.0.0.3:1", "colour": 1}),
            400,
            "colour",
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"id": 3, "address": "10.0.0.3:1"}),
            400,
            "name",
        ),
        (
            "POST",
            "/v1/datastores",
            json!({"id": 3, "name": "ds3", "mounts": [{"host": 9, "path": ds1}]}),
            400,
            "mounts[0].host",
        ),
        (
            "POST",
            "/v1/datastores",
            json!({"id": 3, "name": "ds3", "mounts": [{"host": 1, "path": "rel"}]}),
            400,
            "mounts[0].path",
        ),
        (
            "POST",
            "/v1/vms",
            json!({"id": 1, "name": "a", "home": 7}),
            400,
            "home",
        ),
        (
            "POST",
            "/v1/vms",
            json!({"id": 1, "name": "a", "home": 1, "priority": "Urgent"}),
            400,
            "priority",
        ),
        (
            "POST",
            "/v1/vms",
            json!({"id": 1, "name": "a", "home": 1, "depends_on": [42]}),
            400,
            "depends_on[0]",
        ),
        ("PUT", "/v1/vms/99", json!({"name": "x"}), 404, "id"),
        (
            "PUT",
            "/v1/config/ha",
            json!({"failover_hosts": [1, 5]}),
            400,
            "failover_hosts[1]",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"default_isolation_response": "Explode"}),
            400,
            "default_isolation_response",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"admission_mode": "maybe"}),
            400,
            "admission_mode",
        ),
        ("DELETE", "/v1/hosts/1", Value::Null, 409, "id"),
    ];
    for (method, path, body, status, want) in cases {
        let body = (!body.is_null()).then_some(body.clone());
        let (code, v) = s.call(method, path, body.clone());
        assert_eq!(code, status, "{method} {path} {body:?}: {v}");
        assert_eq!(field(&v), want, "{method} {path} {body:?}: {v}");
    }
    // A VM whose home datastore no host mounts.
    s.ctl_ok(&["datastore", "add", "--id", "3", "--name", "orphan"]);
    let (code, v) = s.call(
        "POST",
        "/v1/vms",
        Some(json!({"id": 1, "name": "a", "home": 3})),
    );
    assert_eq!((code, field(&v)), (400, "home"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mounted by no host")
    );

    // Duplicate VM id and a dependency cycle, through fdmctl.
    s.ctl_ok(&["vm", "add", "--id", "1", "--name", "db", "--home", "1"]);
    s.ctl_ok(&[
        "vm",
        "add",
        "--id",
        "2",
        "--name",
        "app",
        "--home",
        "1",
        "--depends-on",
        "1",
    ]);
    let (ok, _, err) = s.ctl(&["vm", "add", "--id", "2", "--name", "dup", "--home", "1"]);
    assert!(
        !ok && err.contains("409") && err.contains("field `id`"),
        "{err}"
    );
    let (ok, _, err) = s.ctl(&["vm", "set", "1", "--depends-on", "2"]);
    assert!(
        !ok && err.contains("field `depends_on`") && err.contains("cyclic"),
        "{err}"
    );
    // A word the API does not take is refused by fdmctl itself, naming the flag and the words.
    let (ok, _, err) = s.ctl(&["vm", "set", "1", "--restart-policy", "Sometimes"]);
    assert!(
        !ok && err.contains("'--restart-policy <RESTART_POLICY>'")
            && err.contains("[possible values: Always, HostFailureOnly, Never]"),
        "{err}"
    );
    // Removing a VM another depends on is refused; the dependent first works.
    let (ok, _, err) = s.ctl(&["vm", "rm", "1"]);
    assert!(!ok && err.contains("409"), "{err}");
    s.ctl_ok(&["vm", "rm", "2"]);
    s.ctl_ok(&["vm", "rm", "1"]);
    // No rejected write bumped the generation: 2 hosts + 3 datastores + 4 VM writes.
    let (_, st) = s.call("GET", "/v1/state", None);
    assert_eq!(st["config_generation"], 9, "{st}");
}

#[test]
fn config_reaches_every_datastore_and_pause_is_visible() {
    let s = Server::start();
    s.basic_inventory();
    let out = s.ctl_ok(&[
        "--output",
        "json",
        "vm",
        "add",
        "--id",
        "7",
        "--name",
        "web",
        "--home",
        "2",
        "--cpu-mhz",
        "500",
        "--memory-mb",
        "2048",
        "--priority",
        "High",
        "--definition",
        "<domain/>",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let generation = r["generation"].as_u64().unwrap();
    assert_eq!(generation, 5);
    assert!(
        r["datastores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["ok"] == true),
        "{r}"
    );
    for mount in [s.ds1(), s.ds2()] {
        let cfg = read_config(&mount).expect("config on datastore");
        assert_eq!(cfg.generation, generation);
        assert_eq!(cfg.cluster, ClusterId(1));
        assert_eq!(cfg.hosts.len(), 2);
        assert_eq!(cfg.hosts[1].capacity.memory_mb, 65_536);
        assert_eq!(cfg.datastores.len(), 2);
        assert_eq!(cfg.datastores[1].mounts[0].path, "/vmfs/volumes/ds2");
        let vm = cfg.vm(VmId(7)).expect("vm-7");
        assert_eq!(vm.reservation.memory_mb, 2048);
        assert_eq!(vm.definition, "<domain/>");
        assert_eq!(format!("{:?}", vm.ha.priority), "High");
        assert!(vm.protected);
        assert!(!cfg.ha.paused);
    }

    // Pause: reaches the datastores and fdmctl status.
    s.ctl_ok(&["ha", "pause"]);
    for mount in [s.ds1(), s.ds2()] {
        let cfg = read_config(&mount).unwrap();
        assert!(cfg.ha.paused);
        assert_eq!(cfg.generation, generation + 1);
    }
    let status = s.ctl_ok(&["status"]);
    assert!(status.contains("HA PAUSED"), "{status}");
    assert!(
        status.contains("esx1") && status.contains("vm-7"),
        "{status}"
    );
    s.ctl_ok(&["ha", "resume"]);
    assert!(!read_config(&s.ds1()).unwrap().ha.paused);
    assert!(!s.ctl_ok(&["status"]).contains("HA PAUSED"));

    // config set: a JSON value and a string value.
    s.ctl_ok(&["config", "set", "isolation_addresses", r#"["10.0.0.254"]"#]);
    s.ctl_ok(&["config", "set", "default_isolation_response", "Shutdown"]);
    let cfg = read_config(&s.ds2()).unwrap();
    assert_eq!(cfg.ha.isolation_addresses, vec!["10.0.0.254".to_string()]);
    // The VM never chose its own isolation response, so it follows the cluster default.
    assert_eq!(
        format!("{:?}", cfg.vm(VmId(7)).unwrap().ha.isolation_response),
        "Shutdown"
    );

    // A datastore the shim cannot reach yet: reported in the answer, written once it appears.
    // Mounted by host 2, which mounts every datastore: on host 1 alone it would make a crossed
    // layout (host 1 with ds-4 but not ds-2, host 2 the other way round), which is refused.
    let late = s.dir.path().join("late");
    let (code, v) = s.call(
        "POST",
        "/v1/datastores",
        Some(json!({"id": 4, "name": "late", "mounts": [{"host": 2, "path": late.display().to_string()}]})),
    );
    assert_eq!(code, 201, "{v}");
    let gen_late = v["generation"].as_u64().unwrap();
    let failed: Vec<&Value> = v["datastores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["datastore"], 4);
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("ds-4"))
    );
    std::fs::create_dir(&late).unwrap();
    let cfg = wait_until(Duration::from_secs(10), || {
        DatastoreDir::open(&late).ok()?.read_config().ok()?
    })
    .expect("timed out waiting for background retry");
    assert_eq!(cfg.generation, gen_late);
}

fn event(seq: u64, kind: &str) -> ReportEvent {
    ReportEvent {
        seq,
        unix_ms: 1_700_000_000_000 + seq,
        name: format!("{kind}-event"),
        kind: kind.into(),
        host: Some(HostId(2)),
        vm: Some(VmId(7)),
        datastore: None,
        verdict: None,
        reason: None,
        message: format!("event number {seq}"),
    }
}

fn report(sequence: u64, events: Vec<ReportEvent>) -> ClusterReport {
    ClusterReport {
        cluster: ClusterId(1),
        master: HostId(1),
        master_incarnation: 77,
        epoch: Epoch(3),
        sequence,
        unix_ms: 1_700_000_000_000 + sequence * 1000,
        config_generation: 4,
        ha_paused: false,
        hosts: vec![
            ReportedHost {
                host: HostId(1),
                verdict: "alive".into(),
                network_age_ms: Some(10),
            },
            ReportedHost {
                host: HostId(2),
                verdict: "dead".into(),
                network_age_ms: None,
            },
        ],
        vms: vec![ReportedVm {
            vm: VmId(7),
            host: Some(HostId(1)),
            state: Some("running".into()),
            restart: "idle".into(),
        }],
        events,
    }
}

#[test]
fn events_are_stored_once_and_served_in_order() {
    let s = Server::start();
    s.basic_inventory();
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    let dir = DatastoreDir::open(s.ds1()).unwrap();
    dir.write_report(&report(
        1,
        vec![event(1, "role"), event(2, "verdict"), event(3, "restart")],
    ))
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let (_, v) = s.call("GET", "/v1/events", None);
        (v.as_array()?.len() == 3).then_some(())
    })
    .expect("timed out waiting for first events");
    // The next report repeats 2 and 3 and adds 4 and 5; the same report also lands on ds2.
    let second = report(
        2,
        vec![
            event(2, "verdict"),
            event(3, "restart"),
            event(4, "restart"),
            event(5, "isolation"),
        ],
    );
    dir.write_report(&second).unwrap();
    DatastoreDir::open(s.ds2())
        .unwrap()
        .write_report(&second)
        .unwrap();
    let evs = wait_until(Duration::from_secs(10), || {
        let (_, v) = s.call("GET", "/v1/events", None);
        let a = v.as_array()?.clone();
        (a.len() >= 5).then_some(a)
    })
    .expect("timed out waiting for second events");
    // Give the poller a few more rounds to (wrongly) duplicate anything.
    std::thread::sleep(Duration::from_millis(400));
    let (_, all) = s.call("GET", "/v1/events", None);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all, &evs[..5]);
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(all[4]["kind"], "isolation");
    assert_eq!(all[4]["master_incarnation"], 77);
    // Paging by shim id.
    let (_, page) = s.call("GET", &format!("/v1/events?since={}", ids[2]), None);
    let page: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, vec![4, 5]);
    let (code, v) = s.call("GET", "/v1/events?since=abc", None);
    assert_eq!((code, field(&v)), (400, "since"));

    // The newest report is the state; fdmctl shows it.
    let (_, st) = s.call("GET", "/v1/state", None);
    assert_eq!(st["report"]["sequence"], 2, "{st}");
    assert_eq!(st["report"]["master"], 1);
    assert_eq!(st["hosts"][1]["verdict"], "dead");
    assert_eq!(st["hosts"][0]["is_master"], true);
    assert_eq!(st["vms"][0]["state"], "running");
    let status = s.ctl_ok(&["status"]);
    assert!(status.contains("master host-1"), "{status}");
    assert!(
        status.contains("dead") && status.contains("running"),
        "{status}"
    );
    let text = s.ctl_ok(&["events", "--since", &ids[3].to_string()]);
    assert!(
        text.contains("event number 5") && !text.contains("event number 4"),
        "{text}"
    );

    // An older report written later does not replace the state.
    dir.write_report(&report(1, vec![])).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (_, st) = s.call("GET", "/v1/state", None);
    assert_eq!(st["report"]["sequence"], 2);
}

/// `fdmctl ARGS` against `s` with its standard output a pipe whose reader is already gone, as under
/// `fdmctl events | head -1` once `head` has its line: (exit status, standard error).
fn ctl_into_closed_pipe(s: &Server, args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = s
        .ctl_command(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `events --follow` too must notice at its first line, not run on.
    let status = wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten())
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("fdmctl {args:?} still runs with its output closed")
        });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn fdmctl_into_a_closed_pipe_ends_quietly() {
    let s = Server::start();
    s.basic_inventory();
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    DatastoreDir::open(s.ds1())
        .unwrap()
        .write_report(&report(1, vec![event(1, "role"), event(2, "verdict")]))
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        let (_, v) = s.call("GET", "/v1/events", None);
        (v.as_array()?.len() == 2).then_some(())
    })
    .expect("timed out waiting for the events");
    for args in [
        &["events"][..],
        &["events", "--follow"],
        &["--output", "json", "events"],
        &["status"],
        &["status", "--output", "json"],
        &["vm", "list"],
        &["vm", "show", "7"],
        &["host", "list"],
        &["datastore", "list"],
        &["config", "show"],
        &["admission"],
        &["ha", "resume"],
        &["--help"],
        &["vm", "add", "--help"],
    ] {
        let (status, err) = ctl_into_closed_pipe(&s, args);
        assert!(status.success(), "fdmctl {args:?}: {status}: {err}");
        assert!(err.is_empty(), "fdmctl {args:?} wrote to stderr: {err}");
    }
    // As an operator types it: the first line, and no complaint.
    let out = Command::new("bash")
        .args(["-c", "set -o pipefail; \"$0\" events | head -1"])
        .arg(env!("CARGO_BIN_EXE_fdmctl"))
        .env("FDM_URL", &s.url)
        .env("FDM_TOKEN_FILE", &s.token_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{err}");
    let first = String::from_utf8_lossy(&out.stdout);
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.contains("event number 1"), "{first}");
    // A failure is still one: an error on stderr and status 1, also with stdout closed.
    let (status, err) = ctl_into_closed_pipe(&s, &["vm", "show", "99"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: ") && err.contains("404"), "{err}");
}

/// `fdmctl status` gives ages in words and the report's wall-clock time.
#[test]
fn status_ages_are_in_words() {
    let s = Server::start();
    s.basic_inventory();
    DatastoreDir::open(s.ds1())
        .unwrap()
        .write_report(&report(1, vec![]))
        .unwrap();
    let status = wait_until(Duration::from_secs(10), || {
        let status = s.ctl_ok(&["status"]);
        status.contains("report seq 1").then_some(status)
    })
    .expect("the report reaches fdmctl status");
    // The report's time is the master's clock: 1_700_000_001_000 ms.
    assert!(
        status.contains("report seq 1 from ds-1 written 2023-11-14T22:13:21Z, read "),
        "{status}"
    );
    assert!(!status.contains(" ms ago"), "{status}");
    let rows: Vec<Vec<&str>> = status
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let header = rows
        .iter()
        .position(|r| r.first() == Some(&"HOST"))
        .expect("a host table");
    assert_eq!(
        rows[header],
        [
            "HOST",
            "NAME",
            "VERDICT",
            "NETWORK",
            "HB",
            "MAINTENANCE",
            "MASTER"
        ],
        "{status}"
    );
    // host-1's last network heartbeat was 10 ms old; host-2 has none.
    assert_eq!(
        rows[header + 1],
        ["host-1", "esx1", "alive", "0.0", "s", "no", "*"],
        "{status}"
    );
    assert_eq!(
        rows[header + 2],
        ["host-2", "esx2", "dead", "-", "no"],
        "{status}"
    );
}

/// Issue 16's bug through the server and `fdmctl events --follow`: each report carries more
/// events than retention keeps, so retention deletes events the next report still carries; they
/// must not come back (with new ids) for the API's pages or the follower.
#[test]
fn events_followed_across_retention_passes_are_never_seen_twice() {
    let s = Server::start_keeping(3);
    s.basic_inventory();
    let dir = DatastoreDir::open(s.ds1()).unwrap();
    let mut follower = Follower::start(&s);
    let mut seen: Vec<(i64, u64)> = Vec::new();
    for last in 1..=10u64 {
        let events = (last.saturating_sub(7).max(1)..=last)
            .map(|seq| event(seq, "restart"))
            .collect();
        dir.write_report(&report(last, events)).unwrap();
        let since = seen.last().map_or(0, |(id, _)| *id);
        let page = wait_until(Duration::from_secs(10), || {
            let (_, v) = s.call("GET", &format!("/v1/events?since={since}"), None);
            let page: Vec<(i64, u64)> = v
                .as_array()?
                .iter()
                .map(|e| Some((e["id"].as_i64()?, e["seq"].as_u64()?)))
                .collect::<Option<_>>()?;
            page.iter().any(|(_, seq)| *seq == last).then_some(page)
        })
        .unwrap_or_else(|| panic!("event {last} not stored"));
        seen.extend(page);
        follower.wait_for_line(&format!("event number {last}"));
        // Several polls read the same report (and prune) before the next one is written.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, left) = s.call("GET", "/v1/events", None);
    assert_eq!(
        left.as_array().unwrap().len(),
        3,
        "retention keeps 3: {left}"
    );
    // Every event once, in order, with ids that count them.
    assert_eq!(
        seen,
        (1..=10).map(|n| (n as i64, n)).collect::<Vec<_>>(),
        "an event was served twice or out of order"
    );
    // The follower polls once a second: give it two more rounds to (wrongly) print history again.
    follower.drain(Duration::from_millis(2500));
    let (_, later) = s.call("GET", "/v1/events?since=10", None);
    assert_eq!(later, json!([]), "history stored again");
    for n in 1..=10 {
        let lines = follower
            .seen
            .iter()
            .filter(|l| {
                l.contains(&format!("event number {n}"))
                    && !l.contains(&format!("event number {n}0"))
            })
            .count();
        assert_eq!(
            lines, 1,
            "event {n} printed {lines} times: {:?}",
            follower.seen
        );
    }
}

/// A running `fdmctl events --follow`, killed when the test ends, also when it fails.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(s: &Server) -> Follower {
        let mut child = s
            .ctl_command(&["events", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // A thread, so that waiting for a line can time out instead of blocking the test forever.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for_line(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.seen.iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!(
                    "no line with {text:?} ({e:?}); printed so far: {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Follower {
    /// Whatever else it prints within `time`.
    fn drain(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_follow_prints_new_events_as_they_arrive() {
    let s = Server::start();
    s.basic_inventory();
    let dir = DatastoreDir::open(s.ds1()).unwrap();
    dir.write_report(&report(1, vec![event(1, "role")]))
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        let (_, v) = s.call("GET", "/v1/events", None);
        (v.as_array()?.len() == 1).then_some(())
    })
    .expect("timed out waiting for first event");
    let mut follower = Follower::start(&s);
    follower.wait_for_line("event number 1");

    // The next report repeats event 1 and adds event 2, which the running follower must print.
    dir.write_report(&report(2, vec![event(1, "role"), event(2, "restart")]))
        .unwrap();
    follower.wait_for_line("event number 2");
    let line = follower.seen.last().unwrap();
    assert!(
        line.contains("host-1") && line.contains("restart"),
        "{line}"
    );
    let ones = follower
        .seen
        .iter()
        .filter(|l| l.contains("event number 1"))
        .count();
    assert_eq!(ones, 1, "{:?}", follower.seen);
}

#[test]
fn lists_are_tables_in_text_mode_and_json_on_request() {
    let s = Server::start();
    s.basic_inventory();
    s.ctl_ok(&["vm", "add", "--id", "6", "--name", "db", "--home", "1"]);
    let vm7 = json!({"id": 7, "name": "web", "home": 2, "depends_on": [6],
        "definition": "<domain>\n</domain>"});
    assert_eq!(s.call("POST", "/v1/vms", Some(vm7)).0, 201);
    let rows = |args: &[&str]| -> Vec<Vec<String>> {
        s.ctl_ok(args)
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let hosts = rows(&["host", "list"]);
    assert_eq!(hosts[0][0], "HOST", "{hosts:?}");
    assert_eq!(
        hosts[1],
        ["host-1", "esx1", "10.0.0.1:7400", "10000", "65536", "no"],
        "{hosts:?}"
    );
    let datastores = rows(&["datastore", "list"]);
    assert_eq!(
        datastores[2],
        ["ds-2", "ds2", "host-2:/vmfs/volumes/ds2"],
        "{datastores:?}"
    );
    let vms = rows(&["vm", "list"]);
    assert_eq!(vms.len(), 3, "{vms:?}");
    assert_eq!(vms[2][..3], ["vm-7", "web", "ds-2"], "{vms:?}");
    assert!(vms[2].contains(&"vm-6".to_string()), "{vms:?}");
    let show = s.ctl_ok(&["vm", "show", "7"]);
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().eq(["depends_on", "vm-6"])),
        "{show}"
    );
    assert!(
        show.contains("definition:\n  <domain>\n  </domain>"),
        "{show}"
    );

    // JSON output is unchanged: the API's objects as they are.
    let json: Value =
        serde_json::from_str(&s.ctl_ok(&["--output", "json", "host", "list"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["name"], "esx2");
    let json: Value =
        serde_json::from_str(&s.ctl_ok(&["--output", "json", "vm", "show", "7"])).unwrap();
    assert_eq!(json["depends_on"], json!([6]));
}

/// `v`, an answer of the server, read into `T` the way fdmctl reads it (`client::parse_answer`) and
/// written back: the same JSON, so that `T` has every field of the answer under the same name.
fn typed<T: Serialize + DeserializeOwned>(v: &Value, what: &str) -> T {
    let t: T = client::parse_answer(&v.to_string(), what).unwrap_or_else(|e| panic!("{e:#}\n{v}"));
    assert_eq!(serde_json::to_value(&t).unwrap(), *v, "{what} written back");
    t
}

/// What fdmctl prints for people has no Rust debug text and no JSON in it.
fn assert_plain_words(args: &[&str], text: &str) {
    for mark in ["Some(", "None", "Id(", "{", "}", "\""] {
        assert!(
            !text.contains(mark),
            "fdmctl {args:?} prints {mark:?}:\n{text}"
        );
    }
}

#[test]
fn every_answer_fdmctl_reads_is_the_type_the_server_builds_it_from() {
    let s = Server::start();
    let c = Client::new(&s.url, Some(TOKEN.into()));
    let ds1 = s.ds1().display().to_string();

    // Requests built from the model's types, through the client fdmctl is built on; each answer
    // carries the object as stored.
    for id in 1..=2 {
        let host = esx(id);
        let answer = c.add_host(&host).unwrap();
        assert_eq!(answer.stored, Stored::Host(host));
        assert_eq!(answer.outcome.generation, u64::from(id));
    }
    let mount = |host, path: &str| MountSpec {
        host: HostId(host),
        path: path.into(),
    };
    for datastore in [
        DatastoreSpec {
            id: DatastoreId(1),
            name: "ds1".into(),
            mounts: vec![mount(1, &ds1), mount(2, &ds1)],
        },
        DatastoreSpec {
            id: DatastoreId(2),
            name: "ds2".into(),
            mounts: vec![mount(2, "/vmfs/volumes/ds2")],
        },
    ] {
        let answer = c.add_datastore(&datastore).unwrap();
        assert_eq!(answer.stored, Stored::Datastore(datastore));
    }
    let db: VmSpec = api::from_value(json!({"id": 6, "name": "db", "home": 1})).unwrap();
    assert_eq!(c.add_vm(&db).unwrap().stored, Stored::Vm(db.clone()));
    let mut web = db.clone();
    web.id = VmId(7);
    web.name = "web".into();
    web.home = DatastoreId(2);
    web.depends_on = vec![VmId(6)];
    web.isolation_response = Some(IsolationResponse::Shutdown);
    web.definition = "<domain>\n</domain>".into();
    c.add_vm(&web).unwrap();
    web.cpu_mhz = 500;
    let answer = c.update_vm(VmId(7), &json!({"cpu_mhz": 500})).unwrap();
    assert_eq!(answer.stored, Stored::Vm(web.clone()));
    let Stored::Host(h) = c
        .maintenance(HostId(2), MaintenanceAction::Enter)
        .unwrap()
        .stored
    else {
        panic!("maintenance answers with the host");
    };
    assert!(h.maintenance);
    c.maintenance(HostId(2), MaintenanceAction::Exit).unwrap();
    let Stored::Ha(view) = c
        .update_ha(&json!({"admission": {"HostFailuresTolerated": 1}}))
        .unwrap()
        .stored
    else {
        panic!("an HA write answers with the HA settings");
    };
    assert_eq!(view.ha.admission, AdmissionPolicy::HostFailuresTolerated(1));
    // A report, so that the state has a master and there are events.
    DatastoreDir::open(s.ds1())
        .unwrap()
        .write_report(&report(1, vec![event(1, "role"), event(2, "restart")]))
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        (c.events_since(0).ok()?.len() == 2).then_some(())
    })
    .expect("timed out waiting for the report's events");

    // Every read fdmctl makes: the raw answer is its type written, and the client reads the same.
    let (_, raw) = s.call("GET", "/v1/state", None);
    let state: ClusterState = typed(&raw, "the cluster state");
    assert_eq!(state.report.as_ref().map(|r| r.master), Some(HostId(1)));
    let mut from_client = c.state().unwrap();
    // The answer's time and the ages in it are what change between two reads.
    from_client.unix_ms = state.unix_ms;
    if let (Some(a), Some(b)) = (from_client.report.as_mut(), state.report.as_ref()) {
        a.age_ms = b.age_ms;
    }
    for (a, b) in from_client.hosts.iter_mut().zip(&state.hosts) {
        a.datastore_heartbeats.clone_from(&b.datastore_heartbeats);
    }
    for (a, b) in from_client.datastores.iter_mut().zip(&state.datastores) {
        a.claim.clone_from(&b.claim);
    }
    assert_eq!(serde_json::to_value(&from_client).unwrap(), raw);
    let (_, raw) = s.call("GET", "/v1/events?since=0", None);
    let events: Vec<StoredEvent> = typed(&raw, "a list of events");
    assert_eq!(c.events_since(0).unwrap(), events);
    assert_eq!(c.events_since(events[0].id).unwrap(), events[1..]);
    let (_, raw) = s.call("GET", "/v1/admission", None);
    let verdict: AdmissionReport = typed(&raw, "the admission verdict");
    assert_eq!(c.admission().unwrap(), verdict);
    let (_, raw) = s.call("GET", "/v1/config/ha", None);
    let ha: HaView = typed(&raw, "the HA settings");
    assert_eq!(c.ha().unwrap(), ha);
    assert_eq!(ha, view);
    let (_, raw) = s.call("GET", "/v1/hosts", None);
    let hosts: Vec<HostSpec> = typed(&raw, "a list of hosts");
    assert_eq!(c.hosts().unwrap(), hosts);
    let (_, raw) = s.call("GET", "/v1/datastores", None);
    let datastores: Vec<DatastoreSpec> = typed(&raw, "a list of datastores");
    assert_eq!(c.datastores().unwrap(), datastores);
    let (_, raw) = s.call("GET", "/v1/vms", None);
    let vms: Vec<VmSpec> = typed(&raw, "a list of VMs");
    assert_eq!(c.vms().unwrap(), vms);
    assert_eq!(vms, [db, web.clone()]);
    let (_, raw) = s.call("GET", "/v1/vms/7", None);
    assert_eq!(typed::<VmSpec>(&raw, "a VM"), web);
    assert_eq!(c.vm(VmId(7)).unwrap(), web);

    // Every write answer, raw: an object's write has it beside the outcome, a removal does not.
    let host3 = json!({"id": 3, "name": "esx3", "address": "10.0.0.3:7400"});
    let writes = [
        ("POST", "/v1/hosts", Some(host3), 201, "host"),
        ("PUT", "/v1/vms/7", Some(json!({"cpu_mhz": 600})), 200, "vm"),
        (
            "PUT",
            "/v1/datastores/2",
            Some(json!({"name": "ds-two"})),
            200,
            "datastore",
        ),
        (
            "POST",
            "/v1/hosts/3/maintenance",
            Some(json!({"action": "enter"})),
            200,
            "host",
        ),
        (
            "PUT",
            "/v1/config/ha",
            Some(json!({"failback": true})),
            200,
            "ha",
        ),
    ];
    for (method, path, body, status, key) in writes {
        let (code, raw) = s.call(method, path, body);
        assert_eq!(code, status, "{method} {path}: {raw}");
        let answer: WriteAnswer = typed(&raw, "a write answer");
        assert_eq!(
            serde_json::to_value(&answer.stored).unwrap().get(key),
            raw.get(key),
            "{method} {path}"
        );
    }
    let (code, raw) = s.call("DELETE", "/v1/hosts/3", None);
    assert_eq!(code, 200, "{raw}");
    let removed: WriteOutcome = typed(&raw, "a removal's answer");
    let removed_from_client = c.remove_vm(VmId(7)).unwrap();
    assert_eq!(removed_from_client.generation, removed.generation + 1);

    // Every kind of error answer, and fdmctl's message for it.
    let too_big = json!({"id": 8, "name": "big", "home": 1, "cpu_mhz": 20_000});
    let refusals = [
        (
            "POST",
            "/v1/hosts",
            Some(json!({"id": 1})),
            400,
            "invalid",
            Some("name"),
        ),
        ("GET", "/v1/vms/99", None, 404, "not_found", Some("id")),
        (
            "DELETE",
            "/v1/datastores/1",
            None,
            409,
            "conflict",
            Some("id"),
        ),
        (
            "POST",
            "/v1/vms",
            Some(too_big.clone()),
            409,
            "admission",
            Some("reservation"),
        ),
    ];
    for (method, path, body, status, code_word, field) in refusals {
        let (code, raw) = s.call(method, path, body);
        assert_eq!(code, status, "{method} {path}: {raw}");
        let e: ErrorBody = typed(&raw, "an error answer");
        assert_eq!(
            (e.error.code.as_str(), e.error.field.as_deref()),
            (code_word, field),
            "{raw}"
        );
        assert_eq!(e.admission.is_some(), code_word == "admission", "{raw}");
    }
    let too_big: VmSpec = api::from_value(too_big).unwrap();
    let e = c.add_vm(&too_big).unwrap_err().to_string();
    assert!(
        e.starts_with("HTTP 409 (admission): field `reservation`: "),
        "{e}"
    );
    let (code, raw) = s.request("GET", "/v1/state", None, None);
    assert_eq!(code, 401);
    let e: ErrorBody = typed(&raw, "the token check's answer");
    assert_eq!(
        (e.error.code.as_str(), e.error.field),
        ("unauthorized", None)
    );
    let e = Client::new(&s.url, None).hosts().unwrap_err().to_string();
    assert_eq!(e, "HTTP 401 (unauthorized): missing or wrong bearer token");

    // What fdmctl prints for people from these answers is words, not debug text or JSON.
    s.ctl_ok(&[
        "vm",
        "add",
        "--id",
        "9",
        "--name",
        "app",
        "--home",
        "2",
        "--isolation-response",
        "LeaveRunning",
        "--depends-on",
        "6",
        "--anti-affinity-group",
        "front",
        "--definition",
        "<domain/>",
    ]);
    for args in [
        &["status"][..],
        &["events"],
        &["admission"],
        &["host", "list"],
        &["datastore", "list"],
        &["vm", "list"],
        &["vm", "show", "9"],
        &["config", "show"],
        &["vm", "set", "9", "--priority", "High"],
        &["host", "maintenance", "enter", "2"],
        &[
            "config",
            "set",
            "admission",
            r#"{"PercentReserved":{"cpu":10,"memory":20}}"#,
        ],
    ] {
        assert_plain_words(args, &s.ctl_ok(args));
    }
    let admission = s.ctl_ok(&["admission"]);
    assert!(
        admission.contains("policy: PercentReserved: 10% of CPU and 20% of memory"),
        "{admission}"
    );
    let settings = s.ctl_ok(&["config", "show"]);
    assert!(
        settings.lines().any(|l| l.split_whitespace().eq([
            "admission",
            "PercentReserved:",
            "10%",
            "of",
            "CPU",
            "and",
            "20%",
            "of",
            "memory"
        ])),
        "{settings}"
    );
    let status = s.ctl_ok(&["status"]);
    assert!(
        status.contains("master host-1 (incarnation 77, epoch 3), report seq 1 from ds-1"),
        "{status}"
    );
}

#[test]
fn admission_control_verdicts() {
    let s = Server::start();
    s.basic_inventory();
    s.add_host("3");
    s.ctl_ok(&[
        "config",
        "set",
        "admission",
        r#"{"HostFailuresTolerated":1}"#,
    ]);
    for id in ["1", "2"] {
        s.ctl_ok(&[
            "vm",
            "add",
            "--id",
            id,
            "--name",
            &format!("vm{id}"),
            "--home",
            "1",
            "--cpu-mhz",
            "8000",
            "--memory-mb",
            "4096",
        ]);
    }
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["cpu_mhz"]["capacity"], 30_000);
    assert_eq!(a["cpu_mhz"]["available"], 20_000);
    assert_eq!(a["cpu_mhz"]["demand"], 16_000);

    // A third 8 GHz VM needs 24 GHz of the 20 GHz left after one failure: refused.
    let body = json!({"id": 3, "name": "vm3", "home": 1, "cpu_mhz": 8000, "memory_mb": 4096});
    let (code, v) = s.call("POST", "/v1/vms", Some(body.clone()));
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("admission")),
        "{v}"
    );
    assert_eq!(field(&v), "reservation");
    assert_eq!(v["admission"]["cpu_mhz"]["demand"], 24_000);
    // ... but an unprotected one is fine, and protecting it later is refused.
    let mut unprotected = body.clone();
    unprotected["protected"] = json!(false);
    assert_eq!(s.call("POST", "/v1/vms", Some(unprotected)).0, 201);
    let (ok, _, err) = s.ctl(&["vm", "set", "3", "--protected", "true"]);
    assert!(!ok && err.contains("admission"), "{err}");
    let out = s.ctl_ok(&["admission"]);
    assert!(out.contains("OK"), "{out}");

    // Percentage policy: 10% reserved leaves 27 GHz, enough for 24 GHz.
    s.ctl_ok(&[
        "config",
        "set",
        "admission",
        r#"{"PercentReserved":{"cpu":10,"memory":10}}"#,
    ]);
    s.ctl_ok(&["vm", "set", "3", "--protected", "true"]);
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["cpu_mhz"]["available"], 27_000);

    // Maintenance takes a host's capacity away: accepted with a warning, verdict turns false.
    let out = s.ctl_ok(&["host", "maintenance", "enter", "3"]);
    assert!(out.contains("warning: admission control"), "{out}");
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["hosts_considered"], 2);
    assert!(s.ctl_ok(&["admission"]).contains("VIOLATED"));
    s.ctl_ok(&["host", "maintenance", "exit", "3"]);

    // Warn mode: a write that breaks it is accepted with a warning.
    s.ctl_ok(&["config", "set", "admission_mode", "warn"]);
    let out = s.ctl_ok(&[
        "vm",
        "add",
        "--id",
        "4",
        "--name",
        "vm4",
        "--home",
        "1",
        "--cpu-mhz",
        "8000",
    ]);
    assert!(out.contains("warning: admission control"), "{out}");
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], false);
    assert_eq!(a["cpu_mhz"]["demand"], 32_000);

    // Dedicated failover host 3: the VMs must fit on hosts 1 and 2 (20 GHz) - they do not.
    s.ctl_ok(&["config", "set", "admission_mode", "refuse"]);
    s.ctl_ok(&["vm", "rm", "4"]);
    s.call(
        "PUT",
        "/v1/config/ha",
        Some(json!({"failover_hosts": [3], "admission": "DedicatedFailoverHosts"})),
    );
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["cpu_mhz"]["reserved_for_failover"], 10_000);
    s.ctl_ok(&["vm", "rm", "3"]);
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], true, "{a}");
    // The settings reached the datastores.
    let cfg = read_config(&s.ds1()).unwrap();
    assert_eq!(cfg.ha.failover_hosts, vec![HostId(3)]);
    assert_eq!(format!("{:?}", cfg.ha.admission), "DedicatedFailoverHosts");
}

#[test]
fn timings_are_checked_with_the_agents_rules() {
    let s = Server::start();
    s.basic_inventory();
    let (_, before) = s.call("GET", "/v1/state", None);
    // Far beyond anything an agent accepts (it would refuse it; the shim refuses it first).
    let (code, v) = s.call(
        "PUT",
        "/v1/config/ha",
        Some(json!({"timings_ms": {"ds_lease": 9_223_372_036_854_775_807_u64}})),
    );
    assert_eq!((code, field(&v)), (400, "timings_ms.ds_lease"), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("a day"), "{message}");
    // Nothing was stored or published.
    let (_, after) = s.call("GET", "/v1/state", None);
    assert_eq!(after["config_generation"], before["config_generation"]);
    assert!(read_config(&s.ds1()).unwrap().ha.timings_ms.is_empty());

    // The timing the shim's old list lacked is accepted and reaches the datastores.
    let (code, v) = s.call(
        "PUT",
        "/v1/config/ha",
        Some(json!({"timings_ms": {"better_master_handover": 8000}})),
    );
    assert_eq!(code, 200, "{v}");
    wait_until(Duration::from_secs(10), || {
        let cfg = read_config(&s.ds1())?;
        (cfg.ha.timings_ms.get("better_master_handover") == Some(&8000)).then_some(())
    })
    .expect("timed out waiting for better_master_handover on ds1");

    // An unknown name is refused, naming the known ones.
    let (code, v) = s.call(
        "PUT",
        "/v1/config/ha",
        Some(json!({"timings_ms": {"heartbeat_intervl": 100}})),
    );
    assert_eq!(
        (code, field(&v)),
        (400, "timings_ms.heartbeat_intervl"),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown timing") && message.contains("better_master_handover"),
        "{message}"
    );

    // A relation between timings (the watchdog must reset a hung agent before its leases expire),
    // through fdmctl.
    let (ok, _, err) = s.ctl(&[
        "config",
        "set",
        "timings_ms",
        r#"{"watchdog_timeout": 5000}"#,
    ]);
    assert!(
        !ok && err.contains("400") && err.contains("field `timings_ms.watchdog_timeout`"),
        "{err}"
    );
    assert!(err.contains("fence_margin"), "{err}");
    let cfg = read_config(&s.ds1()).unwrap();
    assert_eq!(cfg.ha.timings_ms.len(), 1, "{:?}", cfg.ha.timings_ms);
}

#[test]
fn out_of_range_numbers_are_refused_and_never_crash_the_shim() {
    let s = Server::start();
    s.basic_inventory();
    let host = |extra: Value| {
        let mut body = json!({"id": 3, "name": "esx3", "address": "10.0.0.3:7400"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let vm = |extra: Value| {
        let mut body = json!({"id": 1, "name": "vm1", "home": 1});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        // The request that used to panic the handler in admission control.
        (
            "POST",
            "/v1/hosts",
            host(
                json!({"cpu_mhz": 4_294_967_295_u32, "memory_mb": 18_446_744_073_709_551_615_u64}),
            ),
            "memory_mb",
        ),
        (
            "POST",
            "/v1/hosts",
            host(json!({"memory_mb": 1_073_741_825})),
            "memory_mb",
        ),
        (
            "POST",
            "/v1/hosts",
            host(json!({"cpu_mhz": 4_294_967_296_u64})),
            "cpu_mhz",
        ),
        ("POST", "/v1/hosts", host(json!({"cpu_mhz": -1})), "cpu_mhz"),
        (
            "POST",
            "/v1/hosts",
            host(json!({"id": 4_294_967_296_u64})),
            "id",
        ),
        (
            "PUT",
            "/v1/hosts/1",
            json!({"memory_mb": u64::MAX}),
            "memory_mb",
        ),
        (
            "POST",
            "/v1/vms",
            vm(json!({"memory_mb": u64::MAX})),
            "memory_mb",
        ),
        (
            "POST",
            "/v1/vms",
            vm(json!({"cpu_mhz": i64::MIN})),
            "cpu_mhz",
        ),
        (
            "POST",
            "/v1/datastores",
            json!({"id": -1, "name": "neg"}),
            "id",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"restart_retry_ms": [0, u64::MAX]}),
            "restart_retry_ms[1]",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"same_host_restart_attempts": u32::MAX}),
            "same_host_restart_attempts",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"orchestrated_wait_ms": u64::MAX}),
            "orchestrated_wait_ms",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"max_concurrent_power_ons_per_host": 1001}),
            "max_concurrent_power_ons_per_host",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"admission": {"HostFailuresTolerated": u32::MAX}}),
            "admission.HostFailuresTolerated",
        ),
        (
            "PUT",
            "/v1/config/ha",
            json!({"admission": {"PercentReserved": {"cpu": 255, "memory": 0}}}),
            "admission.PercentReserved.cpu",
        ),
        ("GET", "/v1/events?since=-1", Value::Null, "since"),
        (
            "GET",
            "/v1/events?since=9223372036854775808",
            Value::Null,
            "since",
        ),
        ("GET", "/v1/events?limit=0", Value::Null, "limit"),
        ("GET", "/v1/events?limit=1001", Value::Null, "limit"),
        ("GET", "/v1/hosts/4294967296", Value::Null, "id"),
    ];
    for (method, path, body, want) in cases {
        let body = (!body.is_null()).then_some(body.clone());
        let (code, v) = s.call(method, path, body.clone());
        assert_eq!(
            (code, field(&v)),
            (400, want),
            "{method} {path} {body:?}: {v}"
        );
    }
    let (_, st) = s.call("GET", "/v1/state", None);
    assert_eq!(st["hosts"].as_array().unwrap().len(), 2, "{st}");

    // The largest accepted values, and admission control's sums of them, exact.
    for id in [3_u32, 4] {
        let body = json!({"id": id, "name": format!("big{id}"), "address": "10.0.0.9:1",
                          "cpu_mhz": u32::MAX, "memory_mb": 1_u64 << 30});
        let (code, v) = s.call("POST", "/v1/hosts", Some(body));
        assert_eq!(code, 201, "{v}");
    }
    for id in 1..=3 {
        let body = json!({"id": id, "name": format!("vm{id}"), "home": 1,
                          "cpu_mhz": u32::MAX, "memory_mb": 1_u64 << 30});
        let (code, v) = s.call("POST", "/v1/vms", Some(body));
        assert_eq!(code, 201, "{v}");
    }
    let max_cpu = u64::from(u32::MAX);
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["cpu_mhz"]["capacity"], 2 * 10_000 + 2 * max_cpu, "{a}");
    assert_eq!(a["cpu_mhz"]["demand"], 3 * max_cpu, "{a}");
    assert_eq!(
        a["memory_mb"]["capacity"],
        2 * 65_536 + 2 * (1_u64 << 30),
        "{a}"
    );
    // HA settings are never refused for admission: accepted with a warning, verdict exact.
    let (code, v) = s.call(
        "PUT",
        "/v1/config/ha",
        Some(json!({"admission": {"PercentReserved": {"cpu": 100, "memory": 100}}})),
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("admission control"),
        "{v}"
    );
    let (_, a) = s.call("GET", "/v1/admission", None);
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["cpu_mhz"]["available"], 0, "{a}");
    assert_eq!(
        a["memory_mb"]["reserved_for_failover"],
        2 * 65_536 + 2 * (1_u64 << 30),
        "{a}"
    );
}

#[test]
fn writes_need_the_token_in_the_header() {
    let s = Server::start();
    let esx1 = json!({"id": 1, "name": "esx1", "address": "10.0.0.1:7400"});
    assert_eq!(s.call("POST", "/v1/hosts", Some(esx1)).0, 201);
    let q = format!("token={TOKEN}");
    let writes: Vec<(&str, &str, Option<Value>)> = vec![
        (
            "POST",
            "/v1/hosts",
            Some(json!({"id": 2, "name": "esx2", "address": "10.0.0.2:7400"})),
        ),
        ("PUT", "/v1/hosts/1", Some(json!({"name": "renamed"}))),
        (
            "POST",
            "/v1/hosts/1/maintenance",
            Some(json!({"action": "enter"})),
        ),
        ("PUT", "/v1/config/ha", Some(json!({"paused": true}))),
        ("DELETE", "/v1/hosts/1", None),
    ];
    for (method, path, body) in writes {
        let (code, v) = s.request(method, &format!("{path}?{q}"), body, None);
        assert_eq!(code, 401, "{method} {path}?token=: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("Authorization"), "{message}");
    }
    let resp = ureq::delete(&format!("{}/v1/hosts/1?{q}", s.url)).call();
    let Err(ureq::Error::Status(401, r)) = resp else {
        panic!("DELETE with the token in the query: {resp:?}");
    };
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    // None of them changed anything.
    let (_, hosts) = s.call("GET", "/v1/hosts", None);
    assert_eq!(hosts.as_array().unwrap().len(), 1, "{hosts}");
    assert_eq!(hosts[0]["name"], "esx1");
    assert_eq!(hosts[0]["maintenance"], false);
    let (_, ha) = s.call("GET", "/v1/config/ha", None);
    assert_eq!(ha["paused"], false);

    // Reads still take the token from the query, for a quick curl.
    for path in ["/v1/state", "/v1/hosts", "/v1/config/ha", "/v1/events"] {
        let (code, v) = s.request("GET", &format!("{path}?{q}"), None, None);
        assert_eq!(code, 200, "GET {path}?token=: {v}");
    }
    let head = ureq::head(&format!("{}/v1/state?{q}", s.url)).call();
    assert_eq!(head.map(|r| r.status()).ok(), Some(200));
    // With the header, a write works whatever the query says.
    let (code, v) = s.request(
        "PUT",
        "/v1/hosts/1?token=wrong",
        Some(json!({"name": "renamed"})),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{v}");
}

// ---- datastore layout ---------------------------------------------------------------------------

/// The refusal `check_layout` gives for hosts `a` and `b` that each mount a datastore the other
/// does not: the agents' own text, which the shim must answer with word for word.
fn crossed(a: u32, only_a: u32, b: u32, only_b: u32) -> String {
    LayoutError::NotNested {
        host_a: HostId(a),
        only_a: DatastoreId(only_a),
        host_b: HostId(b),
        only_b: DatastoreId(only_b),
    }
    .to_string()
}

#[test]
fn a_crossed_datastore_layout_is_refused_before_any_agent_sees_it() {
    let s = Server::start();
    // host-1 mounts {ds-1}, host-2 mounts {ds-1, ds-2}: nested.
    s.basic_inventory();
    let (_, before) = s.call("GET", "/v1/state", None);
    let published = read_config(&s.ds1()).unwrap().generation;
    let ds1 = s.ds1().display().to_string();
    let cases: Vec<(&str, &str, Value, String)> = vec![
        // A new datastore on host 1 only: host 1 has ds-3 without ds-2, host 2 ds-2 without ds-3.
        (
            "POST",
            "/v1/datastores",
            json!({"id": 3, "name": "ds3", "mounts": [{"host": 1, "path": "/mnt/ds3"}]}),
            crossed(1, 3, 2, 2),
        ),
        // Unmounting ds-1 from host 2 leaves host 1 with ds-1 only and host 2 with ds-2 only.
        (
            "PUT",
            "/v1/datastores/1",
            json!({"mounts": [{"host": 1, "path": ds1}]}),
            crossed(1, 1, 2, 2),
        ),
    ];
    for (method, path, body, want) in cases {
        let (code, v) = s.call(method, path, Some(body.clone()));
        assert_eq!(
            (code, field(&v)),
            (400, "mounts"),
            "{method} {path} {body}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert_eq!(message, want, "{method} {path} {body}");
        assert!(
            message.contains("host-1") && message.contains("host-2"),
            "{message}"
        );
    }
    // Nothing was stored or published.
    let (_, after) = s.call("GET", "/v1/state", None);
    assert_eq!(after["config_generation"], before["config_generation"]);
    assert_eq!(s.call("GET", "/v1/datastores/3", None).0, 404);
    let (_, stored) = s.call("GET", "/v1/datastores/1", None);
    assert_eq!(stored["mounts"].as_array().unwrap().len(), 2, "{stored}");
    for mount in [s.ds1(), s.ds2()] {
        let cfg = read_config(&mount).unwrap();
        assert_eq!(cfg.generation, published);
        assert_eq!(cfg.datastores.len(), 2);
        assert!(cfg.check_layout().is_ok());
    }
}

#[test]
fn a_nested_partial_layout_is_accepted() {
    let s = Server::start();
    s.basic_inventory();
    s.add_host("3");
    // ds-3 on host 2 only, ds-1 also on host 3: host-3 {ds-1} within host-1 {ds-1} within host-2
    // {ds-1, ds-2, ds-3}. Most datastores are on some hosts only, and that is fine.
    let ds1 = s.ds1().display().to_string();
    let (code, v) = s.call(
        "POST",
        "/v1/datastores",
        Some(json!({"id": 3, "name": "ds3", "mounts": [{"host": 2, "path": "/mnt/ds3"}]})),
    );
    assert_eq!(code, 201, "{v}");
    let mounts: Vec<Value> = (1..=3).map(|h| json!({"host": h, "path": ds1})).collect();
    let (code, v) = s.call("PUT", "/v1/datastores/1", Some(json!({"mounts": mounts})));
    assert_eq!(code, 200, "{v}");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().contains("layout")),
        "{v}"
    );
    // A host that mounts nothing is nested in every other: adding and removing one is fine.
    s.add_host("4");
    assert_eq!(s.call("DELETE", "/v1/hosts/4", None).0, 200);
    let cfg = read_config(&s.ds1()).unwrap();
    assert_eq!(cfg.generation, v["generation"].as_u64().unwrap() + 2);
    assert_eq!(cfg.datastores.len(), 3);
    assert_eq!(cfg.datastores[0].mounts.len(), 3);
    assert_eq!(cfg.check_layout(), Ok(()));
}

/// Host `esx<id>` of 10 GHz / 64 GB, as `Server::add_host` adds it.
fn esx(id: u32) -> HostSpec {
    HostSpec {
        id: HostId(id),
        name: format!("esx{id}"),
        address: format!("10.0.0.{id}:7400"),
        cpu_mhz: 10_000,
        memory_mb: 65_536,
        maintenance: false,
    }
}

/// Hosts 1 and 2 of 10 GHz / 64 GB, ds-1 mounted by both and ds-2 by host 2 only (as
/// `basic_inventory` builds it over HTTP), and vm-1 homed on ds-1.
fn base_inventory() -> Inventory {
    let mut inv = Inventory::new(ClusterId(1));
    for id in [1, 2] {
        inv.hosts.insert(HostId(id), esx(id));
    }
    let ds = |id: u32, hosts: &[u32]| DatastoreSpec {
        id: DatastoreId(id),
        name: format!("ds{id}"),
        mounts: hosts
            .iter()
            .map(|h| MountSpec {
                host: HostId(*h),
                path: format!("/mnt/ds{id}"),
            })
            .collect(),
    };
    inv.datastores.insert(DatastoreId(1), ds(1, &[1, 2]));
    inv.datastores.insert(DatastoreId(2), ds(2, &[2]));
    let vm: VmSpec = api::from_value(json!({"id": 1, "name": "vm1", "home": 1})).unwrap();
    inv.vms.insert(vm.id, vm);
    inv
}

#[test]
fn a_crossed_layout_from_an_old_database_can_be_repaired_one_datastore_at_a_time() {
    // A database written before the rule: three hosts, each with its own datastore only.
    let mut old = base_inventory();
    old.hosts.insert(
        HostId(3),
        HostSpec {
            id: HostId(3),
            ..old.hosts[&HostId(1)].clone()
        },
    );
    old.hosts.get_mut(&HostId(3)).unwrap().name = "esx3".into();
    let set_mounts = |inv: &mut Inventory, ds: u32, hosts: &[u32]| {
        let d = inv
            .datastores
            .entry(DatastoreId(ds))
            .or_insert(DatastoreSpec {
                id: DatastoreId(ds),
                name: format!("ds{ds}"),
                mounts: vec![],
            });
        d.mounts = hosts
            .iter()
            .map(|h| MountSpec {
                host: HostId(*h),
                path: format!("/mnt/ds{ds}"),
            })
            .collect();
    };
    set_mounts(&mut old, 1, &[1]);
    set_mounts(&mut old, 2, &[2]);
    set_mounts(&mut old, 3, &[3]);
    assert!(old.to_cluster_config().check_layout().is_err());

    // A write that leaves the mounts alone would publish a configuration every agent refuses.
    let mut paused = old.clone();
    paused.ha.paused = true;
    let e = check_write(&old, &paused, AdmissionGate::WarnOnly).unwrap_err();
    assert_eq!(
        (e.status(), e.body().error.field.as_deref()),
        (400, Some("mounts"))
    );
    assert_eq!(e.body().error.message, crossed(1, 1, 2, 2));

    // ds-2 on host 1 too: host-1 {ds-1, ds-2} still crosses host-3 {ds-3}, so no single write
    // could fix it; the step is accepted with a warning naming what is still crossed.
    let mut step1 = old.clone();
    set_mounts(&mut step1, 2, &[1, 2]);
    let warnings = check_write(&old, &step1, AdmissionGate::WarnOnly).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("still not nested") && warnings[0].contains(&crossed(1, 1, 3, 3)),
        "{warnings:?}"
    );
    // ds-3 on hosts 1 and 2 too: host-3 {ds-3} within host-2 {ds-2, ds-3} within host-1, which
    // mounts everything: nested.
    let mut step2 = step1.clone();
    set_mounts(&mut step2, 3, &[1, 2, 3]);
    assert_eq!(
        check_write(&step1, &step2, AdmissionGate::WarnOnly).unwrap(),
        Vec::<String>::new()
    );
    // From a nested layout, crossing it again is refused.
    let e = check_write(&step2, &step1, AdmissionGate::WarnOnly).unwrap_err();
    assert_eq!(
        (e.status(), e.body().error.field.as_deref()),
        (400, Some("mounts"))
    );
}

// ---- every number a request carries -------------------------------------------------------------

/// A number as a request may carry it: any u64, any negative i64, or beyond both (JSON allows any
/// size; serde_json reads such a literal as a float, as the shim's body parser does).
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    Neg(i64),
    Huge { magnitude: u128, negative: bool },
}

impl Num {
    fn json(self) -> Value {
        match self {
            Num::U(n) => json!(n),
            Num::Neg(n) => json!(n),
            Num::Huge {
                magnitude,
                negative,
            } => {
                let sign = if negative { "-" } else { "" };
                serde_json::from_str(&format!("{sign}{magnitude}")).unwrap()
            }
        }
    }

    /// Whether the shim must accept the number for a field of range `lo..=hi`.
    fn within(self, lo: u64, hi: u64) -> bool {
        matches!(self, Num::U(n) if (lo..=hi).contains(&n))
    }

    fn unsigned(self) -> Option<u64> {
        match self {
            Num::U(n) => Some(n),
            _ => None,
        }
    }
}

/// The edges of every range the shim and the agents apply, and of the types behind them.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    3,
    9,
    10,
    100,
    101,
    255,
    256,
    1_000,
    1_001,
    100_000,
    100_001,
    86_400_000,
    86_400_001,
    1 << 30,
    (1 << 30) + 1,
    u32::MAX as u64,
    u32::MAX as u64 + 1,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    u64::MAX,
];

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        4 => proptest::sample::select(EDGES).prop_map(Num::U),
        3 => (0u64..5_000).prop_map(Num::U),
        2 => any::<u32>().prop_map(|n| Num::U(n.into())),
        2 => any::<u64>().prop_map(Num::U),
        2 => (i64::MIN..0).prop_map(Num::Neg),
        1 => ((u128::from(u64::MAX) + 1).., any::<bool>())
            .prop_map(|(magnitude, negative)| Num::Huge { magnitude, negative }),
    ]
}

/// Any number, or often one at an edge of the field's own range `lo..=hi`: the values where a
/// limit one off would show.
fn around(lo: u64, hi: u64) -> BoxedStrategy<Num> {
    let edges = vec![lo.saturating_sub(1), lo, hi, hi.saturating_add(1)];
    prop_oneof![
        2 => num(),
        1 => proptest::sample::select(edges).prop_map(Num::U),
    ]
    .boxed()
}

/// A field a write carries about a third of the time: with few fields per write, a write whose
/// other fields are all in range is common, so that the edges of each range are seen accepted as
/// well as refused.
fn sometimes<T: Strategy>(s: T) -> proptest::option::OptionStrategy<T> {
    proptest::option::weighted(0.35, s)
}

/// One write, as the numbers it carries.
#[derive(Debug, Clone)]
enum NumericWrite {
    Host {
        id: Num,
        cpu_mhz: Option<Num>,
        memory_mb: Option<Num>,
    },
    Vm {
        id: Num,
        home: Num,
        cpu_mhz: Option<Num>,
        memory_mb: Option<Num>,
        /// The cluster the VM is added to: a policy and host capacities as an old database may
        /// hold them (never validated), so that admission control sums whatever is stored.
        policy: AdmissionPolicy,
        hosts: Vec<(u32, u64)>,
    },
    Datastore {
        id: Num,
        mounts: Vec<Num>,
    },
    Ha(HaPatch),
}

#[derive(Debug, Clone, Default)]
struct HaPatch {
    timings_ms: Option<Vec<(&'static str, Num)>>,
    restart_retry_ms: Option<Vec<Num>>,
    same_host_restart_attempts: Option<Num>,
    orchestrated_wait_ms: Option<Num>,
    max_concurrent_power_ons_per_host: Option<Num>,
    admission: Option<AdmissionNums>,
}

#[derive(Debug, Clone)]
enum AdmissionNums {
    HostFailuresTolerated(Num),
    PercentReserved { cpu: Num, memory: Num },
}

fn ha_patch() -> impl Strategy<Value = HaPatch> {
    let timings =
        proptest::sample::subsequence(Timings::NAMES.to_vec(), 0..5).prop_flat_map(|names| {
            let n = names.len();
            (Just(names), proptest::collection::vec(num(), n))
                .prop_map(|(names, values)| names.into_iter().zip(values).collect::<Vec<_>>())
        });
    let admission = prop_oneof![
        around(1, u64::from(MAX_HOST_FAILURES_TOLERATED))
            .prop_map(AdmissionNums::HostFailuresTolerated),
        (around(0, 100), around(0, 100))
            .prop_map(|(cpu, memory)| AdmissionNums::PercentReserved { cpu, memory }),
    ];
    (
        sometimes(timings),
        sometimes(proptest::collection::vec(around(0, MAX_WAIT_MS), 0..5)),
        sometimes(around(0, u64::from(MAX_RETRIES))),
        sometimes(around(0, MAX_WAIT_MS)),
        sometimes(around(1, u64::from(MAX_CONCURRENT_POWER_ONS))),
        sometimes(admission),
    )
        .prop_map(|(t, r, s, o, m, a)| HaPatch {
            timings_ms: t,
            restart_retry_ms: r,
            same_host_restart_attempts: s,
            orchestrated_wait_ms: o,
            max_concurrent_power_ons_per_host: m,
            admission: a,
        })
}

fn numeric_write() -> impl Strategy<Value = NumericWrite> {
    let policy = prop_oneof![
        Just(AdmissionPolicy::Disabled),
        any::<u32>().prop_map(AdmissionPolicy::HostFailuresTolerated),
        (any::<u8>(), any::<u8>())
            .prop_map(|(cpu, memory)| AdmissionPolicy::PercentReserved { cpu, memory }),
        Just(AdmissionPolicy::DedicatedFailoverHosts),
    ];
    prop_oneof![
        (
            around(1, u32::MAX.into()),
            sometimes(around(0, u32::MAX.into())),
            sometimes(around(0, MAX_MEMORY_MB))
        )
            .prop_map(|(id, cpu_mhz, memory_mb)| {
                NumericWrite::Host {
                    id,
                    cpu_mhz,
                    memory_mb,
                }
            }),
        (
            around(1, u32::MAX.into()),
            prop_oneof![1 => num(), 1 => (0u64..4).prop_map(Num::U)],
            sometimes(around(0, u32::MAX.into())),
            sometimes(around(0, MAX_MEMORY_MB)),
            policy,
            proptest::collection::vec((any::<u32>(), any::<u64>()), 2),
        )
            .prop_map(
                |(id, home, cpu_mhz, memory_mb, policy, hosts)| NumericWrite::Vm {
                    id,
                    home,
                    cpu_mhz,
                    memory_mb,
                    policy,
                    hosts
                }
            ),
        (
            around(1, u32::MAX.into()),
            proptest::collection::vec(
                prop_oneof![1 => num(), 2 => (0u64..4).prop_map(Num::U)],
                1..4
            )
        )
            .prop_map(|(id, mounts)| NumericWrite::Datastore { id, mounts }),
        ha_patch().prop_map(NumericWrite::Ha),
    ]
}

impl HaPatch {
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(t) = &self.timings_ms {
            let map: Map<String, Value> = t.iter().map(|(k, v)| ((*k).into(), v.json())).collect();
            body.insert("timings_ms".into(), Value::Object(map));
        }
        if let Some(r) = &self.restart_retry_ms {
            body.insert(
                "restart_retry_ms".into(),
                r.iter().map(|n| n.json()).collect(),
            );
        }
        for (name, n) in [
            (
                "same_host_restart_attempts",
                self.same_host_restart_attempts,
            ),
            ("orchestrated_wait_ms", self.orchestrated_wait_ms),
            (
                "max_concurrent_power_ons_per_host",
                self.max_concurrent_power_ons_per_host,
            ),
        ] {
            if let Some(n) = n {
                body.insert(name.into(), n.json());
            }
        }
        match &self.admission {
            Some(AdmissionNums::HostFailuresTolerated(n)) => {
                body.insert(
                    "admission".into(),
                    json!({"HostFailuresTolerated": n.json()}),
                );
            }
            Some(AdmissionNums::PercentReserved { cpu, memory }) => {
                body.insert(
                    "admission".into(),
                    json!({"PercentReserved": {"cpu": cpu.json(), "memory": memory.json()}}),
                );
            }
            None => {}
        }
        body
    }

    /// The fields whose value is out of range on its own, by the documented limits.
    fn out_of_range(&self) -> BTreeSet<String> {
        let mut bad = BTreeSet::new();
        let mut check = |field: String, n: Num, lo: u64, hi: u64| {
            if !n.within(lo, hi) {
                bad.insert(field);
            }
        };
        for (name, n) in self.timings_ms.iter().flatten() {
            check(format!("timings_ms.{name}"), *n, 0, u64::MAX);
        }
        for (i, n) in self.restart_retry_ms.iter().flatten().enumerate() {
            check(format!("restart_retry_ms[{i}]"), *n, 0, MAX_WAIT_MS);
        }
        let fields = [
            (
                "same_host_restart_attempts",
                self.same_host_restart_attempts,
                0,
                u64::from(MAX_RETRIES),
            ),
            (
                "orchestrated_wait_ms",
                self.orchestrated_wait_ms,
                0,
                MAX_WAIT_MS,
            ),
            (
                "max_concurrent_power_ons_per_host",
                self.max_concurrent_power_ons_per_host,
                1,
                u64::from(MAX_CONCURRENT_POWER_ONS),
            ),
        ];
        for (name, n, lo, hi) in fields {
            if let Some(n) = n {
                check(name.into(), n, lo, hi);
            }
        }
        match &self.admission {
            Some(AdmissionNums::HostFailuresTolerated(n)) => check(
                "admission.HostFailuresTolerated".into(),
                *n,
                1,
                u64::from(MAX_HOST_FAILURES_TOLERATED),
            ),
            Some(AdmissionNums::PercentReserved { cpu, memory }) => {
                check("admission.PercentReserved.cpu".into(), *cpu, 0, 100);
                check("admission.PercentReserved.memory".into(), *memory, 0, 100);
            }
            None => {}
        }
        bad
    }

    /// The timing overrides as the agent reads them, when every value is one.
    fn timings(&self) -> Option<BTreeMap<String, u64>> {
        self.timings_ms
            .iter()
            .flatten()
            .map(|(k, v)| Some(((*k).to_string(), v.unsigned()?)))
            .collect()
    }
}

/// What a write of `w` to `inv` must come to, judged by the documented limits and the agents' own
/// rules, and what it came to through the shim's own functions (request parsing, the object's rules,
/// and the checks of the write path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// `Timings::with_overrides` refuses the timings: the refusal names one of them.
    Timings,
    /// `ClusterConfig::check_layout` refuses the layout: the refusal names `mounts`.
    Layout,
}

impl Relation {
    fn names(self, field: &str) -> bool {
        match self {
            Relation::Timings => field
                .strip_prefix("timings_ms.")
                .is_some_and(|name| Timings::NAMES.contains(&name)),
            Relation::Layout => field == "mounts",
        }
    }
}

struct Verdict {
    /// Fields out of range on their own: a refusal must name one of them.
    out_of_range: BTreeSet<String>,
    /// A rule between values the agents' own checks find broken, which a refusal may name instead.
    relation: Option<Relation>,
    /// Whether admission control may refuse the write (a VM write that adds demand).
    admission_may_refuse: bool,
    outcome: Result<Inventory, ShimError>,
}

fn post<T: serde::de::DeserializeOwned>(
    inv: &Inventory,
    body: Value,
    rules: fn(&T, &Inventory) -> Result<(), ShimError>,
    insert: fn(&mut Inventory, T),
    gate: AdmissionGate,
) -> Result<Inventory, ShimError> {
    let spec: T = api::from_value(body)?;
    rules(&spec, inv)?;
    let mut next = inv.clone();
    insert(&mut next, spec);
    check_write(inv, &next, gate)?;
    Ok(next)
}

fn judge(w: &NumericWrite) -> Verdict {
    let mut inv = base_inventory();
    let mut out_of_range = BTreeSet::new();
    fn flag(set: &mut BTreeSet<String>, field: &str, n: Option<Num>, lo: u64, hi: u64) {
        if n.is_some_and(|n| !n.within(lo, hi)) {
            set.insert(field.to_string());
        }
    }
    let mut relation = None;
    let mut admission_may_refuse = false;
    let outcome = match w {
        NumericWrite::Host {
            id,
            cpu_mhz,
            memory_mb,
        } => {
            flag(&mut out_of_range, "id", Some(*id), 1, u32::MAX.into());
            flag(&mut out_of_range, "cpu_mhz", *cpu_mhz, 0, u32::MAX.into());
            flag(&mut out_of_range, "memory_mb", *memory_mb, 0, MAX_MEMORY_MB);
            let mut body = json!({"id": id.json(), "name": "prop", "address": "10.0.0.9:7400"});
            for (k, n) in [("cpu_mhz", cpu_mhz), ("memory_mb", memory_mb)] {
                if let Some(n) = n {
                    body[k] = n.json();
                }
            }
            post(
                &inv,
                body,
                validate::validate_host,
                |inv, h: HostSpec| {
                    inv.hosts.insert(h.id, h);
                },
                AdmissionGate::WarnOnly,
            )
        }
        NumericWrite::Vm {
            id,
            home,
            cpu_mhz,
            memory_mb,
            policy,
            hosts,
        } => {
            flag(&mut out_of_range, "id", Some(*id), 1, u32::MAX.into());
            // ds-1 and ds-2 are the datastores there are.
            flag(&mut out_of_range, "home", Some(*home), 1, 2);
            flag(&mut out_of_range, "cpu_mhz", *cpu_mhz, 0, u32::MAX.into());
            flag(&mut out_of_range, "memory_mb", *memory_mb, 0, MAX_MEMORY_MB);
            inv.ha.admission = policy.clone();
            inv.ha.failover_hosts = vec![HostId(2)];
            for (h, &(cpu_mhz, memory_mb)) in inv.hosts.values_mut().zip(hosts) {
                h.cpu_mhz = cpu_mhz;
                h.memory_mb = memory_mb;
            }
            admission_may_refuse = true;
            let mut body = json!({"id": id.json(), "name": "propvm", "home": home.json()});
            for (k, n) in [("cpu_mhz", cpu_mhz), ("memory_mb", memory_mb)] {
                if let Some(n) = n {
                    body[k] = n.json();
                }
            }
            post(
                &inv,
                body,
                validate::validate_vm,
                |inv, v: VmSpec| {
                    inv.vms.insert(v.id, v);
                },
                AdmissionGate::Vm {
                    field: "reservation",
                },
            )
        }
        NumericWrite::Datastore { id, mounts } => {
            flag(&mut out_of_range, "id", Some(*id), 1, u32::MAX.into());
            let mut seen = BTreeSet::new();
            for (i, h) in mounts.iter().enumerate() {
                let known = h.within(1, 2) && seen.insert(h.unsigned());
                if !known {
                    out_of_range.insert(format!("mounts[{i}].host"));
                }
            }
            // The layout the agents would get, when the datastore itself is fine.
            if let (Some(ds), true) = (id.unsigned().filter(|d| *d >= 1), out_of_range.is_empty()) {
                let mut next = inv.clone();
                next.datastores.insert(
                    DatastoreId(ds as u32),
                    DatastoreSpec {
                        id: DatastoreId(ds as u32),
                        name: "propds".into(),
                        mounts: seen
                            .iter()
                            .flatten()
                            .map(|h| MountSpec {
                                host: HostId(*h as u32),
                                path: "/prop".into(),
                            })
                            .collect(),
                    },
                );
                if next.to_cluster_config().check_layout().is_err() {
                    relation = Some(Relation::Layout);
                }
            }
            let body = json!({
                "id": id.json(),
                "name": "propds",
                "mounts": mounts.iter().map(|h| json!({"host": h.json(), "path": "/prop"})).collect::<Vec<_>>(),
            });
            post(
                &inv,
                body,
                validate::validate_datastore,
                |inv, d: DatastoreSpec| {
                    inv.datastores.insert(d.id, d);
                },
                AdmissionGate::WarnOnly,
            )
        }
        NumericWrite::Ha(patch) => {
            out_of_range = patch.out_of_range();
            if patch
                .timings()
                .is_some_and(|t| Timings::default().with_overrides(&t).is_err())
            {
                relation = Some(Relation::Timings);
            }
            let mut next = inv.clone();
            api::apply_ha_patch(&mut next, patch.body())
                .and_then(|()| check_write(&inv, &next, AdmissionGate::WarnOnly))
                .map(|_| next)
        }
    };
    Verdict {
        out_of_range,
        relation,
        admission_may_refuse,
        outcome,
    }
}

/// The property: every answer is a success or a 400 that names a field the request got wrong, a
/// request with nothing wrong succeeds, and what is accepted is a configuration every agent takes.
fn check_verdict(w: &NumericWrite, v: Verdict) -> Result<(), TestCaseError> {
    match v.outcome {
        Ok(next) => {
            prop_assert!(
                v.out_of_range.is_empty(),
                "accepted {w:?} out of range: {:?}",
                v.out_of_range
            );
            prop_assert!(
                v.relation.is_none(),
                "accepted {w:?} breaking {:?}",
                v.relation
            );
            let cfg = next.to_cluster_config();
            prop_assert!(
                Timings::default()
                    .with_overrides(&cfg.ha.timings_ms)
                    .is_ok(),
                "accepted {w:?}: an agent refuses its timings {:?}",
                cfg.ha.timings_ms
            );
            prop_assert_eq!(cfg.check_layout(), Ok(()), "accepted {:?}", w);
            // Admission control's figures are the exact sums, whatever the sizes.
            let a = admission::evaluate(&next);
            let cpu: u128 = next
                .hosts
                .values()
                .filter(|h| !h.maintenance)
                .map(|h| u128::from(h.cpu_mhz))
                .sum();
            let mem: u128 = next
                .hosts
                .values()
                .filter(|h| !h.maintenance)
                .map(|h| u128::from(h.memory_mb))
                .sum();
            prop_assert_eq!((a.cpu_mhz.capacity, a.memory_mb.capacity), (cpu, mem));
        }
        Err(ShimError::Admission { field, report, .. }) => {
            prop_assert!(
                v.admission_may_refuse,
                "{w:?}: refused by admission control"
            );
            prop_assert!(
                v.out_of_range.is_empty(),
                "{w:?}: admission control before the ranges"
            );
            prop_assert_eq!(field, "reservation");
            prop_assert!(!report.ok);
        }
        Err(e) => {
            let body = e.body();
            let field = body.error.field.clone().unwrap_or_default();
            prop_assert_eq!(e.status(), 400, "{:?}: {}", w, e);
            let named =
                v.out_of_range.contains(&field) || v.relation.is_some_and(|r| r.names(&field));
            prop_assert!(
                named,
                "{w:?}: refused naming {field:?} ({}), expected one of {:?} or {:?}",
                body.error.message,
                v.out_of_range,
                v.relation
            );
            // Plain words: no Rust debug form of an id.
            prop_assert!(
                !body.error.message.contains("Id("),
                "{}",
                body.error.message
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// Every numeric field the shim accepts (host, VM and datastore ids, capacities, reservations,
    /// homes, mounts, every timing the agent knows, retries, waits, power-ons and the admission
    /// policy's numbers), fed with any integer, through the functions the API's write path runs.
    #[test]
    fn any_number_is_accepted_in_range_or_refused_naming_its_field(w in numeric_write()) {
        let v = judge(&w);
        check_verdict(&w, v)?;
    }
}

#[test]
fn any_number_over_http_is_a_success_or_a_400_naming_the_field() {
    // The same property for HA settings through the running server: the parser in front of the
    // functions above, and a server that keeps answering. HA patches only, because their verdict
    // does not depend on what earlier cases stored.
    let s = Server::start();
    s.basic_inventory();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    runner
        .run(&ha_patch(), |patch| {
            let expected = judge(&NumericWrite::Ha(patch.clone()));
            let (code, v) = s.call("PUT", "/v1/config/ha", Some(Value::Object(patch.body())));
            match expected.outcome {
                Ok(_) => {
                    prop_assert_eq!(code, 200, "{:?}: {}", patch, v);
                    let cfg = read_config(&s.ds1()).unwrap();
                    prop_assert_eq!(cfg.generation, v["generation"].as_u64().unwrap());
                    prop_assert!(
                        Timings::default()
                            .with_overrides(&cfg.ha.timings_ms)
                            .is_ok()
                    );
                }
                Err(e) => {
                    prop_assert_eq!(code, 400, "{:?}: {}", patch, v);
                    prop_assert_eq!(field(&v), e.body().error.field.unwrap(), "{:?}", patch);
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(s.call("GET", "/v1/state", None).0, 200);
}

#[test]
fn a_clear_reaches_the_agents_as_the_vms_restart_cleared_generation() {
    let s = Server::start();
    s.basic_inventory();
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    let cleared = |mount: &Path| {
        read_config(mount)
            .and_then(|c| c.vm(VmId(7)).map(|v| (c.generation, v.ha.restart_cleared)))
            .expect("vm-7 on the datastore")
    };
    let (before, never) = cleared(&s.ds1());
    assert_eq!(never, 0, "a VM never cleared");
    // By name through fdmctl: the clear is the write's own generation, on every datastore.
    let out = s.ctl_ok(&["vm", "clear", "web"]);
    assert!(out.contains("vm-7 cleared"), "{out}");
    for mount in [s.ds1(), s.ds2()] {
        assert_eq!(cleared(&mount), (before + 1, before + 1));
    }
    // By id over HTTP, with an empty object: a later clear is a higher generation.
    let (code, body) = s.call("POST", "/v1/vms/7/clear", Some(json!({})));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["generation"], before + 2);
    assert_eq!(body["vm"]["name"], "web");
    assert_eq!(cleared(&s.ds1()), (before + 2, before + 2));
    // Other VM settings are not touched, and the clear is no field a PUT can set.
    let (code, body) = s.call("PUT", "/v1/vms/7", Some(json!({"restart_cleared": 1})));
    assert_eq!((code, field(&body)), (400, "restart_cleared"), "{body}");
    let (code, body) = s.call("POST", "/v1/vms/9/clear", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = s.call("POST", "/v1/vms/7/clear", Some(json!({"force": true})));
    assert_eq!((code, field(&body)), (400, "force"), "{body}");
    let (ok, _, err) = s.ctl(&["vm", "clear", "nosuch"]);
    assert!(!ok && err.contains("no VM is named \"nosuch\""), "{err}");
    // A VM removed and added again under the same id starts without the old clear.
    s.ctl_ok(&["vm", "rm", "7"]);
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    assert_eq!(cleared(&s.ds1()).1, 0);
}

#[test]
fn a_stop_and_a_start_reach_the_agents_as_the_vms_power_request() {
    use heartbeat_fs::records::{DesiredPower, PowerRequest};
    let s = Server::start();
    s.basic_inventory();
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    let request = |mount: &Path| {
        read_config(mount)
            .and_then(|c| c.vm(VmId(7)).map(|v| (c.generation, v.ha.power_request)))
            .expect("vm-7 on the datastore")
    };
    let (before, none) = request(&s.ds1());
    assert_eq!(none, None, "no request yet");
    // By name through fdmctl: the request is the write's own generation, on every datastore.
    let out = s.ctl_ok(&["vm", "stop", "web"]);
    assert!(out.contains("vm-7: stop requested"), "{out}");
    let stop = Some(PowerRequest {
        generation: before + 1,
        power: DesiredPower::Off,
    });
    for mount in [s.ds1(), s.ds2()] {
        assert_eq!(request(&mount), (before + 1, stop));
    }
    // By id over HTTP: a start replaces it, with a higher generation.
    let (code, body) = s.call("POST", "/v1/vms/7/start", Some(json!({})));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["generation"], before + 2);
    let start = Some(PowerRequest {
        generation: before + 2,
        power: DesiredPower::On,
    });
    assert_eq!(request(&s.ds1()), (before + 2, start));
    // No PUT can set it; unknown VMs and unknown fields are refused with the reason.
    let (code, body) = s.call("PUT", "/v1/vms/7", Some(json!({"power_request": null})));
    assert_eq!((code, field(&body)), (400, "power_request"), "{body}");
    let (code, body) = s.call("POST", "/v1/vms/9/stop", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = s.call("POST", "/v1/vms/7/stop", Some(json!({"now": true})));
    assert_eq!((code, field(&body)), (400, "now"), "{body}");
    let (ok, _, err) = s.ctl(&["vm", "start", "nosuch"]);
    assert!(!ok && err.contains("no VM is named \"nosuch\""), "{err}");
    // A VM removed and added again under the same id starts without the old request.
    s.ctl_ok(&["vm", "rm", "7"]);
    s.ctl_ok(&["vm", "add", "--id", "7", "--name", "web", "--home", "1"]);
    assert_eq!(request(&s.ds1()).1, None);
}

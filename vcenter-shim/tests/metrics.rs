//! Both metrics endpoints scraped from real processes and read by strict parsers: a `fdm-shim`
//! whose inventory protects one VM and a `fdm-agent` that reads it from the datastore, places the
//! VM and restarts it after a crash. Each exposition, in both formats, must pass the checks of
//! `check_exposition` below, the Prometheus project's reference parsers (its Python client's
//! OpenMetrics parser, strict: it refuses a family split by another with "Clashing name") and
//! promtool's linter, the last two when installed (Debian's `python3-prometheus-client` and
//! `prometheus`, which `scripts/install-test-deps.sh` installs; the test says when it skips them). The HTTP rules
//! of both endpoints (404, 405, tokens, health) are checked on the way. Loopback only, no root.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_agent::driver::process::running_vm_pids;
use fdm_agent::wait::wait_until;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "metrics-test-token-7";
const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// The agent binary of the same build (built on demand when only this package's tests were built).
fn agent_exe() -> PathBuf {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_fdm-shim"));
    let exe = shim.with_file_name("fdm-agent");
    if !exe.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-q", "-p", "fdm-agent", "--bin", "fdm-agent"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "building fdm-agent failed");
    }
    exe
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP answer: status, `Content-Type`, body.
fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let code = resp.status();
    let kind = resp.header("content-type").unwrap_or_default().to_string();
    (code, kind, resp.into_string().unwrap_or_default())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

// ---- the strict checks ---------------------------------------------------------------------

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !n.starts_with("__")
}

/// `name{a="x",b="y"} value` into its parts, with the escapes of label values undone.
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        while let Some(&(i, c)) = chars.peek() {
            if c == '}' {
                end = Some(i);
                break;
            }
            let key_start = i;
            while chars.peek().is_some_and(|&(_, c)| c != '=') {
                chars.next();
            }
            let (eq, _) = chars
                .next()
                .ok_or_else(|| format!("label without =: {line}"))?;
            let key = &body[key_start..eq];
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("unquoted label value: {line}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        _ => return Err(format!("bad escape: {line}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value: {line}")),
                }
            }
            if !valid_label_name(key) {
                return Err(format!("label name `{key}`: {line}"));
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label `{key}` twice: {line}"));
            }
            if chars.peek().is_some_and(|&(_, c)| c == ',') {
                chars.next();
            }
        }
        let end = end.ok_or_else(|| format!("unterminated labels: {line}"))?;
        rest = &body[end + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line}"))?;
    if value.contains(' ') {
        return Err(format!("a timestamp or trailing text: {line}"));
    }
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("value `{v}`: {e}: {line}"))?,
    };
    Ok((name.to_string(), labels, v))
}

/// The sample names a family of `kind` may have, in either format.
fn sample_belongs(family: &str, kind: &str, sample: &str, openmetrics: bool) -> bool {
    let suffix = sample.strip_prefix(family);
    match (kind, suffix) {
        (_, None) => false,
        ("counter", Some(s)) if openmetrics => s == "_total",
        ("counter", Some(s)) => s.is_empty() && family.ends_with("_total"),
        ("histogram", Some(s)) => ["_bucket", "_sum", "_count"].contains(&s),
        ("info", Some(s)) => s == "_info",
        ("gauge", Some("")) => true,
        _ => false,
    }
}

/// Everything a strict reader of either text format requires, and a little more: each family
/// has exactly one HELP (not empty) and one TYPE before its first sample, and its samples follow
/// it without another family in between; names and label names are valid; no series appears
/// twice; a family named for a unit says so in `# UNIT` (OpenMetrics); histogram buckets are
/// cumulative and end in `+Inf` equal to `_count`; counters are not negative; OpenMetrics ends in
/// `# EOF`. Returns each family's name and type.
fn check_exposition(text: &str, openmetrics: bool) -> Result<BTreeMap<String, String>, String> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut units: BTreeSet<String> = BTreeSet::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<(String, String)> = None;
    // Histogram series (labels without `le`): buckets in order, then `_count`.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut saw_eof = false;
    if !text.ends_with('\n') {
        return Err("the exposition does not end in a newline".into());
    }
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            if !openmetrics {
                return Err("# EOF in the Prometheus text format".into());
            }
            if lines.peek().is_some() {
                return Err("text after # EOF".into());
            }
            saw_eof = true;
            break;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (what, name, rest) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if !valid_metric_name(name) {
                return Err(format!("family name `{name}`: {line}"));
            }
            let starts_new = current.as_ref().is_none_or(|(n, _)| n != name);
            if starts_new {
                if let Some((n, _)) = current.take() {
                    closed.insert(n);
                }
                if closed.contains(name) || families.contains_key(name) {
                    return Err(format!("family `{name}` described again further on"));
                }
                current = Some((name.to_string(), String::new()));
            }
            match what {
                "HELP" => {
                    if rest.trim().is_empty() || !helped.insert(name.to_string()) {
                        return Err(format!("empty or second HELP: {line}"));
                    }
                }
                "TYPE" => {
                    let known = ["counter", "gauge", "histogram", "info"];
                    if !known.contains(&rest) {
                        return Err(format!("type `{rest}` (fdm uses {known:?}): {line}"));
                    }
                    if families
                        .insert(name.to_string(), rest.to_string())
                        .is_some()
                    {
                        return Err(format!("second TYPE: {line}"));
                    }
                    if let Some(c) = current.as_mut() {
                        c.1 = rest.to_string();
                    }
                }
                "UNIT" if openmetrics => {
                    if !name.ends_with(&format!("_{rest}")) || !units.insert(name.to_string()) {
                        return Err(format!("a unit its name does not end in, or twice: {line}"));
                    }
                }
                _ => return Err(format!("unknown comment line: {line}")),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("stray line: {line:?}"));
        }
        let (name, labels, value) = parse_sample(line)?;
        if !valid_metric_name(&name) {
            return Err(format!("sample name `{name}`"));
        }
        let Some((family, kind)) = current.clone() else {
            return Err(format!("a sample before any family: {line}"));
        };
        if !helped.contains(&family) || kind.is_empty() {
            return Err(format!("{family}: a sample before its HELP and TYPE"));
        }
        if !sample_belongs(&family, &kind, &name, openmetrics) {
            return Err(format!(
                "{line}: not a sample of the {kind} family {family}"
            ));
        }
        let key = format!("{name}{labels:?}");
        if !series.insert(key.clone()) {
            return Err(format!("series twice: {line}"));
        }
        // NaN is not a count either.
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(format!("a counter below zero: {line}"));
        }
        if kind == "histogram" {
            let mut rest = labels.clone();
            let le = rest.remove("le");
            let id = format!("{family}{rest:?}");
            match (name.strip_prefix(family.as_str()), le) {
                (Some("_bucket"), Some(le)) => {
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse::<f64>().map_err(|e| format!("le `{le}`: {e}"))?
                    };
                    buckets.entry(id).or_default().push((bound, value));
                }
                (Some("_bucket"), None) => return Err(format!("a bucket without le: {line}")),
                (Some("_count"), _) => {
                    counts.insert(id, value);
                }
                _ => {}
            }
        }
    }
    if openmetrics && !saw_eof {
        return Err("OpenMetrics without # EOF".into());
    }
    for (name, _) in families.iter() {
        if !helped.contains(name) {
            return Err(format!("{name}: no HELP"));
        }
        let unit_named = name.ends_with("_seconds") || name.ends_with("_bytes");
        if openmetrics && unit_named && !units.contains(name) {
            return Err(format!("{name}: named for a unit without # UNIT"));
        }
    }
    for (id, bs) in &buckets {
        let mut sorted = bs.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        if sorted.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{id}: buckets not cumulative: {sorted:?}"));
        }
        let last = sorted.last().copied().unwrap_or((0.0, 0.0));
        if last.0 != f64::INFINITY || counts.get(id) != Some(&last.1) {
            return Err(format!("{id}: no +Inf bucket equal to _count"));
        }
    }
    Ok(families)
}

/// The Prometheus project's reference parsers (its Python client, Debian's
/// `python3-prometheus-client`): the families they read from `text`, as `name type` lines, or why
/// they refused it; `None` when they are not installed.
fn reference_parse(text: &str, openmetrics: bool) -> Option<Result<Vec<String>, String>> {
    const SCRIPT: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
        from prometheus_client.parser import text_string_to_metric_families as prom\n\
        parse = om if sys.argv[1] == 'openmetrics' else prom\n\
        for f in parse(sys.stdin.read()):\n    print(f.name, f.type)\n";
    // Debian's interpreter, which the Debian package installs into (a `python3` earlier on PATH
    // may be another one).
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let format = if openmetrics { "openmetrics" } else { "text" };
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("to python");
    let out = child.wait_with_output().expect("python");
    Some(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or_default().to_string())
    })
}

/// Every check on one exposition; the families it has (name and type).
fn strictly_parsed(what: &str, text: &str, openmetrics: bool) -> BTreeMap<String, String> {
    let families = check_exposition(text, openmetrics)
        .unwrap_or_else(|e| panic!("{what}: {e}\n--- exposition ---\n{text}"));
    match reference_parse(text, openmetrics) {
        None => println!(
            "skipping the reference parser for {what}: python3 with prometheus_client is not installed"
        ),
        Some(Err(e)) => panic!("{what}: the reference parser refused it: {e}\n{text}"),
        Some(Ok(read)) => {
            // One family per TYPE line: a parser that splits a family (samples away from their
            // descriptor) reads more, and an untyped one.
            assert_eq!(read.len(), families.len(), "{what}: families read {read:?}");
            assert!(
                read.iter()
                    .all(|l| !l.ends_with(" unknown") && !l.ends_with(" untyped")),
                "{what}: a family without a type: {read:?}"
            );
        }
    }
    families
}

/// promtool's linter on the Prometheus text format, when it is installed (Debian's
/// `prometheus` package; `scripts/install-test-deps.sh` installs it).
fn promtool_lint(what: &str, text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        println!("skipping promtool check metrics for {what}: promtool is not installed");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics on {what}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sample's value by its exact text before the value (`name{labels}`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_checks_refuse_what_the_agent_used_to_serve() {
    // The old agent's shape: no HELP, and heartbeat ages without a TYPE between the verdicts.
    let old = "# TYPE fdm_host_verdict gauge\n\
        fdm_host_verdict{host=\"1\",verdict=\"alive\"} 1\n\
        fdm_heartbeat_age_seconds{host=\"1\",channel=\"network\"} 0.100\n\
        fdm_host_verdict{host=\"2\",verdict=\"alive\"} 1\n";
    assert!(check_exposition(old, false).is_err());
    let with_help = "# HELP fdm_host_verdict v.\n# TYPE fdm_host_verdict gauge\n\
        fdm_host_verdict{host=\"1\"} 1\n\
        # HELP fdm_heartbeat_age_seconds a.\n# TYPE fdm_heartbeat_age_seconds gauge\n\
        fdm_heartbeat_age_seconds{host=\"1\"} 0.1\n\
        fdm_host_verdict{host=\"2\"} 1\n# EOF\n";
    let e = check_exposition(with_help, true).expect_err("interleaved families");
    assert!(e.contains("fdm_host_verdict"), "{e}");
    match reference_parse(with_help, true) {
        None => println!("skipping the reference parser: not installed"),
        Some(r) => assert!(r.is_err_and(|e| e.contains("Clashing name")), "read"),
    }
    if let Some(Ok(read)) = reference_parse(old, false) {
        assert!(
            read.len() > 1,
            "the old shape is split into families: {read:?}"
        );
    }
    for bad in [
        "# HELP a x.\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a x.\n# TYPE a counter\na_total 1\n",
        "# HELP a_seconds x.\n# TYPE a_seconds gauge\na_seconds 1\n# EOF\n",
        "# HELP a x.\n# TYPE a gauge\na{1b=\"1\"} 1\n",
        "# HELP a x.\n# TYPE a gauge\na{b=\"1\",b=\"2\"} 1\n",
        "# HELP a x.\n# TYPE a gauge\na 1\n# HELP b x.\n# TYPE b gauge\nb 1\n# HELP a y.\n",
        "# TYPE a gauge\n# HELP a x.\na 1\n# EOF\n# HELP b x.\n",
        "# HELP h x.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
    ] {
        let om = bad.ends_with("# EOF\n");
        assert!(check_exposition(bad, om).is_err(), "accepted:\n{bad}");
    }
    let good = "# HELP a x.\n# TYPE a counter\na_total 1\n# EOF\n";
    assert!(check_exposition(good, true).is_ok());
}

#[test]
fn both_endpoints_parse_strictly_and_count_placements_apart_from_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    std::fs::write(root.join("token"), TOKEN).unwrap();
    std::fs::write(root.join("secret"), "5c".repeat(32)).unwrap();
    let ds = root.join("ds1");
    std::fs::create_dir(&ds).unwrap();
    let host_dir = root.join("host1");
    std::fs::create_dir_all(host_dir.join("state")).unwrap();
    let (udp, metrics_port) = (free_udp_port(), free_tcp_port());

    // The shim, with one host, one datastore and one protected VM.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fdm-shim"))
        .args(["--listen", "127.0.0.1:0", "--cluster-id", "4"])
        .arg("--db")
        .arg(root.join("shim.db"))
        .arg("--token-file")
        .arg(root.join("token"))
        .args(["--poll-interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fdm-shim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let _shim = Killed(child);
    let shim = line
        .trim()
        .strip_prefix("fdm-shim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let write = |method: &str, path: &str, body: Value| {
        let r = ureq::request(method, &format!("{shim}{path}"))
            .set("Authorization", &bearer())
            .send_string(&body.to_string());
        assert!(r.is_ok(), "{method} {path}: {r:?}");
    };
    write(
        "POST",
        "/v1/hosts",
        json!({"id": 1, "name": "host1", "address": format!("127.0.0.1:{udp}"), "cpu_mhz": 8000, "memory_mb": 8192}),
    );
    write(
        "POST",
        "/v1/datastores",
        json!({"id": 1, "name": "ds1", "mounts": [{"host": 1, "path": ds.display().to_string()}]}),
    );
    write(
        "POST",
        "/v1/vms",
        json!({"id": 1, "name": "vm1", "home": 1, "definition": "exec sleep 100000", "cpu_mhz": 500, "memory_mb": 512}),
    );

    // The agent, with its metrics endpoint.
    let toml = format!(
        "host_id = 1\ncluster_id = 4\nsecret_file = \"{}\"\nbind = \"127.0.0.1:{udp}\"\nstate_dir = \"{}\"\n\
         status_socket = \"{}\"\nprobe = \"none\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
         [driver]\nkind = \"process\"\n[[datastores]]\nid = 1\npath = \"{}\"\n",
        root.join("secret").display(),
        host_dir.join("state").display(),
        host_dir.join("agent.sock").display(),
        ds.display(),
    );
    std::fs::write(host_dir.join("agent.toml"), toml).unwrap();
    let log = std::fs::File::create(host_dir.join("agent.log")).unwrap();
    let _agent = Killed(
        Command::new(agent_exe())
            .args(["run", "--config"])
            .arg(host_dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fdm-agent"),
    );
    let agent = format!("http://127.0.0.1:{metrics_port}");
    let agent_log = || std::fs::read_to_string(host_dir.join("agent.log")).unwrap_or_default();
    let vm_pid = |dir: &Path| running_vm_pids(&dir.join("state/vms")).first().map(|v| v.1);

    // The first start of the VM is a placement, not a restart.
    let first = wait_until(Duration::from_secs(40), || vm_pid(&host_dir))
        .unwrap_or_else(|| panic!("the VM was not placed; agent log:\n{}", agent_log()));
    let scrape = |url: &str, accept: Option<&str>, token: bool| {
        let mut h: Vec<(&str, String)> = Vec::new();
        if let Some(a) = accept {
            h.push(("Accept", a.to_string()));
        }
        if token {
            h.push(("Authorization", bearer()));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http("GET", &format!("{url}/metrics"), &h)
    };
    let placed = wait_until(Duration::from_secs(15), || {
        let (_, _, t) = scrape(&agent, None, false);
        (value(&t, "fdm_placement_outcomes_total{outcome=\"succeeded\"}") == Some(1.0)).then_some(t)
    })
    .unwrap_or_else(|| panic!("no placement counted:\n{}", scrape(&agent, None, false).2));
    assert_eq!(value(&placed, "fdm_placements_issued_total"), Some(1.0));
    assert_eq!(value(&placed, "fdm_restarts_issued_total"), Some(0.0));

    // A crash: bringing the VM back is a restart.
    // SAFETY: the VM's process group, started by the agent for this test.
    unsafe {
        libc::kill(-first, libc::SIGKILL);
    }
    let restarted = wait_until(Duration::from_secs(40), || {
        let (_, _, t) = scrape(&agent, None, false);
        (value(&t, "fdm_restart_outcomes_total{outcome=\"succeeded\"}") == Some(1.0)).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "no restart counted:\n{}\nagent log:\n{}",
            scrape(&agent, None, false).2,
            agent_log()
        )
    });
    assert_eq!(value(&restarted, "fdm_restarts_issued_total"), Some(1.0));
    assert_eq!(value(&restarted, "fdm_placements_issued_total"), Some(1.0));
    // Each timed from the decision to the VM running.
    for kind in ["restart", "placement"] {
        let count = format!("fdm_restart_duration_seconds_count{{kind=\"{kind}\"}}");
        assert_eq!(value(&restarted, &count), Some(1.0), "{restarted}");
    }

    // The shim has read the master's report: its events are stored.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, _, t) = scrape(&shim, None, true);
            value(&t, "fdm_shim_events_stored")
                .is_some_and(|n| n > 0.0)
                .then_some(())
        })
        .is_some(),
        "no events reached the shim:\n{}",
        scrape(&shim, None, true).2
    );

    // Both endpoints, both formats, through the strict checks.
    let (code, kind, agent_text) = scrape(&agent, None, false);
    assert_eq!(code, 200);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let agent_families = strictly_parsed("agent (Prometheus text)", &agent_text, false);
    promtool_lint("the agent", &agent_text);
    let (code, kind, agent_om) = scrape(&agent, Some(OPENMETRICS), false);
    assert_eq!(code, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let agent_om_families = strictly_parsed("agent (OpenMetrics)", &agent_om, true);
    let (code, _, shim_text) = scrape(&shim, None, true);
    assert_eq!(code, 200);
    let shim_families = strictly_parsed("shim (Prometheus text)", &shim_text, false);
    promtool_lint("the shim", &shim_text);
    let (code, kind, shim_om) = scrape(&shim, Some(OPENMETRICS), true);
    assert_eq!(code, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    strictly_parsed("shim (OpenMetrics)", &shim_om, true);

    // What the issue asked for is there, named by the conventions.
    for (family, kind) in [
        ("fdm_build", "info"),
        ("fdm_role", "gauge"),
        ("fdm_host_verdict", "gauge"),
        ("fdm_heartbeat_age_seconds", "gauge"),
        ("fdm_datastore_call_duration_seconds", "histogram"),
        ("fdm_datastore_up", "gauge"),
        ("fdm_host_failure_detection_seconds", "histogram"),
        ("fdm_restart_duration_seconds", "histogram"),
        ("fdm_restarts_issued", "counter"),
        ("fdm_placements_issued", "counter"),
        ("fdm_restart_outcomes", "counter"),
        ("fdm_placement_outcomes", "counter"),
        ("fdm_vms_protected", "gauge"),
        ("fdm_vms_failed", "gauge"),
        ("fdm_ha_paused", "gauge"),
        ("fdm_config_generation", "gauge"),
        ("fdm_config_rejected", "counter"),
    ] {
        assert_eq!(
            agent_om_families.get(family).map(String::as_str),
            Some(kind),
            "agent family {family}"
        );
    }
    assert!(agent_families.contains_key("fdm_restarts_issued_total"));
    let hb = "fdm_datastore_call_duration_seconds_count{datastore=\"1\",op=\"write_heartbeat\"}";
    assert!(
        value(&agent_text, hb).is_some_and(|n| n > 0.0),
        "{agent_text}"
    );
    assert_eq!(
        value(&agent_text, "fdm_datastore_up{datastore=\"1\"}"),
        Some(1.0)
    );
    assert_eq!(value(&agent_text, "fdm_vms_protected"), Some(1.0));
    assert_eq!(value(&agent_text, "fdm_role{role=\"master\"}"), Some(1.0));
    assert!(
        agent_text.contains("fdm_build_info{version=\""),
        "{agent_text}"
    );
    for family in [
        "fdm_shim_build_info",
        "fdm_shim_hosts",
        "fdm_shim_vms",
        "fdm_shim_events_stored",
        "fdm_shim_http_requests_total",
        "fdm_shim_datastore_write_ok",
        "fdm_shim_datastore_config_generation",
        "fdm_shim_datastore_write_failures_total",
        "fdm_shim_report_age_seconds",
    ] {
        assert!(shim_families.contains_key(family), "shim family {family}");
    }
    // The docs list exactly what the endpoints export (some series need an event first).
    let documented = documented_metrics();
    let exported: BTreeSet<String> = agent_families
        .keys()
        .chain(shim_families.keys())
        .cloned()
        .collect();
    for family in &exported {
        assert!(
            documented.contains(family),
            "{family} is exported but docs/operations.md or docs/shim.md does not list it"
        );
    }
    // A verdict change and a failed datastore call do not happen in this cluster of one.
    let conditional = [
        "fdm_host_verdict_transitions_total",
        "fdm_datastore_ops_failed_total",
    ];
    for name in &documented {
        assert!(
            exported.contains(name) || conditional.contains(&name.as_str()),
            "{name} is documented but neither endpoint exports it"
        );
    }
    assert_eq!(
        value(&shim_text, "fdm_shim_vms{protected=\"true\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&shim_text, "fdm_shim_datastore_write_ok{datastore=\"1\"}"),
        Some(1.0)
    );
    let requests = "fdm_shim_http_requests_total{method=\"POST\",route=\"/v1/vms\",status=\"201\"}";
    assert!(value(&shim_text, requests).is_some(), "{shim_text}");

    // HA paused through the shim reaches the agent's metrics.
    write("PUT", "/v1/config/ha", json!({"paused": true}));
    assert!(
        wait_until(Duration::from_secs(20), || {
            (value(&scrape(&agent, None, false).2, "fdm_ha_paused") == Some(1.0)).then_some(())
        })
        .is_some(),
        "the agent never showed HA paused"
    );
    assert_eq!(
        value(&scrape(&shim, None, true).2, "fdm_shim_ha_paused"),
        Some(1.0)
    );

    // The HTTP rules.
    let status = |method: &str, url: String, token: bool| {
        let auth = bearer();
        let h: Vec<(&str, &str)> = if token {
            vec![("Authorization", auth.as_str())]
        } else {
            Vec::new()
        };
        http(method, &url, &h).0
    };
    assert_eq!(status("GET", format!("{agent}/healthz"), false), 200);
    assert_eq!(status("GET", format!("{agent}/nothing"), false), 404);
    assert_eq!(status("GET", format!("{agent}/"), false), 404);
    assert_eq!(status("POST", format!("{agent}/metrics"), false), 405);
    assert_eq!(status("DELETE", format!("{agent}/healthz"), false), 405);
    assert_eq!(status("GET", format!("{shim}/healthz"), false), 200);
    let (code, _, ready) = http("GET", &format!("{shim}/readyz"), &[]);
    assert_eq!(code, 200, "{ready}");
    assert_eq!(
        serde_json::from_str::<Value>(&ready)
            .ok()
            .map(|v| v["ready"].clone()),
        Some(Value::Bool(true)),
        "{ready}"
    );
    assert_eq!(status("GET", format!("{shim}/metrics"), false), 401);
    assert_eq!(status("GET", format!("{shim}/nothing"), true), 404);
    assert_eq!(status("GET", format!("{shim}/nothing"), false), 404);
    assert_eq!(status("POST", format!("{shim}/metrics"), true), 405);
    assert_eq!(status("POST", format!("{shim}/healthz"), false), 405);
    assert_eq!(status("PUT", format!("{shim}/readyz"), false), 405);
}

// ---- dist/monitoring and the docs ----------------------------------------------------------

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metrics the docs' tables list: the first cell of each row that names an `fdm_` metric.
fn documented_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for doc in ["docs/operations.md", "docs/shim.md"] {
        for line in repo_file(doc).lines() {
            if let Some(rest) = line.strip_prefix("| `fdm_")
                && let Some((name, _)) = rest.split_once('`')
            {
                names.insert(format!("fdm_{name}"));
            }
        }
    }
    names
}

/// Every `fdm_...` word in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("fdm_"))
        .map(str::to_string)
        .collect()
}

/// `name` is a documented metric, or a histogram's `_bucket`, `_sum` or `_count` series of one.
fn is_documented(name: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|f| documented.contains(f)))
}

/// The dashboard's PromQL by panel title, Grafana's variables set to what a recording rule holds.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value =
        serde_json::from_str(&repo_file("dist/monitoring/grafana-dashboard.json")).expect("JSON");
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {id} has a place"
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("a title").to_string();
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: the data source picked on import"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{title}: an empty query");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_documented() {
    let documented = documented_metrics();
    assert!(documented.len() > 40, "the metric tables: {documented:?}");
    let rules = repo_file("dist/monitoring/fdm-alerts.yml");
    let queries: String = dashboard_queries()
        .into_iter()
        .map(|(_, q)| q + "\n")
        .collect();
    for (what, text) in [("fdm-alerts.yml", &rules), ("the dashboard", &queries)] {
        let used = metric_names_in(text);
        assert!(!used.is_empty(), "{what} names no metric");
        for name in used {
            assert!(
                is_documented(&name, &documented),
                "{what} uses {name}, which docs/operations.md and docs/shim.md do not list"
            );
        }
    }
    // The alerts the issue asked for are all there.
    for alert in [
        "FdmHostDead",
        "FdmVmFailed",
        "FdmDatastoreLost",
        "FdmHaPaused",
        "FdmAgentConfigRejected",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
}

/// `promtool ARGS` in `dir`: whether it succeeded and what it said; `None` when it is not
/// installed.
fn promtool(args: &[&str], dir: &Path) -> Option<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn the_alert_rules_the_scrape_jobs_and_the_dashboard_queries_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/monitoring");
    let Some((ok, out)) = promtool(&["check", "rules", "fdm-alerts.yml"], &dir) else {
        println!(
            "skipping promtool on dist/monitoring: promtool is not installed (Debian's `prometheus`; scripts/install-test-deps.sh installs it)"
        );
        return;
    };
    assert!(ok, "promtool check rules: {out}");
    // Each alert fires for the outage it is about, and not before its `for`.
    let (ok, out) = promtool(&["test", "rules", "fdm-alerts.test.yml"], &dir).expect("promtool");
    assert!(ok, "promtool test rules: {out}");
    let (ok, out) = promtool(
        &["check", "config", "--syntax-only", "prometheus-scrape.yml"],
        &dir,
    )
    .expect("promtool");
    assert!(ok, "promtool check config: {out}");
    // The dashboard's queries, parsed by Prometheus as recording rules.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().into_iter().enumerate() {
        let expr = serde_json::to_string(&expr).expect("a string");
        let title = serde_json::to_string(&title).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n        labels: {{panel: {title}}}\n"
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), &rules).expect("write");
    let (ok, out) = promtool(&["check", "rules", "dashboard.yml"], tmp.path()).expect("promtool");
    assert!(ok, "the dashboard's queries: {out}\n{rules}");
}

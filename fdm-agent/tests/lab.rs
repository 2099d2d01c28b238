//! `docs/lab.md`, the three-host lab on one machine, is run by `scripts/lab.sh`; this test keeps the
//! two in step and runs the script.
//!
//! - `every_command_of_the_guide_is_in_the_script` (no root): every line of every ```sh block of
//!   the guide is a line of the script (or that line with ` || fail ...` appended), in the block's
//!   order; the script adds only waits, checks and its clean-up trap around them (its header says
//!   so).
//! - `the_lab_runs` (root, network namespaces, `nft`, `ping`, `jq`; skipped with the reason
//!   otherwise): the script with this build's binaries (`fdm-agent` of this test, `fdm-shim` and
//!   `fdmctl` built into the same directory). It prints MEASURED lines.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script exits with this when it cannot run here (not root, no `ip netns`, a tool missing).
const SKIPPED: i32 = 77;
/// The script takes about 75 s; its every wait is bounded. This only guards against a hang.
const LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The lines of each ```sh block, trimmed, with their line numbers in the guide.
fn command_blocks(guide: &str) -> Vec<Vec<(usize, String)>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(usize, String)>> = None;
    for (i, line) in guide.lines().enumerate() {
        let t = line.trim();
        match &mut current {
            None if t == "```sh" => current = Some(Vec::new()),
            None => {}
            Some(_) if t == "```" => blocks.push(current.take().expect("open block")),
            Some(b) if !t.is_empty() => b.push((i + 1, t.to_string())),
            Some(_) => {}
        }
    }
    assert!(
        current.is_none(),
        "docs/lab.md: a ```sh block is not closed"
    );
    blocks
}

/// Whether the script line `script` runs the guide's line `guide`: the same line, or the same with
/// the script's check of its outcome appended (` || fail ...`).
fn runs(script: &str, guide: &str) -> bool {
    script == guide
        || script
            .strip_prefix(guide)
            .is_some_and(|rest| rest.starts_with(" || "))
}

#[test]
fn every_command_of_the_guide_is_in_the_script() {
    let guide = std::fs::read_to_string(repo().join("docs/lab.md")).expect("docs/lab.md");
    let script = std::fs::read_to_string(repo().join("scripts/lab.sh")).expect("scripts/lab.sh");
    let script: Vec<&str> = script.lines().map(str::trim).collect();
    let blocks = command_blocks(&guide);
    assert!(
        blocks.len() >= 10,
        "docs/lab.md has only {} ```sh blocks",
        blocks.len()
    );
    let mut missing = Vec::new();
    for block in &blocks {
        // Each line after the previous one's place in the script.
        let mut from = 0;
        for (n, line) in block {
            match script[from..].iter().position(|l| runs(l, line)) {
                Some(i) => from += i + 1,
                None if script.iter().any(|l| runs(l, line)) => missing.push(format!(
                    "docs/lab.md:{n}: `{line}` is in scripts/lab.sh, but not after the block's previous line"
                )),
                None => missing.push(format!(
                    "docs/lab.md:{n}: `{line}` is not a line of scripts/lab.sh"
                )),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the guide and the script differ (keep them in step, see the header of scripts/lab.sh):\n{}",
        missing.join("\n")
    );
}

/// `fdm-shim` and `fdmctl` next to this test's `fdm-agent`, built by the same profile into the same
/// target directory (a no-op when `cargo test --workspace` built them already).
fn shim_binaries(bin_dir: &Path) {
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let target_dir = bin_dir.parent().expect("target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "vcenter-shim",
            "--bins",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "building fdm-shim and fdmctl failed");
    for exe in ["fdm-shim", "fdmctl"] {
        assert!(
            bin_dir.join(exe).exists(),
            "{exe} missing in {}",
            bin_dir.display()
        );
    }
}

#[test]
fn the_lab_runs() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_fdm-agent"));
    let bin_dir = agent.parent().expect("binary directory").to_path_buf();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        shim_binaries(&bin_dir);
    }
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(repo().join("scripts/lab.sh"))
        .env("FDM_BIN", &bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash scripts/lab.sh");
    let stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .inspect(|l| eprintln!("{l}"))
            .collect::<Vec<_>>()
    });
    // Through the test harness's capture: shown with --nocapture or when the test fails.
    let stdout = child.stdout.take().expect("stdout");
    let output = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for scripts/lab.sh") {
            break status;
        }
        if started.elapsed() > LIMIT && !timed_out {
            // SIGTERM: the script's trap cleans up what it created. Not reaped yet, so the pid
            // is still the script's.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            timed_out = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    output.join().expect("stdout reader");
    let errors = errors.join().expect("stderr reader");
    if status.code() == Some(SKIPPED) {
        eprintln!("the_lab_runs: skipped (scripts/lab.sh says why above)");
        return;
    }
    assert!(
        !timed_out,
        "scripts/lab.sh still ran after {LIMIT:?} and was stopped"
    );
    assert!(
        status.success(),
        "scripts/lab.sh failed ({status}) after {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        errors.join("\n")
    );
}

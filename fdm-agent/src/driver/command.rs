//! Running a hypervisor CLI with a deadline.
//!
//! A hung libvirtd (or a wedged QEMU monitor behind it) makes `virsh` wait forever; the driver's
//! calls run on the runtime's blocking threads, and a call that never returns would leave the core
//! waiting for a result that never comes (a power-on stuck "starting", an inventory never taken).
//! So every call is bounded: the child is killed when its deadline passes and the caller gets a
//! [`DriverError::Timeout`] naming the command. Plain std (spawn, `try_wait` polling): no crate in
//! the workspace does this, and the polling costs nothing next to a `virsh` round trip.

use super::DriverError;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `cmd` to completion or until `deadline` passes (then kill it). `what` names the command in
/// errors (`virsh start web-1`). A non-zero exit is not an error here: the caller reads the status.
pub fn output_within(
    mut cmd: Command,
    what: &str,
    deadline: Duration,
) -> Result<Output, DriverError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a kill also reaches what it spawned (virsh runs ssh for
        // remote URIs), which would otherwise keep the pipes open.
        .process_group(0)
        .spawn()
        .map_err(|e| DriverError::Unavailable(format!("{what}: cannot run: {e}")))?;
    // Drain both pipes while waiting: a child that fills a pipe buffer would otherwise block and
    // be taken for a hung one.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_within(&mut child, deadline);
    let status = match status {
        Ok(Some(s)) => s,
        Ok(None) => {
            kill_group(child);
            return Err(DriverError::Timeout {
                command: what.to_string(),
                after: deadline,
            });
        }
        Err(e) => {
            kill_group(child);
            return Err(DriverError::Failed(format!("{what}: waiting: {e}")));
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// SIGKILL to the child's process group, reaped on a thread of its own: a child stuck in the
/// kernel (uninterruptible IO) would otherwise hold the caller past its deadline.
fn kill_group(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling the process group this module created for the child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// The exit status, or None when `deadline` passed first.
fn wait_within(
    child: &mut Child,
    deadline: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let end = Instant::now() + deadline;
    // Short sleeps first: most virsh calls answer in 20 to 50 ms.
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(None);
        }
        std::thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_hung_command_is_killed_at_its_deadline() {
        let t0 = Instant::now();
        let r = output_within(sh("sleep 30"), "sleep 30", Duration::from_millis(300));
        let took = t0.elapsed();
        match r {
            Err(DriverError::Timeout { command, after }) => {
                assert_eq!(command, "sleep 30");
                assert_eq!(after, Duration::from_millis(300));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(
            took >= Duration::from_millis(300),
            "returned early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "not killed in time: {took:?}"
        );
    }

    #[test]
    fn the_timeout_message_names_the_command_and_the_deadline() {
        let e = DriverError::Timeout {
            command: "virsh start web-1".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(
            e.to_string(),
            "virsh start web-1: no answer within 60.0 s (killed)"
        );
    }

    #[test]
    fn a_quick_command_returns_its_output_and_status() {
        let o = output_within(
            sh("echo out; echo err >&2; exit 3"),
            "t",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    }

    #[test]
    fn a_large_output_is_not_taken_for_a_hang() {
        // 1 MB: far beyond a pipe buffer (64 KiB).
        let o = output_within(
            sh("head -c 1048576 /dev/zero"),
            "head",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(o.status.success());
        assert_eq!(o.stdout.len(), 1 << 20);
    }

    #[test]
    fn a_missing_program_is_unavailable() {
        let r = output_within(
            Command::new("/nonexistent/fdm-no-such-virsh"),
            "virsh",
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(DriverError::Unavailable(_))), "{r:?}");
    }
}

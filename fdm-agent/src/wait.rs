//! Polling with a limit, for callers that watch agents from outside and may block: the demo, the
//! daemon and multi-host tests, the shim's tests. The agent itself never waits like this.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

/// Calls `f` every 50 ms until it returns `Some`, and returns that; `None` if it still returns `None`
/// when called after `limit` has passed.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

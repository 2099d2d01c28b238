//! What the shim's integration tests share: an `fdm-shim` process on a free loopback port, asked
//! with its token, killed when dropped.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Shim {
    child: Child,
    pub url: String,
    token: String,
}

impl Shim {
    /// Start `fdm-shim` with its database and token file (`token`, which the caller wrote with
    /// `token`) in `root`, polling the datastores every 200 ms.
    pub fn start(root: &Path, cluster_id: u32, token: &str) -> Shim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fdm-shim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cluster-id",
                &cluster_id.to_string(),
            ])
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
        let url = line
            .trim()
            .strip_prefix("fdm-shim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Shim {
            child,
            url,
            token: token.to_string(),
        }
    }

    /// One API call with the token: the status and the body as JSON (`Null` when it is not).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = ureq::request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        let r = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let code = r.status();
        let text = r.into_string().unwrap_or_default();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

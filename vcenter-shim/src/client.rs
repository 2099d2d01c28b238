//! The client side of the HTTP API, which `fdmctl` is built on. Every route's answer is read into the
//! type the server builds it from (`model`, `service`, `store`, `admission`, `error`), so the client
//! and the server share one definition of each shape, and an answer that does not fit is an error
//! naming what was expected and where it differs.

use crate::admission::AdmissionReport;
use crate::error::ErrorBody;
use crate::model::{
    DatastoreSpec, HaView, HostSpec, MaintenanceAction, MaintenanceRequest, VmSpec, WriteAnswer,
};
use crate::service::{ClusterState, WriteOutcome};
use crate::store::StoredEvent;
use anyhow::{Result, anyhow, bail};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// `text` as `T`. `what` names what was expected in the error ("the cluster state"), which also gives
/// the path of the first value that does not fit, e.g. `hosts[1].maintenance`.
pub fn parse_answer<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow!("the answer is not {what}: {inner}")
        } else {
            anyhow!("the answer is not {what}: at `{path}`: {inner}")
        }
    })?;
    de.end()
        .map_err(|e| anyhow!("the answer is not {what}: {e}"))?;
    Ok(value)
}

/// A connection to one `fdm-shim`: its base URL and the bearer token, if any.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// One request; a 2xx answer read as `T` (`what` names it for the error), any other status as the
    /// error it carries.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        what: &str,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&serde_json::to_string(b)?),
            None => req.call(),
        };
        match resp {
            Ok(r) => {
                let text = r
                    .into_string()
                    .map_err(|e| anyhow!("{method} {path}: reading the answer: {e}"))?;
                parse_answer(&text, what).map_err(|e| anyhow!("{method} {path}: {e}"))
            }
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                // Not every error is the shim's own (a proxy, a route that does not exist): those
                // are shown as they came.
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(ErrorBody { error, .. }) => match error.field {
                        Some(f) => bail!(
                            "HTTP {code} ({}): field `{f}`: {}",
                            error.code,
                            error.message
                        ),
                        None => bail!("HTTP {code} ({}): {}", error.code, error.message),
                    },
                    Err(_) => bail!("HTTP {code}: {}", text.trim()),
                }
            }
            Err(e) => Err(anyhow!("cannot reach {url}: {e}")),
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        self.call("GET", path, None::<&()>, what)
    }

    pub fn state(&self) -> Result<ClusterState> {
        self.get("/v1/state", "the cluster state")
    }

    /// One page of the events with an id above `since`, oldest first.
    pub fn events_since(&self, since: i64) -> Result<Vec<StoredEvent>> {
        self.get(&format!("/v1/events?since={since}"), "a list of events")
    }

    pub fn admission(&self) -> Result<AdmissionReport> {
        self.get("/v1/admission", "the admission-control verdict")
    }

    pub fn ha(&self) -> Result<HaView> {
        self.get("/v1/config/ha", "the HA settings")
    }

    pub fn hosts(&self) -> Result<Vec<HostSpec>> {
        self.get("/v1/hosts", "a list of hosts")
    }

    pub fn datastores(&self) -> Result<Vec<DatastoreSpec>> {
        self.get("/v1/datastores", "a list of datastores")
    }

    pub fn vms(&self) -> Result<Vec<VmSpec>> {
        self.get("/v1/vms", "a list of VMs")
    }

    pub fn vm(&self, id: VmId) -> Result<VmSpec> {
        self.get(&format!("/v1/vms/{}", id.0), "a VM")
    }

    fn write(&self, method: &str, path: &str, body: &impl Serialize) -> Result<WriteAnswer> {
        self.call(
            method,
            path,
            Some(body),
            "a write answer with the stored object",
        )
    }

    fn remove(&self, path: &str) -> Result<WriteOutcome> {
        self.call("DELETE", path, None::<&()>, "a write answer")
    }

    pub fn add_host(&self, host: &HostSpec) -> Result<WriteAnswer> {
        self.write("POST", "/v1/hosts", host)
    }

    pub fn remove_host(&self, id: HostId) -> Result<WriteOutcome> {
        self.remove(&format!("/v1/hosts/{}", id.0))
    }

    pub fn maintenance(&self, id: HostId, action: MaintenanceAction) -> Result<WriteAnswer> {
        let path = format!("/v1/hosts/{}/maintenance", id.0);
        self.write("POST", &path, &MaintenanceRequest { action })
    }

    pub fn add_datastore(&self, datastore: &DatastoreSpec) -> Result<WriteAnswer> {
        self.write("POST", "/v1/datastores", datastore)
    }

    pub fn remove_datastore(&self, id: DatastoreId) -> Result<WriteOutcome> {
        self.remove(&format!("/v1/datastores/{}", id.0))
    }

    /// Clear a VM failed at its restart limit (`POST /v1/vms/{id}/clear`).
    pub fn clear_vm(&self, id: VmId) -> Result<WriteAnswer> {
        let path = format!("/v1/vms/{}/clear", id.0);
        self.write("POST", &path, &serde_json::Map::new())
    }

    /// Ask HA to stop a VM and keep it stopped (`POST /v1/vms/{id}/stop`).
    pub fn stop_vm(&self, id: VmId) -> Result<WriteAnswer> {
        let path = format!("/v1/vms/{}/stop", id.0);
        self.write("POST", &path, &serde_json::Map::new())
    }

    /// Ask HA to start a VM (`POST /v1/vms/{id}/start`).
    pub fn start_vm(&self, id: VmId) -> Result<WriteAnswer> {
        let path = format!("/v1/vms/{}/start", id.0);
        self.write("POST", &path, &serde_json::Map::new())
    }

    pub fn add_vm(&self, vm: &VmSpec) -> Result<WriteAnswer> {
        self.write("POST", "/v1/vms", vm)
    }

    /// `PUT /v1/vms/{id}`: `fields` are merged into the stored VM, so they hold only what changes.
    pub fn update_vm(&self, id: VmId, fields: &impl Serialize) -> Result<WriteAnswer> {
        self.write("PUT", &format!("/v1/vms/{}", id.0), fields)
    }

    pub fn remove_vm(&self, id: VmId) -> Result<WriteOutcome> {
        self.remove(&format!("/v1/vms/{}", id.0))
    }

    /// `PUT /v1/config/ha`: `fields` are merged into the `HaView` by name.
    pub fn update_ha(&self, fields: &impl Serialize) -> Result<WriteAnswer> {
        self.write("PUT", "/v1/config/ha", fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_of_the_wrong_shape_names_what_was_expected_and_where() {
        let e = parse_answer::<Vec<HostSpec>>(r#"{"error": 1}"#, "a list of hosts").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "the answer is not a list of hosts: invalid type: map, expected a sequence"
            ),
            "{e}"
        );
        let hosts = r#"[{"id": 1, "name": "esx1", "address": "10.0.0.1:7400"},
                        {"id": 2, "name": "esx2", "address": "10.0.0.2:7400", "maintenance": "no"}]"#;
        let e = parse_answer::<Vec<HostSpec>>(hosts, "a list of hosts").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "the answer is not a list of hosts: at `[1].maintenance`: invalid type"
            ),
            "{text}"
        );
        let e = parse_answer::<Vec<HostSpec>>("[] []", "a list of hosts").unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
        let e = parse_answer::<ClusterState>("<html>", "the cluster state").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the answer is not the cluster state: expected value"),
            "{e}"
        );
    }
}

//! The shim's own metrics and health endpoints (`docs/shim.md`), through the Prometheus project's
//! `prometheus-client`:
//!
//! - `GET /metrics`: inventory counts, the config generation and where it has been written, events
//!   stored, datastore IO failures, the age of the master's report, API requests by route and
//!   status. Behind the token like every other read of the cluster's state (`api::auth`).
//! - `GET /healthz`: the process is up and serving HTTP. No token: a probe has none.
//! - `GET /readyz`: the shim can do its work: its database answers. No token either.
//!
//! What the shim holds (inventory, datastore status, the event count) is read at scrape time, so
//! a scrape shows one moment and a removed host or datastore leaves no stale series; only the
//! request counter is kept as it happens.

use crate::service::Shim;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The `Content-Type` of an OpenMetrics answer.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest a scrape or a readiness check waits for the database: one held by a slow write (a disk
/// that hangs) makes the shim unready rather than a probe that never answers.
const DB_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    /// The route's pattern (`/v1/vms/{id}`), never the raw path: the label's values stay few
    /// whatever clients send. `unmatched` for a path no route serves.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The shim's registry and the counter the request middleware feeds.
#[derive(Debug)]
pub struct ShimMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

impl ShimMetrics {
    pub fn new(shim: Arc<Shim>) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "fdm_shim_build",
            "The shim's build: its version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "fdm_shim_http_requests",
            "HTTP requests the shim answered, by method, route and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(StateCollector { shim }));
        Self { registry, requests }
    }

    /// The exposition: OpenMetrics (ends in `# EOF`) or the Prometheus text format. Reads the
    /// database: call it off the async threads.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

/// Encodes the shim's state at scrape time.
#[derive(Debug)]
struct StateCollector {
    shim: Arc<Shim>,
}

fn count<T>(it: impl Iterator<Item = T>) -> u64 {
    u64::try_from(it.count()).unwrap_or(u64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inv = self.shim.inventory();
        let state = self.shim.state();
        let e = &mut enc;
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            ConstGauge::new(v).encode(e.encode_descriptor(
                name,
                &format!("{help}."),
                None,
                MetricType::Gauge,
            )?)
        };
        gauge(
            e,
            "fdm_shim_hosts",
            "Hosts in the inventory",
            count(inv.hosts.values()),
        )?;
        gauge(
            e,
            "fdm_shim_hosts_in_maintenance",
            "Hosts in the inventory that are in maintenance",
            count(inv.hosts.values().filter(|h| h.maintenance)),
        )?;
        gauge(
            e,
            "fdm_shim_datastores",
            "Datastores in the inventory",
            count(inv.datastores.values()),
        )?;
        {
            let mut f = e.encode_descriptor(
                "fdm_shim_vms",
                "VMs in the inventory, protected by HA or not.",
                None,
                MetricType::Gauge,
            )?;
            for protected in [true, false] {
                let n = count(inv.vms.values().filter(|v| v.protected == protected));
                ConstGauge::new(n).encode(f.encode_family(&[("protected", protected)])?)?;
            }
        }
        gauge(
            e,
            "fdm_shim_config_generation",
            "Generation of the configuration the shim holds (what it publishes to the datastores)",
            inv.generation,
        )?;
        gauge(
            e,
            "fdm_shim_ha_paused",
            "1 while HA is paused in the shim's configuration",
            u64::from(inv.ha.paused),
        )?;
        // The database not answering is shown by the family's absence (and by /readyz).
        if let Ok(n) = self.shim.events_stored() {
            gauge(
                e,
                "fdm_shim_events_stored",
                "Events the shim's database holds",
                n,
            )?;
        }
        if let Some(r) = &state.report {
            ConstGauge::new(Duration::from_millis(r.age_ms).as_secs_f64()).encode(
                e.encode_descriptor(
                    "fdm_shim_report_age",
                    "Seconds since the shim last read a new report of the master from a datastore.",
                    Some(&Unit::Seconds),
                    MetricType::Gauge,
                )?,
            )?;
        }
        if !state.datastores.is_empty() {
            let ds = &state.datastores;
            let mut f = e.encode_descriptor(
                "fdm_shim_datastore_config_generation",
                "Highest config generation the shim knows to be on each datastore (0: none yet).",
                None,
                MetricType::Gauge,
            )?;
            for d in ds {
                ConstGauge::new(d.written_generation)
                    .encode(f.encode_family(&[("datastore", d.datastore.0)])?)?;
            }
            let mut f = e.encode_descriptor(
                "fdm_shim_datastore_write_ok",
                "1 when the shim's last config write to the datastore succeeded, 0 when it failed.",
                None,
                MetricType::Gauge,
            )?;
            for d in ds {
                ConstGauge::new(u64::from(d.write_error.is_none()))
                    .encode(f.encode_family(&[("datastore", d.datastore.0)])?)?;
            }
            let mut f = e.encode_descriptor(
                "fdm_shim_datastore_write_failures",
                "Config writes to each datastore that failed since the shim started.",
                None,
                MetricType::Counter,
            )?;
            for d in ds {
                ConstCounter::new(d.write_failures())
                    .encode(f.encode_family(&[("datastore", d.datastore.0)])?)?;
            }
            let mut f = e.encode_descriptor(
                "fdm_shim_datastore_read_failures",
                "Report reads from each datastore that failed since the shim started.",
                None,
                MetricType::Counter,
            )?;
            for d in ds {
                ConstCounter::new(d.read_failures())
                    .encode(f.encode_family(&[("datastore", d.datastore.0)])?)?;
            }
        }
        Ok(())
    }
}

/// Counts every request by method, route pattern and status. Layered over the whole router, so
/// the 401s, 404s and 405s are counted too.
pub async fn count_requests(
    State(metrics): State<Arc<ShimMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_name(req.method());
    let resp = next.run(req).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// The standard methods by name, anything else as `other`: a client must not be able to add
/// label values at will.
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Prometheus asks for OpenMetrics in its `Accept` header; curl does not, and gets the
/// Prometheus text format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// `GET /metrics` (the token is checked by the layer the API puts on this route).
pub fn scrape_routes(metrics: Arc<ShimMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

/// `GET /healthz` and `GET /readyz`, without a token.
pub fn health_routes(shim: Arc<Shim>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shim)
}

async fn scrape(State(m): State<Arc<ShimMetrics>>, headers: HeaderMap) -> Response {
    let open = wants_openmetrics(&headers);
    let task = tokio::task::spawn_blocking(move || m.encode(open));
    match tokio::time::timeout(DB_WAIT, task).await {
        Ok(Ok(Ok(body))) => {
            let kind = if open {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            (
                [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
                body,
            )
                .into_response()
        }
        Ok(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer in time\n",
        )
            .into_response(),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Ready when the database answers a query in time: without it the shim can neither take a
/// write nor serve events. Datastores are not part of it: with one unwritable the API still works
/// (writes are stored and published where they can be, and retried), and an orchestrator that
/// took the shim out of service then would only hide the inventory from the operator who must fix
/// it. Their state is in `/metrics` (`fdm_shim_datastore_write_ok`) and `/v1/state`.
async fn readyz(State(shim): State<Arc<Shim>>) -> Response {
    let task = tokio::task::spawn_blocking(move || shim.events_stored());
    let (ready, database) = match tokio::time::timeout(DB_WAIT, task).await {
        Ok(Ok(Ok(_))) => (true, "ok".to_string()),
        Ok(Ok(Err(e))) => (false, e.to_string()),
        Ok(Err(e)) => (false, format!("database task failed: {e}")),
        Err(_) => (
            false,
            format!("no answer within {} ms", DB_WAIT.as_millis()),
        ),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"ready": ready, "checks": {"database": database}});
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_one_label_value() {
        assert_eq!(method_name(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").expect("a token");
        assert_eq!(method_name(&odd), "other");
    }

    #[test]
    fn openmetrics_is_served_to_whoever_asks_for_it() {
        let mut h = HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/openmetrics-text;version=1.0.0"),
        );
        assert!(wants_openmetrics(&h));
    }
}

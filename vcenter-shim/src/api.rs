//! The HTTP API of `fdm-shim`: versioned JSON routes under `/v1/` behind a bearer token, and the
//! public status page at `/`; `/metrics` (token) and `/healthz`, `/readyz` (none) are in
//! `metrics`.
//!
//! Bodies are parsed by hand (not with axum's `Json` extractor) so that every malformed request gets
//! the same JSON error shape naming the offending field. `PUT` merges the given top-level fields into
//! the stored object, so `fdmctl vm set 3 --priority High` sends only what changes.

use crate::error::{ErrorBody, ErrorDetail, ShimError};
use crate::metrics::ShimMetrics;
use crate::model::{
    AdmissionMode, DatastoreSpec, HaView, HostSpec, Inventory, MaintenanceAction,
    MaintenanceRequest, Stored, VmSpec, WriteAnswer,
};
use crate::service::{AdmissionGate, Shim, WriteOutcome};
use crate::validate;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use heartbeat_fs::records::{DesiredPower, HaSettings, PowerRequest};
use heartbeat_fs::{DatastoreId, HostId, VmId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

const STATUS_PAGE: &str = include_str!("status.html");
const MAX_EVENTS_PAGE: u32 = 1000;

#[derive(Debug)]
struct Api {
    shim: Arc<Shim>,
    token: String,
}

/// A `ShimError` on its way out as an HTTP response.
#[derive(Debug)]
struct ApiError(ShimError);

impl From<ShimError> for ApiError {
    fn from(e: ShimError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        json_response(status, &self.0.body())
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Our own types always serialise; a failure means a stored value no longer fits its type.
fn to_json(value: &impl Serialize, what: &str) -> Result<Value, ShimError> {
    serde_json::to_value(value).map_err(|e| ShimError::Corrupt {
        what: what.into(),
        message: e.to_string(),
    })
}

fn ok<T: Serialize>(value: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, value))
}

/// A write's answer: the outcome plus the object as now stored.
fn written(status: StatusCode, (stored, outcome): (impl Into<Stored>, WriteOutcome)) -> ApiResult {
    let answer = WriteAnswer {
        outcome,
        stored: stored.into(),
    };
    Ok(json_response(status, &answer))
}

pub fn router(shim: Arc<Shim>, token: String) -> Router {
    let metrics = Arc::new(ShimMetrics::new(shim.clone()));
    let health = crate::metrics::health_routes(shim.clone());
    let api = Arc::new(Api { shim, token });
    // Metrics are a read of the cluster's state like `/v1/state`: the same token rules.
    let scraped = crate::metrics::scrape_routes(metrics.clone())
        .route_layer(middleware::from_fn_with_state(api.clone(), auth));
    let v1 = Router::new()
        .route("/v1/config", get(get_config))
        .route("/v1/config/ha", get(get_ha).put(put_ha))
        .route("/v1/hosts/{id}/maintenance", post(host_maintenance))
        .route("/v1/vms/{id}/clear", post(vm_clear))
        .route("/v1/vms/{id}/stop", post(vm_stop))
        .route("/v1/vms/{id}/start", post(vm_start))
        .route("/v1/state", get(get_state))
        .route("/v1/events", get(get_events))
        .route("/v1/admission", get(get_admission))
        .merge(entity_routes::<HostSpec>())
        .merge(entity_routes::<DatastoreSpec>())
        .merge(entity_routes::<VmSpec>())
        .route_layer(middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/", get(status_page))
        .merge(v1)
        .with_state(api)
        .merge(scraped)
        .merge(health)
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::count_requests,
        ))
}

/// A path no route serves: the API's error shape, naming the path. (A known path with another
/// method is axum's 405 with an `Allow` header.)
async fn no_route(req: Request) -> Response {
    ApiError(ShimError::not_found(
        "path",
        format!("no route {} {}", req.method(), req.uri().path()),
    ))
    .into_response()
}

/// Compare without an early exit so the time taken does not reveal how much of a guess was right.
fn same_token(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Reads may also carry the token in the query (`?token=...`, taken as written, not
/// percent-decoded; the status page sends the header, which works for every token). Writes must
/// carry it in the `Authorization` header: a URL with a token ends up in browser history, proxy
/// logs and shell history, and a link must never be able to change the cluster.
async fn auth(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "));
    let from_query = query_param(req.uri().query(), "token");
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = bearer.is_some_and(|t| same_token(t.trim(), &api.token))
        || (is_read && from_query.is_some_and(|t| same_token(t, &api.token)));
    if allowed {
        return next.run(req).await;
    }
    let message = if !is_read && bearer.is_none() && from_query.is_some() {
        "writes need the token in an Authorization: Bearer header; ?token= is accepted on reads only"
    } else {
        "missing or wrong bearer token"
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: "unauthorized".into(),
            field: None,
            message: message.into(),
        },
        admission: None,
    };
    let mut resp = json_response(StatusCode::UNAUTHORIZED, &body);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The page holds no data (it asks for the token and fetches the JSON itself), so it is served
/// without auth. Its policy allows nothing but itself: no external script, style, image or
/// connection, no framing by another site, no referrer.
async fn status_page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(STATUS_PAGE),
    )
}

// ---- request parsing -------------------------------------------------------------------------

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ShimError> {
    if body.is_empty() {
        return Err(ShimError::invalid(
            "body",
            "empty body; expected a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ShimError::invalid("body", "expected a JSON object")),
        Err(e) => Err(ShimError::invalid("body", format!("not valid JSON: {e}"))),
    }
}

fn check_keys(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ShimError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ShimError::invalid(
            k.as_str(),
            format!("unknown field; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The text between the first pair of backticks: serde names the missing field that way.
fn backticked(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(&msg[start..start + len])
}

/// A request body (or a stored object merged with one) as `T`; an error names the field that does
/// not fit its type, e.g. a negative or too large number.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, ShimError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            backticked(&inner)
                .filter(|_| inner.starts_with("missing field"))
                .unwrap_or("body")
                .to_string()
        } else {
            path
        };
        ShimError::invalid(field, inner)
    })
}

fn parse_id(raw: &str) -> Result<u32, ShimError> {
    raw.parse::<u32>().map_err(|_| {
        ShimError::invalid(
            "id",
            format!(
                "{raw:?} is not an id (a whole number from 0 to {})",
                u32::MAX
            ),
        )
    })
}

/// Overlay `patch` on the stored object's JSON form; `id` may be repeated but not changed.
fn merge(
    stored: &impl Serialize,
    patch: Map<String, Value>,
    id: u32,
    allowed: &[&str],
) -> Result<Value, ShimError> {
    check_keys(&patch, allowed)?;
    if let Some(given) = patch.get("id")
        && given.as_u64() != Some(u64::from(id))
    {
        return Err(ShimError::invalid(
            "id",
            "does not match the id in the path",
        ));
    }
    let mut base = to_json(stored, "stored object")?;
    if let Value::Object(map) = &mut base {
        map.extend(patch);
    }
    Ok(base)
}

// ---- config and HA settings -------------------------------------------------------------------

async fn get_config(State(api): State<Arc<Api>>) -> ApiResult {
    ok(&api.shim.inventory().to_cluster_config())
}

async fn get_ha(State(api): State<Arc<Api>>) -> ApiResult {
    ok(&HaView::of(&api.shim.inventory()))
}

/// Merge a `PUT /v1/config/ha` body into `inv` and check the result; on error `inv` may be half
/// changed, which is fine because the write path only keeps a copy that passed.
pub fn apply_ha_patch(inv: &mut Inventory, mut patch: Map<String, Value>) -> Result<(), ShimError> {
    if let Some(mode) = patch.remove("admission_mode") {
        inv.admission_mode = from_value::<AdmissionMode>(mode).map_err(|e| {
            ShimError::invalid("admission_mode", format!("{e}; expected refuse or warn"))
        })?;
    }
    let Value::Object(mut merged) = to_json(&HaView::of(inv), "HA settings")? else {
        return Err(ShimError::invalid("body", "expected a JSON object"));
    };
    merged.remove("admission_mode");
    let allowed: Vec<String> = merged.keys().cloned().collect();
    let mut allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    allowed.push("admission_mode");
    check_keys(&patch, &allowed)?;
    merged.extend(patch);
    let ha: HaSettings = from_value(Value::Object(merged))?;
    validate::validate_ha(&ha, inv)?;
    inv.ha = ha;
    Ok(())
}

async fn put_ha(State(api): State<Arc<Api>>, body: Bytes) -> ApiResult {
    let patch = parse_object(&body)?;
    let answer = api
        .shim
        .write(AdmissionGate::WarnOnly, |inv| {
            apply_ha_patch(inv, patch)?;
            Ok(Stored::Ha(HaView::of(inv)))
        })
        .await?;
    written(StatusCode::OK, answer)
}

async fn get_state(State(api): State<Arc<Api>>) -> ApiResult {
    ok(&api.shim.state())
}

async fn get_admission(State(api): State<Arc<Api>>) -> ApiResult {
    ok(&api.shim.admission())
}

/// `since` and `limit` of `GET /v1/events`: an event id (0 for "from the start") and a page size
/// of 1 to 1000.
pub fn parse_event_query(query: Option<&str>) -> Result<(i64, u32), ShimError> {
    let since = match query_param(query, "since") {
        None | Some("") => 0,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ShimError::invalid(
                "since",
                format!(
                    "{s:?} is not an event id (a whole number from 0 to {})",
                    i64::MAX
                ),
            )
        })?,
    };
    let limit = match query_param(query, "limit") {
        None | Some("") => MAX_EVENTS_PAGE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS_PAGE).contains(n))
            .ok_or_else(|| {
                ShimError::invalid(
                    "limit",
                    format!(
                        "{s:?} is not a page size (a whole number from 1 to {MAX_EVENTS_PAGE})"
                    ),
                )
            })?,
    };
    Ok((since, limit))
}

async fn get_events(State(api): State<Arc<Api>>, req: Request) -> ApiResult {
    let (since, limit) = parse_event_query(req.uri().query())?;
    ok(&api.shim.events_since(since, limit)?)
}

// ---- inventory objects ---------------------------------------------------------------------------

/// What tells hosts, datastores and VMs apart to their list/get/add/put/delete routes, so that one
/// set of handlers serves all three with the same checks in the same order.
trait Entity: Serialize + DeserializeOwned + Clone + Into<Stored> + Send + Sync + 'static {
    type Id: Ord + Copy + fmt::Display + Send + Sync + 'static;
    /// Names the object in messages ("no host host-1").
    const NOUN: &'static str;
    const COLLECTION: &'static str;
    const FIELDS: &'static [&'static str];
    const GATE: AdmissionGate;
    fn id_from(raw: u32) -> Self::Id;
    fn id(&self) -> Self::Id;
    fn all(inv: &Inventory) -> &BTreeMap<Self::Id, Self>;
    fn all_mut(inv: &mut Inventory) -> &mut BTreeMap<Self::Id, Self>;
    fn validate(&self, inv: &Inventory) -> Result<(), ShimError>;
    fn check_removal(id: Self::Id, inv: &Inventory) -> Result<(), ShimError>;
}

impl Entity for HostSpec {
    type Id = HostId;
    const NOUN: &'static str = "host";
    const COLLECTION: &'static str = "/v1/hosts";
    const FIELDS: &'static [&'static str] = HostSpec::FIELDS;
    const GATE: AdmissionGate = AdmissionGate::WarnOnly;
    fn id_from(raw: u32) -> HostId {
        HostId(raw)
    }
    fn id(&self) -> HostId {
        self.id
    }
    fn all(inv: &Inventory) -> &BTreeMap<HostId, Self> {
        &inv.hosts
    }
    fn all_mut(inv: &mut Inventory) -> &mut BTreeMap<HostId, Self> {
        &mut inv.hosts
    }
    fn validate(&self, inv: &Inventory) -> Result<(), ShimError> {
        validate::validate_host(self, inv)
    }
    fn check_removal(id: HostId, inv: &Inventory) -> Result<(), ShimError> {
        validate::check_host_removal(id, inv)
    }
}

impl Entity for DatastoreSpec {
    type Id = DatastoreId;
    const NOUN: &'static str = "datastore";
    const COLLECTION: &'static str = "/v1/datastores";
    const FIELDS: &'static [&'static str] = DatastoreSpec::FIELDS;
    const GATE: AdmissionGate = AdmissionGate::WarnOnly;
    fn id_from(raw: u32) -> DatastoreId {
        DatastoreId(raw)
    }
    fn id(&self) -> DatastoreId {
        self.id
    }
    fn all(inv: &Inventory) -> &BTreeMap<DatastoreId, Self> {
        &inv.datastores
    }
    fn all_mut(inv: &mut Inventory) -> &mut BTreeMap<DatastoreId, Self> {
        &mut inv.datastores
    }
    fn validate(&self, inv: &Inventory) -> Result<(), ShimError> {
        validate::validate_datastore(self, inv)
    }
    fn check_removal(id: DatastoreId, inv: &Inventory) -> Result<(), ShimError> {
        validate::check_datastore_removal(id, inv)
    }
}

impl Entity for VmSpec {
    type Id = VmId;
    const NOUN: &'static str = "vm";
    const COLLECTION: &'static str = "/v1/vms";
    const FIELDS: &'static [&'static str] = VmSpec::FIELDS;
    /// Only VM writes add restart demand, so only they can be refused by admission control.
    const GATE: AdmissionGate = AdmissionGate::Vm {
        field: "reservation",
    };
    fn id_from(raw: u32) -> VmId {
        VmId(raw)
    }
    fn id(&self) -> VmId {
        self.id
    }
    fn all(inv: &Inventory) -> &BTreeMap<VmId, Self> {
        &inv.vms
    }
    fn all_mut(inv: &mut Inventory) -> &mut BTreeMap<VmId, Self> {
        &mut inv.vms
    }
    fn validate(&self, inv: &Inventory) -> Result<(), ShimError> {
        validate::validate_vm(self, inv)
    }
    fn check_removal(id: VmId, inv: &Inventory) -> Result<(), ShimError> {
        validate::check_vm_removal(id, inv)
    }
}

fn entity_routes<T: Entity>() -> Router<Arc<Api>> {
    Router::new()
        .route(T::COLLECTION, get(list::<T>).post(add::<T>))
        .route(
            &format!("{}/{{id}}", T::COLLECTION),
            get(get_one::<T>).put(put::<T>).delete(delete::<T>),
        )
}

fn missing<T: Entity>(id: T::Id) -> ShimError {
    ShimError::not_found("id", format!("no {} {id}", T::NOUN))
}

async fn list<T: Entity>(State(api): State<Arc<Api>>) -> ApiResult {
    ok(&T::all(&api.shim.inventory()).values().collect::<Vec<_>>())
}

async fn get_one<T: Entity>(State(api): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult {
    let id = T::id_from(parse_id(&id)?);
    match T::all(&api.shim.inventory()).get(&id) {
        Some(found) => ok(found),
        None => Err(missing::<T>(id).into()),
    }
}

async fn add<T: Entity>(State(api): State<Arc<Api>>, body: Bytes) -> ApiResult {
    let map = parse_object(&body)?;
    check_keys(&map, T::FIELDS)?;
    let spec: T = from_value(Value::Object(map))?;
    let answer = api
        .shim
        .write(T::GATE, |inv| {
            let id = spec.id();
            if T::all(inv).contains_key(&id) {
                return Err(ShimError::conflict("id", format!("{id} already exists")));
            }
            spec.validate(inv)?;
            T::all_mut(inv).insert(id, spec.clone());
            Ok(spec)
        })
        .await?;
    written(StatusCode::CREATED, answer)
}

async fn put<T: Entity>(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let raw = parse_id(&id)?;
    let id = T::id_from(raw);
    let patch = parse_object(&body)?;
    let answer = api
        .shim
        .write(T::GATE, |inv| {
            let cur = T::all(inv).get(&id).ok_or_else(|| missing::<T>(id))?;
            let spec: T = from_value(merge(cur, patch, raw, T::FIELDS)?)?;
            spec.validate(inv)?;
            T::all_mut(inv).insert(spec.id(), spec.clone());
            Ok(spec)
        })
        .await?;
    written(StatusCode::OK, answer)
}

async fn delete<T: Entity>(State(api): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult {
    let id = T::id_from(parse_id(&id)?);
    let ((), outcome) = api
        .shim
        .write(T::GATE, |inv| {
            if !T::all(inv).contains_key(&id) {
                return Err(missing::<T>(id));
            }
            T::check_removal(id, inv)?;
            T::all_mut(inv).remove(&id);
            // A clear belongs to the VM it was for; a VM added later under its id starts clean.
            let vms = &inv.vms;
            inv.restart_cleared.retain(|vm, _| vms.contains_key(vm));
            inv.power_requests.retain(|vm, _| vms.contains_key(vm));
            Ok(())
        })
        .await?;
    ok(&outcome)
}

async fn host_maintenance(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = HostId(parse_id(&id)?);
    let map = parse_object(&body)?;
    check_keys(&map, &["action"])?;
    let request: MaintenanceRequest = from_value(Value::Object(map))
        .map_err(|_| ShimError::invalid("action", "expected \"enter\" or \"exit\""))?;
    let answer = api
        .shim
        .write(AdmissionGate::WarnOnly, |inv| {
            let h = inv
                .hosts
                .get_mut(&id)
                .ok_or_else(|| missing::<HostSpec>(id))?;
            h.maintenance = request.action == MaintenanceAction::Enter;
            Ok(h.clone())
        })
        .await?;
    written(StatusCode::OK, answer)
}

/// `POST /v1/vms/{id}/clear`: the operator clears a VM that HA declared failed at its restart
/// limit. The clear is the write's own generation, recorded for the VM and published in its
/// `restart_cleared`: a master acts on a clear whose generation is above what the VM's protected
/// entry has acted on, once (`docs/safety.md`, "Restart limits"). Clearing a VM that is not failed
/// is allowed and only forgets its counted restarts. The body is empty or `{}`.
async fn vm_clear(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = VmId(parse_id(&id)?);
    if !body.iter().all(u8::is_ascii_whitespace) {
        let map = parse_object(&body)?;
        check_keys(&map, &[])?;
    }
    let answer = api
        .shim
        .write(AdmissionGate::WarnOnly, |inv| {
            let vm = inv
                .vms
                .get(&id)
                .cloned()
                .ok_or_else(|| missing::<VmSpec>(id))?;
            let generation = inv
                .generation
                .checked_add(1)
                .ok_or(ShimError::GenerationExhausted(inv.generation))?;
            inv.restart_cleared.insert(id, generation);
            Ok(vm)
        })
        .await?;
    written(StatusCode::OK, answer)
}

/// `POST /v1/vms/{id}/stop`: the operator asks HA to stop the VM (a clean shutdown, then
/// power-off after the shutdown timeout) and keep it stopped until started. Like a clear, the
/// request is the write's own generation, published in the VM's `power_request`; the master acts on
/// it once (`docs/safety.md`, "The other promise"). The body is empty or `{}`.
async fn vm_stop(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    power_request(api, id, body, DesiredPower::Off).await
}

/// `POST /v1/vms/{id}/start`: the operator asks HA to start the VM (on a host with room, through
/// the usual restart path), also after a guest or operator stopped it. The body is empty or `{}`.
async fn vm_start(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    power_request(api, id, body, DesiredPower::On).await
}

async fn power_request(api: Arc<Api>, id: String, body: Bytes, power: DesiredPower) -> ApiResult {
    let id = VmId(parse_id(&id)?);
    if !body.iter().all(u8::is_ascii_whitespace) {
        let map = parse_object(&body)?;
        check_keys(&map, &[])?;
    }
    let answer = api
        .shim
        .write(AdmissionGate::WarnOnly, |inv| {
            let vm = inv
                .vms
                .get(&id)
                .cloned()
                .ok_or_else(|| missing::<VmSpec>(id))?;
            let generation = inv
                .generation
                .checked_add(1)
                .ok_or(ShimError::GenerationExhausted(inv.generation))?;
            inv.power_requests
                .insert(id, PowerRequest { generation, power });
            Ok(vm)
        })
        .await?;
    written(StatusCode::OK, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_comparison() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
    }

    #[test]
    fn field_named_in_parse_errors() {
        let e =
            from_value::<VmSpec>(json!({"id": 1, "name": "a", "home": 1, "priority": "Urgent"}))
                .unwrap_err();
        assert_eq!(e.body().error.field.as_deref(), Some("priority"));
        let e = from_value::<VmSpec>(json!({"id": 1, "home": 1})).unwrap_err();
        assert_eq!(e.body().error.field.as_deref(), Some("name"));
        let e = from_value::<DatastoreSpec>(
            json!({"id": 1, "name": "d", "mounts": [{"host": "x", "path": "/a"}]}),
        )
        .unwrap_err();
        assert_eq!(e.body().error.field.as_deref(), Some("mounts[0].host"));
        let map = json!({"id": 1, "colour": "red"});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let e = check_keys(&map, HostSpec::FIELDS).unwrap_err();
        assert_eq!(e.body().error.field.as_deref(), Some("colour"));
    }
}

//! The operational endpoints: `GET /health` (the process answers), `GET /ready` (every configured
//! dependency answers, else 503 naming the first that does not), `GET /metrics` (Prometheus text)
//! and `GET /openapi.json` (the OpenAPI document, generated from the annotated handlers). Also the
//! edge layers every REST route wears ([`with_edge_layers`]: JSON errors, request latency) and the
//! JSON 404 for paths no route serves.
//!
//! Metrics, besides those of [`crate::metered`]:
//! - `switchboard_sessions_live`: sessions with a live task in this server
//!   (`LocalSessionHost::live_sessions`), read at scrape time.
//! - `switchboard_sessions_hibernated`: sessions stored under the data directory minus the live
//!   ones. A cheap approximation read at scrape time: it counts the session database files, so
//!   closed sessions count as hibernated too.
//! - `switchboard_http_request_duration_seconds{method, route, status}`: request latency by route
//!   pattern (`/v1/sessions/{id}`, never the concrete id); `route="unmatched"` for no route.

use super::AppState;
use crate::app::ApiError;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Gauge: sessions with a live task.
pub const SESSIONS_LIVE: &str = "switchboard_sessions_live";
/// Gauge: stored sessions without a live task.
pub const SESSIONS_HIBERNATED: &str = "switchboard_sessions_hibernated";
/// Histogram: request latency by route pattern.
pub const REQUEST_DURATION: &str = "switchboard_http_request_duration_seconds";

/// `{"status": "ok"}` / `{"status": "ready"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    pub status: String,
}

/// 503 from `/ready`: the failing dependency and the usual error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotReadyBody {
    /// `unavailable`.
    pub status: String,
    /// The dependency that did not answer (`database`, `session_store`, …).
    pub dependency: String,
    pub error: super::api::ErrorDetail,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = StatusBody)))]
async fn health() -> Json<StatusBody> {
    Json(StatusBody {
        status: "ok".into(),
    })
}

/// Every configured dependency answers.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = StatusBody), (status = 503, description = "a dependency does not answer", body = NotReadyBody)))]
async fn ready(State(st): State<AppState>) -> Response {
    match st.deployment.ready().await {
        Ok(()) => Json(StatusBody {
            status: "ready".into(),
        })
        .into_response(),
        Err((dependency, message)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReadyBody {
                status: "unavailable".into(),
                dependency: dependency.to_string(),
                error: super::api::ErrorDetail {
                    code: "unavailable".into(),
                    message: format!("{dependency}: {message}"),
                },
            }),
        )
            .into_response(),
    }
}

/// Counts the session databases under `root` (`<root>/<org>/<session>.db`).
fn stored_sessions(root: &Path) -> usize {
    let Ok(orgs) = std::fs::read_dir(root) else {
        return 0;
    };
    orgs.flatten()
        .filter(|org| org.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|org| std::fs::read_dir(org.path()).ok())
        .map(|sessions| {
            sessions
                .flatten()
                .filter(|s| s.file_name().to_str().is_some_and(|n| n.ends_with(".db")))
                .count()
        })
        .sum()
}

/// Prometheus text exposition of every metric of this process.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(st): State<AppState>) -> Response {
    let live = st.deployment.host.live_sessions();
    let root = st.deployment.session_store.root().to_path_buf();
    let stored = tokio::task::spawn_blocking(move || stored_sessions(&root))
        .await
        .unwrap_or(0);
    // The session gauges belong to this server's host, not to the process-wide recorder (which
    // every server of a process shares): they are written straight into this answer.
    let mut text = st.metrics.render();
    text.push_str(&gauge_text(
        SESSIONS_LIVE,
        "Sessions with a live task in this server.",
        live,
    ));
    text.push_str(&gauge_text(
        SESSIONS_HIBERNATED,
        "Stored sessions without a live task (closed ones included).",
        stored.saturating_sub(live),
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// One gauge in the Prometheus text format.
fn gauge_text(name: &str, help: &str, value: usize) -> String {
    format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document", body = Object)))]
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

/// The client WebSocket (served by `http::ws`): hello, replay after `after`, live events. Frames
/// are described in PROTOCOL.md.
#[utoipa::path(get, path = "/v1/sessions/{id}/ws", tag = "websockets", security(("bearer" = [])),
    params(("id" = String, Path, description = "session id"),
        ("after" = Option<u64>, Query, description = "replay events with a greater seq"),
        ("token" = Option<String>, Query, description = "the bearer credential, for browsers")),
    responses((status = 101, description = "switching to the WebSocket protocol"), (status = 401, body = super::api::ErrorResponse),
        (status = 404, body = super::api::ErrorResponse)))]
#[allow(dead_code)]
fn client_websocket() {}

/// The sandbox dial-back WebSocket (served by `http::ws`), authenticated by the sandbox token.
#[utoipa::path(get, path = "/sandbox/v1/sessions/{org_id}/{session_id}/ws", tag = "websockets",
    params(("org_id" = String, Path), ("session_id" = String, Path)),
    responses((status = 101, description = "switching to the WebSocket protocol"), (status = 401, body = super::api::ErrorResponse)))]
#[allow(dead_code)]
fn sandbox_websocket() {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API key (sk_…) or a login session token"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchboard", description = "The Switchboard control plane: HTTP API of PROTOCOL.md (v1)."),
    paths(client_websocket, sandbox_websocket),
    components(schemas(super::api::ErrorResponse)),
    modifiers(&BearerAuth)
)]
struct Document;

/// The operational routes with their OpenAPI operations.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The whole OpenAPI document: the REST API, these endpoints, and the two WebSocket upgrades.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = Document::openapi();
    doc.merge(super::api::openapi_router().into_openapi());
    doc.merge(openapi_router().into_openapi());
    doc
}

/// The routes of this module, plus the JSON 404 for paths no route serves.
pub fn routes() -> axum::Router<AppState> {
    crate::metered::describe();
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by method, route pattern and status."
    );
    with_edge_layers(openapi_router().split_for_parts().0).fallback(no_route)
}

/// The error code of a 404 for a path no route serves (a resource that does not exist is
/// `not_found`).
pub const NO_ROUTE: &str = "no_route";

/// Paths no route serves.
async fn no_route(req: Request) -> Response {
    let started = std::time::Instant::now();
    let answer = ApiError::new(
        404,
        NO_ROUTE,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response();
    record_latency(req.method().as_str(), "unmatched", answer.status(), started);
    answer
}

/// Wraps `router`'s routes in the edge layers: request latency (outermost) and JSON errors.
pub fn with_edge_layers<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
) -> axum::Router<S> {
    router
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(track_latency))
}

fn record_latency(method: &str, route: &str, status: StatusCode, started: std::time::Instant) {
    metrics::histogram!(REQUEST_DURATION, "method" => method.to_string(), "route" => route.to_string(), "status" => status.as_u16().to_string())
        .record(started.elapsed().as_secs_f64());
}

/// Records the request's latency under its route pattern.
pub async fn track_latency(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let response = next.run(req).await;
    record_latency(method.as_str(), &route, response.status(), started);
    response
}

/// The snake_case code of an error status that reached the edge without a JSON body.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 415 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        422 => "unprocessable",
        429 => "rate_limited",
        503 | 504 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}

/// Turns any error answer that is not JSON (the body limit's 413, axum's 405, a layer's plain
/// text) into `{"error": {"code", "message"}}`, keeping its status and other headers. A 413 also
/// says `connection: close`.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the refused body was never read: the connection cannot carry another
        // request, so the client must not put it back in its pool.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = ApiError::new(status.as_u16(), code_for(status), message)
        .body()
        .to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_error_statuses_get_stable_codes() {
        assert_eq!(code_for(StatusCode::PAYLOAD_TOO_LARGE), "too_large");
        assert_eq!(
            code_for(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(code_for(StatusCode::UNSUPPORTED_MEDIA_TYPE), "invalid");
        assert_eq!(code_for(StatusCode::BAD_GATEWAY), "internal");
    }

    #[test]
    fn the_document_names_every_rest_and_operational_path() {
        let doc = openapi();
        for path in [
            "/v1/auth/signup",
            "/v1/sessions/{id}/events",
            "/v1/runs/{run_id}",
            "/health",
            "/openapi.json",
            "/v1/sessions/{id}/ws",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} missing");
        }
        let scheme = doc
            .components
            .as_ref()
            .and_then(|c| c.security_schemes.get("bearer"));
        assert!(scheme.is_some(), "the bearer scheme is declared");
    }

    #[test]
    fn counts_session_databases_only() {
        let dir = switchboard_adapters::sql::scratch::ScratchDir::create("ops_count").unwrap();
        std::fs::create_dir_all(dir.join("org_a")).unwrap();
        std::fs::create_dir_all(dir.join("org_b")).unwrap();
        std::fs::write(dir.join("org_a/ses_1.db"), b"").unwrap();
        std::fs::write(dir.join("org_a/ses_1.db-wal"), b"").unwrap();
        std::fs::write(dir.join("org_b/ses_2.db"), b"").unwrap();
        std::fs::write(dir.join("stray.db"), b"").unwrap();
        assert_eq!(stored_sessions(dir.path()), 2);
        assert_eq!(stored_sessions(&dir.join("missing")), 0);
    }
}

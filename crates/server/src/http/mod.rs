//! The HTTP face of the server (axum): the REST API of PROTOCOL.md (`api`), the client and sandbox
//! WebSockets (`ws`), and the operational endpoints `/health`, `/ready`, `/metrics`,
//! `/openapi.json` (`ops`). Handlers only translate: the operations live in [`crate::app::App`].

pub mod api;
pub mod auth;
pub mod error;
pub mod ops;
pub mod ws;

use crate::app::App;
use crate::deployment::Deployment;
use std::sync::Arc;
use switchboard_ports::SessionHost;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub host: Arc<dyn SessionHost>,
    pub deployment: Arc<Deployment>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The whole router.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .merge(api::routes())
        .merge(ws::routes())
        .merge(ops::routes())
        .with_state(state)
}

//! The authenticated caller of a request: `Authorization: Bearer <token>`, or `?token=` for
//! browsers opening a WebSocket. Anything else answers 401 before the handler runs.

use super::AppState;
use crate::app::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use switchboard_core::Principal;

/// The principal behind a request.
pub struct Authed(pub Principal);

fn query_token(parts: &Parts) -> Option<String> {
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token=").map(str::to_string))
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bearer = header.or_else(|| query_token(parts).map(|t| format!("Bearer {t}")));
        state.app.authenticate(bearer.as_deref()).await.map(Authed)
    }
}

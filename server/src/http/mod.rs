//! The HTTP API: one module per resource; handlers extract, authorize, call the
//! repository or blob store, and map errors in `error.rs`.

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{get, post, put};
use axum::Router;

use crate::state::AppState;

mod auth;
mod chunks;
pub(crate) mod error;
mod extract;
mod files;
mod ops;
mod sync;
mod ws;

/// Largest JSON body (a manifest of a very large file).
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// The application router.
pub fn app(state: AppState) -> Router {
    let blob_routes = Router::new()
        .route("/api/v1/chunks/{id}", put(chunks::put).get(chunks::get))
        .route("/api/v1/chunks/batch", post(chunks::put_batch))
        // Bodies are read with their own limits in the handlers.
        .layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .route("/api/v1/auth/params", get(auth::params))
        .route("/api/v1/auth/register", post(auth::register))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/devices", get(auth::list_devices))
        .route(
            "/api/v1/devices/{id}",
            axum::routing::delete(auth::revoke_device),
        )
        .route("/api/v1/chunks/missing", post(chunks::missing))
        .route("/api/v1/chunks/fetch", post(chunks::fetch_batch))
        .route("/api/v1/files/upload", post(files::upload))
        .route("/api/v1/files/list", get(files::list))
        .route("/api/v1/files/download/{file_id}", get(files::download))
        .route("/api/v1/files/manifests", post(files::manifests))
        .route("/api/v1/files/{file_id}/versions", get(files::versions))
        .route("/api/v1/files/{file_id}/restore", post(files::restore))
        .route("/api/v1/files/delete", post(files::delete))
        .route("/api/v1/files/rename", post(files::rename))
        .route("/api/v1/sync/event", post(sync::event))
        .route("/api/v1/sync/changes", get(sync::changes))
        .route("/api/v1/ws", get(ws::upgrade))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    api.merge(blob_routes)
        .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
        // After the merge, so that every route answers a wrong method in JSON.
        .method_not_allowed_fallback(|method: Method| async move {
            error::ApiError::MethodNotAllowed(format!(
                "{method} is not allowed on this endpoint; the Allow header lists those that are"
            ))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::observe,
        ))
        .with_state(state)
}

//! The HTTP API: one module per resource; handlers extract, authorize, call the
//! repository or blob store, and map errors in `error.rs`.

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::Router;

use crate::state::AppState;

mod auth;
mod chunks;
pub(crate) mod error;
mod extract;
mod files;
mod openapi;
mod ops;
mod pages;
mod sync;
pub(crate) mod ws;

/// Largest JSON body (a manifest of a very large file).
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No access token (registration, login, refresh with the refresh token in the
    /// body, health, metrics).
    Public,
    /// A valid access token of a device that is not revoked.
    Token,
}

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'static str,
    /// The path template, `{name}` for a path parameter.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// Builds a router from a table of routes and keeps the table, so that the list the
/// security suite checks ([`ROUTES`]) is the list the router serves.
macro_rules! routes {
    ($name:ident; $($method:ident $path:literal => $handler:expr, $access:ident;)*) => {
        /// Every route of the API, as the router serves it.
        pub const $name: &[Route] = &[$(Route {
            method: const_upper(stringify!($method)),
            path: $path,
            access: Access::$access,
        }),*];

        fn route_table(mut router: Router<AppState>, blobs: bool) -> Router<AppState> {
            $(
                if is_blob_route($path) == blobs {
                    router = router.route($path, axum::routing::$method($handler));
                }
            )*
            router
        }
    };
}

/// `get` → `GET` (the table's method names, from the routing functions' names).
const fn const_upper(method: &'static str) -> &'static str {
    match method.as_bytes() {
        b"get" => "GET",
        b"post" => "POST",
        b"put" => "PUT",
        b"delete" => "DELETE",
        _ => panic!("a method the route table does not know"),
    }
}

/// Blob uploads and downloads read their bodies with their own limits.
fn is_blob_route(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/chunks/{id}" | "/api/v1/chunks/batch" | "/api/v1/pages/batch"
    )
}

routes! { ROUTES;
    get "/api/v1/auth/params" => auth::params, Public;
    post "/api/v1/auth/register" => auth::register, Public;
    post "/api/v1/auth/login" => auth::login, Public;
    post "/api/v1/auth/refresh" => auth::refresh, Public;
    post "/api/v1/auth/logout" => auth::logout, Token;
    get "/api/v1/devices" => auth::list_devices, Token;
    delete "/api/v1/devices/{id}" => auth::revoke_device, Token;
    get "/api/v1/usage" => auth::usage, Token;
    post "/api/v1/chunks/missing" => chunks::missing, Token;
    post "/api/v1/chunks/fetch" => chunks::fetch_batch, Token;
    put "/api/v1/chunks/{id}" => chunks::put, Token;
    get "/api/v1/chunks/{id}" => chunks::get, Token;
    post "/api/v1/chunks/batch" => chunks::put_batch, Token;
    post "/api/v1/pages/missing" => pages::missing, Token;
    post "/api/v1/pages/batch" => pages::put_batch, Token;
    post "/api/v1/pages/fetch" => pages::fetch, Token;
    post "/api/v1/files/upload" => files::upload, Token;
    get "/api/v1/files/list" => files::list, Token;
    get "/api/v1/files/download/{file_id}" => files::download, Token;
    post "/api/v1/files/manifests" => files::manifests, Token;
    get "/api/v1/files/{file_id}/versions" => files::versions, Token;
    get "/api/v1/files/{file_id}/renames" => files::renames, Token;
    post "/api/v1/files/{file_id}/restore" => files::restore, Token;
    post "/api/v1/files/delete" => files::delete, Token;
    post "/api/v1/files/rename" => files::rename, Token;
    post "/api/v1/sync/event" => sync::event, Token;
    get "/api/v1/sync/changes" => sync::changes, Token;
    get "/api/v1/ws" => ws::upgrade, Token;
    get "/health" => ops::health, Public;
    get "/metrics" => ops::metrics, Public;
    get "/api/openapi.json" => openapi::serve, Public;
}

/// The application router.
pub fn app(state: AppState) -> Router {
    let blob_routes = route_table(Router::new(), true)
        // Bodies are read with their own limits in the handlers.
        .layer(DefaultBodyLimit::disable());
    let api = route_table(Router::new(), false).layer(DefaultBodyLimit::max(MAX_JSON_BODY));
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

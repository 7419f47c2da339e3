//! `GET /api/openapi.json`: the API as an OpenAPI 3.1 document. The schemas come from
//! the wire types themselves (`fsync-common`'s `openapi` feature, derived from the
//! same serde attributes the handlers encode and decode with); this file says which
//! type each route of [`super::ROUTES`] takes and answers, and a test checks that it
//! lists every route the router serves and nothing else.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use fsync_common::wire::{
    ChangesQuery, ChangesResponse, ChunkIdsRequest, CommitRequest, CommitResponse, DeleteRequest,
    DeviceInfo, HealthResponse, KdfParams, ListQuery, ListResponse, LoginRequest, LoginResponse,
    Manifest, ManifestsRequest, MissingPagesResponse, MissingResponse, OpResponse, PageIdsRequest,
    PushMessage, RefreshRequest, RegisterRequest, RegisterResponse, RenameInfo, RenameRequest,
    RestoreRequest, StoredResponse, SyncEventBatch, SyncEventResponse, TokenResponse,
    UsageResponse, VersionInfo,
};
use fsync_common::ErrorBody;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
    PathsBuilder, Ref, RefOr, Required, ResponseBuilder,
};
use utoipa::{IntoParams, ToSchema};

use super::auth::ParamsQuery;
use super::chunks::NsQuery;
use super::files::VersionQuery;
use super::{Access, ROUTES};

/// The media type of blob and page batches (`fsync_common::batch` framing).
const OCTETS: &str = "application/octet-stream";

/// One operation: a route of [`ROUTES`] with its parameters, body and answer.
struct Op {
    method: &'static str,
    path: &'static str,
    builder: OperationBuilder,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// A reference to `T`'s schema, which (with the schemas it refers to) joins `schemas`.
fn schema_ref<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
    Ref::from_schema_name(T::name()).into()
}

fn json_content(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

impl Op {
    /// `method path`, with its `{name}` segments as required path parameters.
    fn new(method: &'static str, path: &'static str, summary: &str) -> Self {
        let mut op = OperationBuilder::new()
            .summary(Some(summary))
            .operation_id(Some(format!("{} {path}", method.to_ascii_lowercase())));
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        Self {
            method,
            path,
            builder: op,
            schemas: Vec::new(),
        }
    }

    /// Takes the query parameters of `Q`.
    fn query<Q: IntoParams>(mut self) -> Self {
        let params: Vec<Parameter> = Q::into_params(|| Some(ParameterIn::Query));
        self.builder = self.builder.parameters(Some(params));
        self
    }

    /// Takes a JSON body of `T`.
    fn json<T: ToSchema>(mut self) -> Self {
        let body = RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content(
                "application/json",
                json_content(schema_ref::<T>(&mut self.schemas)),
            )
            .build();
        self.builder = self.builder.request_body(Some(body));
        self
    }

    /// Takes a binary body (`what` it holds).
    fn bytes(mut self, what: &str) -> Self {
        let body = RequestBodyBuilder::new()
            .required(Some(Required::True))
            .description(Some(what))
            .content(OCTETS, ContentBuilder::new().build())
            .build();
        self.builder = self.builder.request_body(Some(body));
        self
    }

    /// Adds the answer for `status`.
    fn respond(mut self, status: u16, response: ResponseBuilder) -> Self {
        self.builder = self.builder.response(status.to_string(), response);
        self
    }

    /// Answers `status` with a JSON `T`.
    fn answers<T: ToSchema>(mut self, status: u16) -> Self {
        let content = json_content(schema_ref::<T>(&mut self.schemas));
        let response = ResponseBuilder::new()
            .description(T::name())
            .content("application/json", content);
        self.respond(status, response)
    }

    /// Answers 200 with a JSON array of `T`.
    fn answers_list<T: ToSchema>(mut self) -> Self {
        let items = schema_ref::<T>(&mut self.schemas);
        let content = json_content(ArrayBuilder::new().items(items).into());
        let response = ResponseBuilder::new()
            .description(format!("a list of {}", T::name()))
            .content("application/json", content);
        self.respond(200, response)
    }

    /// Answers 200 with a binary body (`what` it holds).
    fn answers_bytes(self, what: &str) -> Self {
        let response = ResponseBuilder::new()
            .description(what)
            .content(OCTETS, ContentBuilder::new().build());
        self.respond(200, response)
    }

    /// Answers `status` with no body.
    fn answers_empty(self, status: u16, what: &str) -> Self {
        self.respond(status, ResponseBuilder::new().description(what))
    }

    /// The operation, with the error body every route answers failures with, and the
    /// bearer token on routes that need one.
    fn build(mut self, access: Access) -> (Operation, Vec<(String, RefOr<Schema>)>) {
        let error = json_content(schema_ref::<ErrorBody>(&mut self.schemas));
        let mut op = self.builder.response(
            "default",
            ResponseBuilder::new()
                .description("an error: {\"error\": {\"code\", \"message\", …}}")
                .content("application/json", error),
        );
        if access == Access::Token {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        (op.build(), self.schemas)
    }
}

/// Every operation, in the order of [`ROUTES`].
fn operations() -> Vec<Op> {
    let ns = "?namespace= names the namespace (default: the user's first)";
    vec![
        Op::new(
            "GET",
            "/api/v1/auth/params",
            "The KDF parameters of a user (stable fake ones for unknown users)",
        )
        .query::<ParamsQuery>()
        .answers::<KdfParams>(200),
        Op::new(
            "POST",
            "/api/v1/auth/register",
            "Create an account with its first namespace",
        )
        .json::<RegisterRequest>()
        .answers::<RegisterResponse>(201),
        Op::new(
            "POST",
            "/api/v1/auth/login",
            "Log in with the derived auth key; registers or resumes a device",
        )
        .json::<LoginRequest>()
        .answers::<LoginResponse>(200),
        Op::new(
            "POST",
            "/api/v1/auth/refresh",
            "Exchange a refresh token for a new pair",
        )
        .json::<RefreshRequest>()
        .answers::<TokenResponse>(200),
        Op::new(
            "POST",
            "/api/v1/auth/logout",
            "Forget the caller's own refresh token",
        )
        .json::<RefreshRequest>()
        .answers_empty(204, "logged out"),
        Op::new("GET", "/api/v1/devices", "The user's devices").answers_list::<DeviceInfo>(),
        Op::new(
            "DELETE",
            "/api/v1/devices/{id}",
            "Revoke a device: its tokens stop, its sockets close",
        )
        .answers_empty(204, "revoked"),
        Op::new(
            "GET",
            "/api/v1/usage",
            "Stored bytes of the user's namespaces, and the quota",
        )
        .answers::<UsageResponse>(200),
        Op::new(
            "POST",
            "/api/v1/chunks/missing",
            "Which of these chunks the namespace lacks",
        )
        .json::<ChunkIdsRequest>()
        .answers::<MissingResponse>(200),
        Op::new(
            "POST",
            "/api/v1/chunks/fetch",
            "Many blobs in one batch body",
        )
        .json::<ChunkIdsRequest>()
        .answers_bytes("batch body (FSBT framing) with the blobs the namespace holds"),
        Op::new("PUT", "/api/v1/chunks/{id}", "Upload one blob (idempotent)")
            .query::<NsQuery>()
            .bytes(ns)
            .answers::<StoredResponse>(201)
            .answers::<StoredResponse>(200),
        Op::new("GET", "/api/v1/chunks/{id}", "Download one blob")
            .query::<NsQuery>()
            .answers_bytes("the blob"),
        Op::new(
            "POST",
            "/api/v1/chunks/batch",
            "Upload many blobs in one batch body",
        )
        .query::<NsQuery>()
        .bytes("batch body (FSBT framing): chunk id, blob; at most 32 MiB")
        .answers::<StoredResponse>(200),
        Op::new(
            "POST",
            "/api/v1/pages/missing",
            "Which of these manifest pages the namespace lacks",
        )
        .json::<PageIdsRequest>()
        .answers::<MissingPagesResponse>(200),
        Op::new(
            "POST",
            "/api/v1/pages/batch",
            "Upload manifest pages in one batch body",
        )
        .query::<NsQuery>()
        .bytes("batch body (FSBT framing): page id, page encoding")
        .answers::<StoredResponse>(200),
        Op::new(
            "POST",
            "/api/v1/pages/fetch",
            "Many manifest pages in one batch body",
        )
        .json::<PageIdsRequest>()
        .answers_bytes("batch body (FSBT framing) with the pages the namespace holds"),
        Op::new("POST", "/api/v1/files/upload", "Commit a manifest")
            .json::<CommitRequest>()
            .answers::<CommitResponse>(200),
        Op::new(
            "GET",
            "/api/v1/files/list",
            "The heads of the files, in path order",
        )
        .query::<ListQuery>()
        .answers::<ListResponse>(200),
        Op::new(
            "GET",
            "/api/v1/files/download/{file_id}",
            "A version's manifest (the client fetches the chunks)",
        )
        .query::<VersionQuery>()
        .answers::<Manifest>(200),
        Op::new(
            "POST",
            "/api/v1/files/manifests",
            "The manifests of many versions",
        )
        .json::<ManifestsRequest>()
        .answers_list::<Manifest>(),
        Op::new(
            "GET",
            "/api/v1/files/{file_id}/versions",
            "A file's history, newest first",
        )
        .answers_list::<VersionInfo>(),
        Op::new(
            "GET",
            "/api/v1/files/{file_id}/renames",
            "A file's renames, oldest first",
        )
        .answers_list::<RenameInfo>(),
        Op::new(
            "POST",
            "/api/v1/files/{file_id}/restore",
            "Make an old version the head again",
        )
        .json::<RestoreRequest>()
        .answers::<CommitResponse>(200),
        Op::new(
            "POST",
            "/api/v1/files/delete",
            "Delete a path if its head is the version seen",
        )
        .json::<DeleteRequest>()
        .answers::<OpResponse>(200),
        Op::new(
            "POST",
            "/api/v1/files/rename",
            "Move a file or a whole folder (no data moves)",
        )
        .json::<RenameRequest>()
        .answers::<OpResponse>(200),
        Op::new(
            "POST",
            "/api/v1/sync/event",
            "Apply creates, edits, deletes and renames in order",
        )
        .json::<SyncEventBatch>()
        .answers::<SyncEventResponse>(200),
        Op::new(
            "GET",
            "/api/v1/sync/changes",
            "The change journal after a cursor",
        )
        .query::<ChangesQuery>()
        .answers::<ChangesResponse>(200),
        Op::new(
            "GET",
            "/api/v1/ws",
            "The push socket (WebSocket): PushMessage frames",
        )
        .answers::<PushMessage>(101),
        Op::new(
            "GET",
            "/health",
            "Whether the database and the blob store answer",
        )
        .answers::<HealthResponse>(200)
        .answers::<HealthResponse>(503),
        Op::new("GET", "/metrics", "Prometheus counters (text)")
            .answers_empty(200, "Prometheus text format"),
        Op::new("GET", "/api/openapi.json", "This document").answers_empty(200, "OpenAPI 3.1 JSON"),
    ]
}

/// The document: one operation per route of [`ROUTES`].
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut components = ComponentsBuilder::new().security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for op in operations() {
        let access = ROUTES
            .iter()
            .find(|r| (r.method, r.path) == (op.method, op.path))
            .map_or(Access::Token, |r| r.access);
        let method = match op.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            _ => HttpMethod::Delete,
        };
        let path = op.path;
        let (operation, schemas) = op.build(access);
        for (name, schema) in schemas {
            components = components.schema(name, schema);
        }
        paths = paths.path(path, PathItem::new(method, operation));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("fsync")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "End-to-end encrypted file sync. Blobs, manifests' chunk ids and \
                     wrapped keys are opaque to the server.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

/// `GET /api/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every route the router serves is documented, with its method, and nothing else
    /// is; every schema a route names is in the components.
    #[test]
    fn the_document_lists_every_route_and_only_those() {
        let doc = serde_json::to_value(document()).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, served);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for name in text
            .split("\"#/components/schemas/")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            assert!(
                schemas.contains_key(name),
                "{name} is referred to, not defined"
            );
        }
        for name in [
            "LoginRequest",
            "CommitRequest",
            "ErrorBody",
            "ChunkId",
            "SyncEvent",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        // Token routes say so; public ones do not.
        let login = &doc["paths"]["/api/v1/auth/login"]["post"];
        assert!(login.get("security").is_none(), "{login}");
        let list = &doc["paths"]["/api/v1/files/list"]["get"];
        assert_eq!(list["security"][0]["bearer"], serde_json::json!([]));
        // Answers that are not errors are not left to `default`.
        let put = &doc["paths"]["/api/v1/chunks/{id}"]["put"]["responses"];
        assert!(
            put.get("200").is_some() && put.get("201").is_some(),
            "{put}"
        );
        assert!(doc["paths"]["/health"]["get"]["responses"]
            .get("503")
            .is_some());
        let params: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            params.contains(&"namespace") && params.contains(&"after"),
            "{params:?}"
        );
    }
}

//! One request: building it, sending it (renewing the session on 401, waiting out
//! 429s), and reading a bounded answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{api_error, error_message, network_error};
use super::{
    ApiClient, ClientError, BULK_BODY, MAX_JSON_RESPONSE, MAX_RATE_LIMIT_RETRIES, MAX_RETRY_WAIT,
};

/// One request to send (and possibly resend).
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) body: Option<(Vec<u8>, &'static str)>,
    /// Send the access token, and renew the session on 401.
    pub(super) auth: bool,
    /// Renew and retry on 401 (false: a 401 is returned as `Unauthorized` at once).
    pub(super) renew: bool,
    pub(super) max_response: usize,
}

impl Call {
    pub(super) fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            auth: true,
            renew: true,
            max_response: MAX_JSON_RESPONSE,
        }
    }

    pub(super) fn get(path: String) -> Self {
        Self::new(Method::GET, path)
    }

    pub(super) fn post(path: String) -> Self {
        Self::new(Method::POST, path)
    }

    pub(super) fn query(mut self, key: &'static str, value: &impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    pub(super) fn json(mut self, body: &impl Serialize) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            ClientError::Protocol(format!("cannot encode the body of {}: {e}", self.path))
        })?;
        self.body = Some((bytes, "application/json"));
        Ok(self)
    }

    pub(super) fn bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Some((body, "application/octet-stream"));
        self
    }

    pub(super) fn anonymous(mut self) -> Self {
        self.auth = false;
        self.renew = false;
        self
    }

    pub(super) fn max_response(mut self, max: usize) -> Self {
        self.max_response = max;
        self
    }
}

/// Path of an API endpoint.
pub(super) fn api(rest: &str) -> String {
    format!("/api/v1/{rest}")
}

pub(super) fn decode_json<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("unexpected answer from {path}: {e}")))
}

/// Reads a response body up to `max` bytes.
pub(super) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
    method: &Method,
    url: &str,
    read_timeout: Option<Duration>,
) -> Result<Vec<u8>, ClientError> {
    let too_big = || {
        ClientError::Protocol(format!(
            "the answer to {method} {url} exceeds the {max}-byte limit"
        ))
    };
    let declared = resp.content_length().unwrap_or(0);
    if declared > max as u64 {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(declared as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| network_error(method, url, &e, read_timeout))?
    {
        if out.len() + chunk.len() > max {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl ApiClient {
    /// Sends one request once and reads the answer.
    pub(super) async fn execute(
        &self,
        req: reqwest::Request,
        max_response: usize,
    ) -> Result<(StatusCode, Option<u64>, Vec<u8>), ClientError> {
        let method = req.method().clone();
        // Scheme, host and path only: queries stay out of messages and logs.
        let mut where_ = req.url().clone();
        where_.set_query(None);
        let up = req
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map_or(0, <[u8]>::len);
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes_up.fetch_add(up as u64, Ordering::Relaxed);
        let (client, read_timeout) = if up > BULK_BODY {
            (&self.inner.bulk, None)
        } else {
            (&self.inner.http, Some(self.inner.read_timeout))
        };
        let resp = client
            .execute(req)
            .await
            .map_err(|e| network_error(&method, where_.as_str(), &e, read_timeout))?;
        let status = resp.status();
        tracing::debug!(%method, path = where_.path(), status = status.as_u16(), "api request");
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_body(resp, max_response, &method, where_.as_str(), read_timeout).await?;
        self.inner
            .bytes_down
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok((status, retry_after, body))
    }

    /// Builds the request of a call (without credentials).
    pub(super) fn build(&self, call: Call) -> Result<(reqwest::Request, usize), ClientError> {
        let url = format!("{}{}", self.inner.base, call.path);
        let mut builder = self.inner.http.request(call.method.clone(), &url);
        if !call.query.is_empty() {
            builder = builder.query(&call.query);
        }
        if let Some((body, content_type)) = call.body {
            builder = builder.header(CONTENT_TYPE, content_type).body(body);
        }
        let req = builder.build().map_err(|e| {
            ClientError::Config(format!("cannot build {} {}: {e}", call.method, call.path))
        })?;
        Ok((req, call.max_response))
    }

    /// Sends a request with `token`, waiting out 429s. `Ok(Err(..))` is an error answer.
    pub(super) async fn attempt(
        &self,
        template: &reqwest::Request,
        token: Option<&str>,
        max_response: usize,
    ) -> Result<Result<Vec<u8>, (StatusCode, Vec<u8>)>, ClientError> {
        let mut waits = 0;
        loop {
            let mut req = template
                .try_clone()
                .expect("request bodies are held in memory");
            if let Some(token) = token {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        ClientError::Protocol("the access token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            let (status, retry_after, body) = self.execute(req, max_response).await?;
            if status.is_success() {
                return Ok(Ok(body));
            }
            if status != StatusCode::TOO_MANY_REQUESTS {
                return Ok(Err((status, body)));
            }
            let secs = retry_after.unwrap_or(1);
            if waits == MAX_RATE_LIMIT_RETRIES {
                return Err(ClientError::RateLimited { retry_after: secs });
            }
            waits += 1;
            let wait = Duration::from_secs(secs).min(MAX_RETRY_WAIT);
            tracing::debug!(
                path = template.url().path(),
                wait_s = wait.as_secs(),
                "rate limited; waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a call without credentials.
    pub(super) async fn send_anonymous(&self, call: Call) -> Result<Vec<u8>, ClientError> {
        let (template, max) = self.build(call)?;
        match self.attempt(&template, None, max).await? {
            Ok(body) => Ok(body),
            Err((StatusCode::UNAUTHORIZED, body)) => {
                Err(ClientError::Unauthorized(error_message(&body)))
            }
            Err((status, body)) => Err(api_error(status, &body)),
        }
    }

    /// Sends a call with the session's access token; on 401 renews the session once
    /// (unless the call says not to) and retries. Returns the body of the answer.
    pub(super) async fn send(&self, call: Call) -> Result<Vec<u8>, ClientError> {
        if !call.auth {
            return self.send_anonymous(call).await;
        }
        let renew = call.renew;
        let (template, max) = self.build(call)?;
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            match self.attempt(&template, Some(&token), max).await? {
                Ok(body) => return Ok(body),
                Err((StatusCode::UNAUTHORIZED, _)) if renew && !renewed => {
                    renewed = true;
                    self.renew(Some(&token)).await?;
                }
                Err((StatusCode::UNAUTHORIZED, body)) => {
                    return Err(ClientError::Unauthorized(error_message(&body)))
                }
                Err((status, body)) => return Err(api_error(status, &body)),
            }
        }
    }

    pub(super) async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<T, ClientError> {
        let path = call.path.clone();
        let body = self.send(call).await?;
        decode_json(&path, &body)
    }

    pub(super) async fn send_anonymous_json<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<T, ClientError> {
        let path = call.path.clone();
        let body = self.send_anonymous(call).await?;
        decode_json(&path, &body)
    }
}

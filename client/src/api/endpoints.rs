//! The endpoints of `/api/v1`, one method each.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use fsync_common::limits::{
    MAX_BATCH_BODY, MAX_BLOB_SIZE, MAX_EVENTS_PER_BATCH, MAX_IDS_PER_REQUEST, MAX_PAGES_PER_REQUEST,
};
use fsync_common::pages::{Page, MAX_PAGE_BYTES};
use fsync_common::wire::PageIdsRequest;
use fsync_common::wire::{
    ChangesResponse, ChunkIdsRequest, CommitRequest, CommitResponse, DeleteRequest, DeviceInfo,
    FileMeta, KdfParams, ListResponse, LoginResponse, Manifest, MissingResponse, OpResponse,
    RefreshRequest, RegisterRequest, RegisterResponse, RenameInfo, RenameRequest, RestoreRequest,
    StoredResponse, SyncEvent, SyncEventBatch, SyncEventResponse, SyncEventResult, UsageResponse,
    VersionInfo,
};
use fsync_common::{batch, ChunkId, DeviceId, FileId, NamespaceId, PageId, Seq, VersionNo};

use reqwest::Method;

use super::transport::{api, Call};
use super::{
    ApiClient, ClientError, Credentials, Session, BATCH_ENTRY_HEADER_LEN, BATCH_HEADER_LEN,
    MAX_FETCH_RESPONSE,
};

impl ApiClient {
    // ------------------------------------------------------------------ auth

    /// Key-derivation parameters of `username` (stable fake ones for unknown users).
    pub async fn auth_params(&self, username: &str) -> Result<KdfParams, ClientError> {
        self.send_json(
            Call::get(api("auth/params"))
                .anonymous()
                .query("username", &username),
        )
        .await
    }

    /// Creates an account (does not log in).
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.send_json(Call::post(api("auth/register")).anonymous().json(req)?)
            .await
    }

    /// Logs in with the derived auth key (hex) — never the password. Keeps the tokens,
    /// persists the refresh token, and remembers the credentials (with the device id
    /// the server assigned) to log in again when the refresh token is refused.
    pub async fn login(
        &self,
        username: &str,
        auth_key_hex: &str,
        device_name: &str,
        device_id: Option<DeviceId>,
    ) -> Result<LoginResponse, ClientError> {
        let mut creds = Credentials {
            username: username.to_owned(),
            auth_key_hex: auth_key_hex.to_owned(),
            device_name: device_name.to_owned(),
            device_id,
        };
        let mut s = self.inner.session.lock().await;
        let r = self.login_raw(&creds).await?;
        creds.device_id = Some(r.device_id);
        s.credentials = Some(creds);
        self.store_tokens(&mut s, r.access_token.clone(), r.refresh_token.clone())
            .await?;
        Ok(r)
    }

    /// Opens a session from a stored refresh token (e.g. read with
    /// [`ApiClient::read_token_file`]), without the password. The token rotates.
    pub async fn resume(&self, refresh_token: &str) -> Result<(), ClientError> {
        let mut s = self.inner.session.lock().await;
        let t = self.refresh_raw(refresh_token).await?;
        self.store_tokens(&mut s, t.access_token, t.refresh_token)
            .await
    }

    /// Opens a session from the refresh token in the token file (see
    /// [`ApiClient::with_token_file`]) and remembers the credentials to log in again if
    /// the session is refused later. `Ok(false)`: there is no stored token, or the
    /// server refused it (expired, revoked) — log in instead.
    pub async fn resume_stored(
        &self,
        username: &str,
        auth_key_hex: &str,
        device_name: &str,
        device_id: DeviceId,
    ) -> Result<bool, ClientError> {
        let path = self.token_path();
        let Some(token) = path
            .map(|p| Self::read_token_file(&p))
            .transpose()?
            .flatten()
        else {
            return Ok(false);
        };
        let mut s = self.inner.session.lock().await;
        match self.refresh_raw(&token).await {
            Ok(t) => {
                s.credentials = Some(Credentials {
                    username: username.to_owned(),
                    auth_key_hex: auth_key_hex.to_owned(),
                    device_name: device_name.to_owned(),
                    device_id: Some(device_id),
                });
                self.store_tokens(&mut s, t.access_token, t.refresh_token)
                    .await?;
                Ok(true)
            }
            Err(ClientError::Unauthorized(why)) => {
                tracing::info!(reason = %why, "the stored session was refused; logging in again");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the session on the server (its refresh token stops working), forgets the
    /// tokens and credentials and deletes the token file.
    pub async fn logout(&self) -> Result<(), ClientError> {
        // The body carries the refresh token, which a renewal rotates: renew by hand,
        // then rebuild the body.
        for attempt in 0..2 {
            let refresh = self.inner.session.lock().await.refresh.clone();
            let Some(refresh) = refresh else { break };
            let token = self.access_token().await?;
            let mut call = Call::post(api("auth/logout")).json(&RefreshRequest {
                refresh_token: refresh,
            })?;
            call.renew = false;
            match self.send(call).await {
                Ok(_) => break,
                Err(ClientError::Unauthorized(_)) if attempt == 0 => {
                    self.renew(Some(&token)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut s = self.inner.session.lock().await;
        *s = Session::default();
        self.persist_refresh(None).await
    }

    /// The user's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.send_json(Call::get(api("devices"))).await
    }

    /// The stored bytes of the user's namespaces and the quota the operator set.
    pub async fn usage(&self) -> Result<UsageResponse, ClientError> {
        self.send_json(Call::get(api("usage"))).await
    }

    /// Revokes one of the user's devices: its tokens stop working at once.
    pub async fn revoke_device(&self, id: DeviceId) -> Result<(), ClientError> {
        self.send(Call::new(Method::DELETE, api(&format!("devices/{id}"))))
            .await
            .map(drop)
    }

    // ------------------------------------------------------------------ chunks

    /// The subset of `ids` the server does not hold in `ns` (split into requests of at
    /// most `MAX_IDS_PER_REQUEST` ids).
    pub async fn missing(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, ClientError> {
        let mut out = Vec::new();
        for part in ids.chunks(MAX_IDS_PER_REQUEST) {
            let call = Call::post(api("chunks/missing")).json(&ChunkIdsRequest {
                namespace: ns,
                ids: part.to_vec(),
            })?;
            let r: MissingResponse = self.send_json(call).await?;
            let asked: HashSet<&ChunkId> = part.iter().collect();
            if let Some(bad) = r.missing.iter().find(|id| !asked.contains(id)) {
                return Err(ClientError::Protocol(format!(
                    "chunks/missing answered chunk {bad}, which was not asked"
                )));
            }
            out.extend(r.missing);
        }
        Ok(out)
    }

    /// Uploads one blob (idempotent).
    pub async fn put_chunk(
        &self,
        ns: NamespaceId,
        id: ChunkId,
        blob: Vec<u8>,
    ) -> Result<(), ClientError> {
        let call = Call::new(Method::PUT, api(&format!("chunks/{id}")))
            .query("namespace", &ns)
            .bytes(blob);
        self.send(call).await.map(drop)
    }

    /// Stores a batch built with [`batch::BatchBuilder`] in one request (the caller
    /// kept it within `MAX_BATCH_BODY` and `MAX_IDS_PER_REQUEST`); the body is sent as
    /// it is, not copied.
    pub async fn put_batch_body(
        &self,
        ns: NamespaceId,
        built: batch::BatchBuilder,
    ) -> Result<(), ClientError> {
        let entries = built.entries();
        if entries == 0 {
            return Ok(());
        }
        let call = Call::post(api("chunks/batch"))
            .query("namespace", &ns)
            .bytes(built.into_body());
        let r: StoredResponse = self.send_json(call).await?;
        if (r.stored + r.existing) as usize != entries {
            return Err(ClientError::Protocol(format!(
                "chunks/batch accounted for {} of {entries} blobs",
                r.stored + r.existing,
            )));
        }
        Ok(())
    }

    /// Uploads many blobs in as few batch requests as the limits allow
    /// (`MAX_BATCH_BODY` bytes and `MAX_IDS_PER_REQUEST` blobs per request; an
    /// oversized blob goes alone, to the server's refusal).
    pub async fn put_batch(
        &self,
        ns: NamespaceId,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), ClientError> {
        let mut built = batch::BatchBuilder::default();
        for (id, blob) in blobs {
            if !built.fits(blob.len(), MAX_BATCH_BODY, MAX_IDS_PER_REQUEST) {
                self.put_batch_body(ns, std::mem::take(&mut built)).await?;
            }
            built.push(id, blob);
        }
        self.put_batch_body(ns, built).await
    }

    /// Downloads one blob.
    pub async fn get_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        let call = Call::get(api(&format!("chunks/{id}")))
            .query("namespace", &ns)
            .max_response(MAX_BLOB_SIZE);
        self.send(call).await
    }

    /// Downloads the blobs of `ids` that the server holds, in the order of `ids`
    /// (duplicates asked once); absent ids are left out. Requests again until every
    /// present blob arrived, as the server cuts an answer at `MAX_BATCH_BODY`. An entry
    /// that was not asked for, comes twice, or exceeds `MAX_BLOB_SIZE` is a
    /// [`ClientError::Protocol`].
    pub async fn fetch_batch(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, ClientError> {
        let mut seen = HashSet::with_capacity(ids.len());
        let wanted: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let mut got: HashMap<ChunkId, Vec<u8>> = HashMap::with_capacity(wanted.len());
        for group in wanted.chunks(MAX_IDS_PER_REQUEST) {
            let mut pending: Vec<ChunkId> = group.to_vec();
            while !pending.is_empty() {
                let call = Call::post(api("chunks/fetch"))
                    .json(&ChunkIdsRequest {
                        namespace: ns,
                        ids: pending.clone(),
                    })?
                    .max_response(MAX_FETCH_RESPONSE);
                let body = self.send(call).await?;
                let entries = batch::decode(&body, MAX_BLOB_SIZE).map_err(|e| {
                    ClientError::Protocol(format!("chunks/fetch answered a bad batch: {e}"))
                })?;
                if entries.is_empty() {
                    // Whatever is still pending is absent.
                    break;
                }
                let asked: HashSet<ChunkId> = pending.iter().copied().collect();
                for (id, blob) in entries {
                    if !asked.contains(&id) || got.contains_key(&id) {
                        return Err(ClientError::Protocol(format!(
                            "chunks/fetch answered chunk {id}, which was not asked or came twice"
                        )));
                    }
                    got.insert(id, blob.to_vec());
                }
                pending.retain(|id| !got.contains_key(id));
            }
        }
        Ok(wanted
            .into_iter()
            .filter_map(|id| got.remove(&id).map(|b| (id, b)))
            .collect())
    }

    // ------------------------------------------------------------------ files

    /// Commits a manifest whose chunks are stored. A 409 `missing_chunks` becomes
    /// [`ClientError::MissingChunks`] with the ids to upload first.
    pub async fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, ClientError> {
        self.send_json(Call::post(api("files/upload")).json(req)?)
            .await
    }

    /// Tombstones a path (applies only to the version the client saw).
    pub async fn delete(&self, req: &DeleteRequest) -> Result<OpResponse, ClientError> {
        self.send_json(Call::post(api("files/delete")).json(req)?)
            .await
    }

    /// Renames a file or a folder (no data moves).
    pub async fn rename(&self, req: &RenameRequest) -> Result<OpResponse, ClientError> {
        self.send_json(Call::post(api("files/rename")).json(req)?)
            .await
    }

    /// One page of the files of `ns` in path order, after `after`.
    pub async fn list_page(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, ClientError> {
        let mut call = Call::get(api("files/list"))
            .query("namespace", &ns)
            .query("include_deleted", &include_deleted)
            .query("limit", &limit);
        if let Some(p) = prefix {
            call = call.query("prefix", &p);
        }
        if let Some(a) = after {
            call = call.query("after", &a);
        }
        self.send_json(call).await
    }

    /// Every file of `ns` (below `prefix`), following the pages.
    pub async fn list_all(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<FileMeta>, ClientError> {
        let limit = self.inner.page_size.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_page(ns, prefix, include_deleted, after.as_deref(), limit)
                .await?;
            out.extend(page.files);
            match page.next {
                Some(next) if after.as_deref().is_none_or(|a| a < next.as_str()) => {
                    after = Some(next);
                }
                Some(next) => {
                    return Err(ClientError::Protocol(format!(
                        "files/list does not advance: next {next:?} after {after:?}"
                    )))
                }
                None => return Ok(out),
            }
        }
    }

    /// The manifest of a file's head, or of `version`.
    pub async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError> {
        let mut call = Call::get(api(&format!("files/download/{file}")));
        if let Some(v) = version {
            call = call.query("version", &v.0);
        }
        self.send_json(call).await
    }

    /// The manifests of many file versions, in order (requests of at most
    /// `MAX_EVENTS_PER_BATCH` files each). With `as_pages`, a version of more than
    /// one manifest page comes as its page ids (`Manifest::pages`), to fetch with
    /// [`ApiClient::fetch_pages`] those not known.
    pub async fn manifests(
        &self,
        ns: NamespaceId,
        files: &[(FileId, VersionNo)],
        as_pages: bool,
    ) -> Result<Vec<Manifest>, ClientError> {
        let mut out = Vec::with_capacity(files.len());
        for part in files.chunks(MAX_EVENTS_PER_BATCH) {
            let ask = |pages| {
                Call::post(api("files/manifests")).json(&fsync_common::wire::ManifestsRequest {
                    namespace: ns,
                    files: part.to_vec(),
                    pages,
                })
            };
            let got: Vec<Manifest> = match self.send_json(ask(as_pages)?).await {
                // A server before manifest pages refuses the field: ask for whole lists.
                Err(ClientError::Api { status: 400, .. }) if as_pages => {
                    self.send_json(ask(false)?).await?
                }
                r => r?,
            };
            if got.len() != part.len()
                || got
                    .iter()
                    .zip(part)
                    .any(|(m, (f, v))| m.meta.file_id != *f || m.meta.version != *v)
            {
                return Err(ClientError::Protocol(
                    "files/manifests answered other files than asked".into(),
                ));
            }
            out.extend(got);
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ pages

    /// Stores manifest pages (`pages/batch`, up to `MAX_PAGES_PER_REQUEST` a request).
    /// Their chunks must be stored: a 409 naming missing ones is
    /// [`ClientError::MissingChunks`].
    pub async fn put_pages(&self, ns: NamespaceId, pages: &[Page]) -> Result<(), ClientError> {
        for part in pages.chunks(MAX_PAGES_PER_REQUEST) {
            let mut body = Vec::with_capacity(
                BATCH_HEADER_LEN
                    + part
                        .iter()
                        .map(|p| BATCH_ENTRY_HEADER_LEN + p.body().len())
                        .sum::<usize>(),
            );
            batch::encode_header(&mut body);
            for p in part {
                // The batch framing carries 32-byte ids typed as chunk ids.
                batch::encode_entry(
                    &mut body,
                    &ChunkId::from_bytes(*p.id().as_bytes()),
                    p.body(),
                );
            }
            let call = Call::post(api("pages/batch"))
                .query("namespace", &ns)
                .bytes(body);
            let r: StoredResponse = self.send_json(call).await?;
            if (r.stored + r.existing) as usize != part.len() {
                return Err(ClientError::Protocol(format!(
                    "pages/batch accounted for {} of {} pages",
                    r.stored + r.existing,
                    part.len()
                )));
            }
        }
        Ok(())
    }

    /// Fetches manifest pages, each checked against its id and decoded, in the order
    /// asked; those the server does not hold (collected since it named them) are left
    /// out. One that does not match its id is a [`ClientError::Protocol`].
    pub async fn fetch_pages(
        &self,
        ns: NamespaceId,
        ids: &[PageId],
    ) -> Result<Vec<Page>, ClientError> {
        let mut seen = HashSet::with_capacity(ids.len());
        let wanted: Vec<PageId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let mut out = Vec::with_capacity(wanted.len());
        for part in wanted.chunks(MAX_PAGES_PER_REQUEST) {
            let call = Call::post(api("pages/fetch"))
                .json(&PageIdsRequest {
                    namespace: ns,
                    ids: part.to_vec(),
                })?
                .max_response(
                    BATCH_HEADER_LEN + part.len() * (BATCH_ENTRY_HEADER_LEN + MAX_PAGE_BYTES),
                );
            let body = self.send(call).await?;
            let entries = batch::decode(&body, MAX_PAGE_BYTES).map_err(|e| {
                ClientError::Protocol(format!("pages/fetch answered a bad batch: {e}"))
            })?;
            let mut got: HashMap<PageId, Page> = HashMap::with_capacity(entries.len());
            for (id, b) in entries {
                let id = PageId::from_bytes(*id.as_bytes());
                let page = Page::from_body(id, b)
                    .map_err(|e| ClientError::Protocol(format!("pages/fetch: {e}")))?;
                got.insert(id, page);
            }
            out.extend(part.iter().filter_map(|id| got.remove(id)));
        }
        Ok(out)
    }

    /// A file's history.
    pub async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, ClientError> {
        self.send_json(Call::get(api(&format!("files/{file}/versions"))))
            .await
    }

    /// The renames of a file, oldest first.
    pub async fn renames(&self, file: FileId) -> Result<Vec<RenameInfo>, ClientError> {
        self.send_json(Call::get(api(&format!("files/{file}/renames"))))
            .await
    }

    /// Makes `version` the head again, as a new version.
    pub async fn restore(
        &self,
        file: FileId,
        version: VersionNo,
    ) -> Result<CommitResponse, ClientError> {
        let call =
            Call::post(api(&format!("files/{file}/restore"))).json(&RestoreRequest { version })?;
        self.send_json(call).await
    }

    // ------------------------------------------------------------------ sync

    /// Applies events in order (in batches of at most `MAX_EVENTS_PER_BATCH`); one
    /// result per event, in order. A failed event does not stop the others. When a
    /// later batch fails, earlier ones were applied: resending them is safe, as every
    /// event carries an idempotency key.
    pub async fn events(
        &self,
        events: Vec<SyncEvent>,
    ) -> Result<Vec<SyncEventResult>, ClientError> {
        let mut out = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let part: Vec<SyncEvent> = events.by_ref().take(MAX_EVENTS_PER_BATCH).collect();
            let n = part.len();
            let call = Call::post(api("sync/event")).json(&SyncEventBatch { events: part })?;
            let r: SyncEventResponse = self.send_json(call).await?;
            if r.results.len() != n {
                return Err(ClientError::Protocol(format!(
                    "sync/event answered {} results for {n} events",
                    r.results.len()
                )));
            }
            out.extend(r.results);
        }
        Ok(out)
    }

    /// Journal entries of `ns` after `since` (at most `limit`, which the server clamps).
    pub async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, ClientError> {
        self.send_json(
            Call::get(api("sync/changes"))
                .query("namespace", &ns)
                .query("since", &since.0)
                .query("limit", &limit),
        )
        .await
    }
}

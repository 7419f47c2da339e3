//! `fsync-server admin`: the operator's tools, on the server's own configuration
//! (flags, environment, `.env`), safe while the server serves. They work on the
//! database directly: every request checks the account and the device there, so a
//! disabled account or a revoked device is refused at once by every node; open push
//! sockets close at once on PostgreSQL (told through `NOTIFY`) and within a heartbeat
//! (20 s) on SQLite.
//!
//! ```text
//! fsync-server admin users list|show USER|disable USER|enable USER|delete USER --yes
//! fsync-server admin devices list USER|revoke USER DEVICE
//! fsync-server admin quota set USER BYTES|none
//! ```

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use fsync_common::size;
use fsync_common::{DeviceId, NamespaceId};

use crate::db::{self, DbUrl, MetaRepo, UserSummary};
use crate::fanout::{self, Event};
use crate::StorageConfig;

/// `fsync-server admin …`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Print JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The operator's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Accounts: list, show, disable, enable, delete.
    #[command(subcommand)]
    Users(UsersCommand),
    /// An account's devices: list, revoke.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Storage quotas.
    #[command(subcommand)]
    Quota(QuotaCommand),
}

/// `admin users …`.
#[derive(Debug, Clone, Subcommand)]
pub enum UsersCommand {
    /// Every account with its stored bytes, quota, files and devices.
    List,
    /// One account in full.
    Show {
        /// Username.
        username: String,
    },
    /// Refuse the account's logins and tokens from now on (nothing is deleted).
    Disable {
        /// Username.
        username: String,
    },
    /// Let a disabled account in again.
    Enable {
        /// Username.
        username: String,
    },
    /// Delete the account, its devices, and the folders it owns with their history and
    /// blobs, for good.
    Delete {
        /// Username.
        username: String,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// `admin devices …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DevicesCommand {
    /// The account's devices, revoked ones too.
    List {
        /// Username.
        username: String,
    },
    /// Revoke a device: its tokens stop working and its sockets close.
    Revoke {
        /// Username.
        username: String,
        /// Device id (hex, as `devices list` shows it).
        device: DeviceId,
    },
}

/// `admin quota …`.
#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// Cap the stored bytes of the folders an account owns: `10GiB`, `500MB`, `2T`, a
    /// number of bytes, or `none`. Uploads past it are refused; nothing stored is lost.
    Set {
        /// Username.
        username: String,
        /// The quota, or `none` to remove it.
        #[arg(value_parser = parse_quota)]
        bytes: Quota,
    },
}

/// A quota as given on the command line: `None` for `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota(pub Option<u64>);

fn parse_quota(s: &str) -> Result<Quota, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Quota(None));
    }
    size::parse(s).map(|n| Quota(Some(n)))
}

/// Runs an admin command on the stores `storage` names (which must exist).
pub async fn run(storage: &StorageConfig, args: &AdminArgs) -> anyhow::Result<()> {
    if let Some(why) = db::not_a_server_store(storage, "fsync-server admin").await? {
        bail!(why);
    }
    let url = storage.database_url();
    let repo = db::open(&url).await.context("opening the database")?;
    let admin = Admin {
        repo,
        url,
        json: args.json,
        storage,
    };
    match &args.command {
        AdminCommand::Users(c) => admin.users(c).await,
        AdminCommand::Devices(c) => admin.devices(c).await,
        AdminCommand::Quota(QuotaCommand::Set { username, bytes }) => {
            let user = admin.user(username).await?;
            admin.repo.set_quota(user.id, bytes.0).await?;
            admin.done(
                &serde_json::json!({"username": user.username, "quota_bytes": bytes.0}),
                &match bytes.0 {
                    Some(q) => format!(
                        "quota of {} set to {} ({} used)",
                        user.username,
                        size::format(q),
                        size::format(user.stored_bytes)
                    ),
                    None => format!("quota of {} removed", user.username),
                },
            )
        }
    }
}

struct Admin<'a> {
    repo: Arc<dyn MetaRepo>,
    url: String,
    json: bool,
    storage: &'a StorageConfig,
}

impl Admin<'_> {
    /// The account named `username`, or an error saying there is none.
    async fn user(&self, username: &str) -> anyhow::Result<UserSummary> {
        self.repo
            .users(Some(username))
            .await?
            .into_iter()
            .next()
            .with_context(|| {
                format!(
                    "no account named {username:?} (`fsync-server admin users list` lists them)"
                )
            })
    }

    /// Prints the outcome of a change: `value` with `--json`, else `text`.
    fn done(&self, value: &serde_json::Value, text: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        Ok(())
    }

    /// Tells the other nodes' sockets of `devices` to close (PostgreSQL; on SQLite the
    /// one server process sees it at its sockets' next heartbeat).
    async fn tell_nodes(&self, devices: &[DeviceId]) {
        if let Ok(DbUrl::Postgres(url)) = db::parse_url(&self.url) {
            let events: Vec<Event> = devices.iter().map(|d| Event::Revoked(*d)).collect();
            if let Err(e) = fanout::publish_once(url, &events).await {
                eprintln!(
                    "fsync-server admin: could not tell the servers' open sockets ({e}); \
                     they close at their next heartbeat"
                );
            }
        }
    }

    async fn users(&self, c: &UsersCommand) -> anyhow::Result<()> {
        match c {
            UsersCommand::List => {
                let users = self.repo.users(None).await?;
                if self.json {
                    println!("{}", serde_json::to_string(&users)?);
                } else {
                    print_users(&users);
                }
                Ok(())
            }
            UsersCommand::Show { username } => {
                let user = self.user(username).await?;
                if self.json {
                    println!("{}", serde_json::to_string(&user)?);
                } else {
                    print_user(&user);
                }
                Ok(())
            }
            UsersCommand::Disable { username } | UsersCommand::Enable { username } => {
                let disable = matches!(c, UsersCommand::Disable { .. });
                let user = self.user(username).await?;
                let devices = self.repo.set_disabled(user.id, disable).await?;
                if disable {
                    self.tell_nodes(&devices).await;
                }
                let verb = if disable { "disabled" } else { "enabled" };
                self.done(
                    &serde_json::json!({"username": user.username, "disabled": disable}),
                    &format!("{} {verb}", user.username),
                )
            }
            UsersCommand::Delete { username, yes } => {
                let user = self.user(username).await?;
                if !yes {
                    bail!(
                        "deleting {} removes its {} devices and its {} files ({}, {} stored) \
                         with every version, for good; run again with --yes to do it",
                        user.username,
                        user.devices,
                        user.files,
                        size::format(user.file_bytes),
                        size::format(user.stored_bytes)
                    );
                }
                let gone = self.repo.delete_user(user.id).await?;
                self.tell_nodes(&gone.devices).await;
                let (packs, bytes) = self.delete_blobs(&gone.namespaces).await?;
                self.done(
                    &serde_json::json!({
                        "username": user.username,
                        "devices": gone.devices.len(),
                        "namespaces": gone.namespaces.len(),
                        "blobs_deleted": packs,
                        "bytes_deleted": bytes,
                    }),
                    &format!(
                        "deleted {}: {} devices, {} folders, {} blob files ({})",
                        user.username,
                        gone.devices.len(),
                        gone.namespaces.len(),
                        packs,
                        size::format(bytes)
                    ),
                )
            }
        }
    }

    /// Deletes every pack and loose blob of `namespaces` (already gone from the
    /// database). Returns how many files and bytes went.
    async fn delete_blobs(&self, namespaces: &[NamespaceId]) -> anyhow::Result<(u64, u64)> {
        const PAGE: usize = 1000;
        let packs = self.storage.open_packs()?;
        let loose = fsync_store::LocalStore::open(self.storage.files_directory())?;
        let (mut files, mut bytes) = (0u64, 0u64);
        for ns in namespaces {
            // Deleting from the start of the listing each time: what is deleted is no
            // longer listed.
            loop {
                let page = packs.list(ns, None, PAGE).await?;
                for p in &page {
                    if packs.delete(ns, &p.id).await? {
                        files += 1;
                        bytes += p.size;
                    }
                }
                if page.len() < PAGE {
                    break;
                }
            }
            loop {
                let page = fsync_store::BlobStore::list(&loose, ns, None, PAGE).await?;
                for b in &page {
                    if fsync_store::BlobStore::delete(&loose, ns, &b.id).await? {
                        files += 1;
                        bytes += b.size;
                    }
                }
                if page.len() < PAGE {
                    break;
                }
            }
        }
        Ok((files, bytes))
    }

    async fn devices(&self, c: &DevicesCommand) -> anyhow::Result<()> {
        match c {
            DevicesCommand::List { username } => {
                let user = self.user(username).await?;
                let devices = self.repo.list_devices(user.id).await?;
                if self.json {
                    println!("{}", serde_json::to_string(&devices)?);
                    return Ok(());
                }
                println!(
                    "{:<16}  {:<24}  {:<8}  {:<20}  LAST SEEN",
                    "DEVICE", "NAME", "STATUS", "CREATED"
                );
                for d in &devices {
                    println!(
                        "{:<16}  {:<24}  {:<8}  {:<20}  {}",
                        d.id,
                        d.name,
                        if d.revoked { "revoked" } else { "active" },
                        utc(Some(d.created_at)),
                        utc(Some(d.last_seen))
                    );
                }
                Ok(())
            }
            DevicesCommand::Revoke { username, device } => {
                let user = self.user(username).await?;
                if !self.repo.revoke_device(user.id, *device).await? {
                    bail!(
                        "{} has no device {device} (`fsync-server admin devices list {}` lists them)",
                        user.username,
                        user.username
                    );
                }
                self.tell_nodes(&[*device]).await;
                self.done(
                    &serde_json::json!({"username": user.username, "revoked": device}),
                    &format!("device {device} of {} revoked", user.username),
                )
            }
        }
    }
}

/// A time as `2026-12-08 14:03 UTC` (`never` for none).
fn utc(secs: Option<i64>) -> String {
    secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || "never".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
}

fn quota_text(q: Option<u64>) -> String {
    q.map_or_else(|| "none".to_owned(), size::format)
}

fn print_users(users: &[UserSummary]) {
    println!(
        "{:<20}  {:<8}  {:>10}  {:>10}  {:>8}  {:>7}  LAST SEEN",
        "USERNAME", "STATUS", "STORED", "QUOTA", "FILES", "DEVICES"
    );
    for u in users {
        println!(
            "{:<20}  {:<8}  {:>10}  {:>10}  {:>8}  {:>7}  {}",
            u.username,
            if u.disabled { "disabled" } else { "active" },
            size::format(u.stored_bytes),
            quota_text(u.quota_bytes),
            u.files,
            u.devices,
            utc(u.last_seen)
        );
    }
    let total: u64 = users.iter().map(|u| u.stored_bytes).sum();
    println!("{} accounts, {} stored", users.len(), size::format(total));
}

fn print_user(u: &UserSummary) {
    println!("username   {}", u.username);
    println!("id         {}", u.id);
    println!("email      {}", u.email.as_deref().unwrap_or("(none)"));
    println!(
        "status     {}",
        if u.disabled { "disabled" } else { "active" }
    );
    println!("created    {}", utc(Some(u.created_at)));
    println!("last seen  {}", utc(u.last_seen));
    println!(
        "stored     {} of quota {}",
        size::format(u.stored_bytes),
        quota_text(u.quota_bytes)
    );
    println!("files      {} ({})", u.files, size::format(u.file_bytes));
    println!("devices    {} active", u.devices);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_with_units_or_none() {
        assert_eq!(parse_quota("none"), Ok(Quota(None)));
        assert_eq!(parse_quota("NONE"), Ok(Quota(None)));
        assert_eq!(parse_quota("10GiB"), Ok(Quota(Some(10 << 30))));
        assert_eq!(parse_quota("1500"), Ok(Quota(Some(1500))));
        assert!(parse_quota("lots").unwrap_err().contains("not a size"));
    }
}

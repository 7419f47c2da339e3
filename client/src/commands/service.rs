//! `service install|uninstall`: the daemon of one folder as a systemd user unit.
//!
//! The unit runs this executable with the folder's flags (server, account, TLS trust,
//! state dir, device name). Every key derives from the password, so the daemon needs
//! it at each start: it goes into an environment file beside the unit's name under
//! the config directory, mode 0600, checked by logging in before anything is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};

use super::{login, open_folder, password, Opts};

/// Where systemd looks for the user's own units (`FSYNC_SYSTEMD_USER_DIR` overrides,
/// for tests), and where the password files go.
fn dirs() -> anyhow::Result<(PathBuf, PathBuf)> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set: cannot find ~/.config")?,
        )
        .join(".config"),
    };
    let units = std::env::var_os("FSYNC_SYSTEMD_USER_DIR")
        .map_or_else(|| config.join("systemd/user"), PathBuf::from);
    Ok((units, config.join("fsync")))
}

/// The unit of a folder: `fsync-client-<folder name>-<8 hex of its path>.service`, so
/// that several folders get units of their own.
pub fn unit_name(root: &Path) -> String {
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let hash = Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("fsync-client-{base}-{}.service", hex::encode(&hash[..4]))
}

/// One `ExecStart` argument, quoted for systemd: in double quotes, `\` and `"` escaped,
/// `%` (specifiers) and `$` (variables) doubled.
fn quote(arg: &str) -> anyhow::Result<String> {
    quoted(arg, true)
}

/// `arg` in double quotes with `\` and `"` escaped; with `expanded`, also `%` and `$`
/// doubled (a unit's `ExecStart` expands them, an environment file does not).
fn quoted(arg: &str, expanded: bool) -> anyhow::Result<String> {
    if arg.chars().any(char::is_control) {
        bail!(
            "a value holds a control character (a line break?): it cannot go into a systemd unit"
        );
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' if expanded => out.push_str("%%"),
            '$' if expanded => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
    let abs = abs.to_string_lossy().into_owned();
    if abs.chars().any(char::is_control) {
        bail!("{abs:?} holds a control character: it cannot go into a systemd unit");
    }
    Ok(abs)
}

/// A path argument of `ExecStart`, quoted.
fn path_arg(p: &Path) -> anyhow::Result<String> {
    quote(&absolute(p)?)
}

/// `ExecStart`'s executable: quoted with `%` doubled, but not `$` (systemd substitutes
/// variables in the arguments only).
fn exe_arg(p: &Path) -> anyhow::Result<String> {
    Ok(quoted(&absolute(p)?, false)?.replace('%', "%%"))
}

/// The unit's text.
fn unit_text(
    opts: &Opts,
    root: &Path,
    env_file: &Path,
    sync_interval: u64,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut args = vec![
        exe_arg(&exe)?,
        "--watch-dir".into(),
        path_arg(root)?,
        "--server-url".into(),
        quote(opts.server_url())?,
        "--username".into(),
        quote(super::username(&opts.account)?)?,
    ];
    if let Some(ca) = &opts.account.ca_cert {
        args.extend(["--ca-cert".into(), path_arg(ca)?]);
    }
    if let Some(fp) = &opts.account.server_fingerprint {
        args.extend(["--server-fingerprint".into(), quote(&fp.to_string())?]);
    }
    if let Some(d) = &opts.folder.state_dir {
        args.extend(["--state-dir".into(), path_arg(d)?]);
    }
    if let Some(n) = &opts.folder.device_name {
        args.extend(["--device-name".into(), quote(n)?]);
    }
    if let Some(t) = opts.account.timeout {
        args.extend(["--timeout".into(), t.to_string()]);
    }
    if let Some(c) = opts.chunk_size {
        args.extend(["--chunk-size".into(), c.to_string()]);
    }
    args.extend(["--sync-interval".into(), sync_interval.to_string()]);
    Ok(format!(
        "# Written by `fsync-client service install`; `fsync-client service uninstall` removes it.\n\
         [Unit]\n\
         Description=fsync: keeps {root} in sync\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         # FSYNC_PASSWORD (mode 0600): every key derives from it.\n\
         EnvironmentFile={env}\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # SIGTERM: the daemon finishes or safely abandons the current round, then exits.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=60\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        root = absolute(root)?.replace('%', "%%"),
        exec = args.join(" "),
        // Taken as it is (no quotes, no escapes), after `%` specifiers.
        env = absolute(env_file)?.replace('%', "%%"),
    ))
}

/// Runs `systemctl --user ARGS`; its error output on failure.
fn systemctl(args: &[&str]) -> Result<(), String> {
    match Command::new("systemctl").arg("--user").args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run systemctl: {e}")),
    }
}

/// `service install`: checks the password by logging in, writes the password file and
/// the unit, and (unless `no_enable`) enables and starts it.
pub async fn install(opts: &Opts, no_enable: bool, sync_interval: u64) -> anyhow::Result<()> {
    let folder = open_folder(opts)?;
    // Asked once: the answer that logs in is the one stored.
    let pass = password(&opts.account)?;
    let checked = Opts {
        account: crate::AccountArgs {
            password: Some(pass.clone()),
            ..opts.account.clone()
        },
        folder: opts.folder.clone(),
        chunk_size: opts.chunk_size,
        reset: opts.reset,
    };
    // A wrong password written into the unit would fail at every start: check it.
    login(&checked, &folder)
        .await
        .context("logging in, to check the password before it is stored")?;
    let (units, secrets) = dirs()?;
    let unit = unit_name(&folder.root);
    let unit_path = units.join(&unit);
    let env_path = secrets.join(format!("{}.env", unit.trim_end_matches(".service")));
    // Both files' text first: nothing is written unless all of it can be.
    let env = format!(
        "# Written by `fsync-client service install` (read by systemd only).\nFSYNC_PASSWORD={}\n",
        quoted(&pass, false)?,
    );
    let text = unit_text(opts, &folder.root, &env_path, sync_interval)?;
    for d in [&units, &secrets] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fsync_common::durable::write_atomic(&env_path, env.as_bytes(), Some(0o600))
        .with_context(|| format!("writing {}", env_path.display()))?;
    fsync_common::durable::write_atomic(&unit_path, text.as_bytes(), Some(0o644))
        .with_context(|| format!("writing {}", unit_path.display()))?;
    println!("wrote {}", unit_path.display());
    println!(
        "wrote {} (mode 0600: the password; whoever reads it can decrypt the folder)",
        env_path.display()
    );
    if no_enable {
        println!(
            "start it with: systemctl --user daemon-reload && systemctl --user enable --now {unit}"
        );
        return Ok(());
    }
    // `restart`: a unit already running (a second install) takes the new flags.
    let enabled = systemctl(&["daemon-reload"])
        .and_then(|()| systemctl(&["enable", &unit]))
        .and_then(|()| systemctl(&["restart", &unit]));
    if let Err(why) = enabled {
        bail!(
            "the unit is written, but systemctl --user could not enable it ({why}); in your \
             login session run: systemctl --user daemon-reload && systemctl --user enable --now {unit}"
        );
    }
    println!(
        "enabled and started {unit} (it starts at login; `systemctl --user status {unit}`, \
         logs: `journalctl --user -u {unit}`; to run it without a login session too: \
         `loginctl enable-linger`)"
    );
    Ok(())
}

/// `service uninstall`: stops and disables the folder's unit, removes it and its
/// password file.
pub fn uninstall(opts: &Opts) -> anyhow::Result<()> {
    let root = super::watch_dir(&opts.folder)?;
    let (units, secrets) = dirs()?;
    let unit = unit_name(&root);
    let unit_path = units.join(&unit);
    let env_path = secrets.join(format!("{}.env", unit.trim_end_matches(".service")));
    if !unit_path.exists() && !env_path.exists() {
        bail!(
            "no service is installed for {} (no {})",
            root.display(),
            unit_path.display()
        );
    }
    if let Err(why) = systemctl(&["disable", "--now", &unit]) {
        // With no user manager to ask, none runs the unit either.
        eprintln!("fsync-client: systemctl --user disable --now {unit}: {why}");
    }
    for p in [&unit_path, &env_path] {
        match std::fs::remove_file(p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    let _ = systemctl(&["daemon-reload"]);
    Ok(())
}

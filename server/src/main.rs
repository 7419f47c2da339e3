//! `fsync-server`: parses options, opens storage, serves until Ctrl-C or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use fsync_server::{
    build_state, cert_fingerprint, load_server_config, run, run_tls, Config, LogFormat,
    ServerCommand,
};

fn init_logging(config: &Config) -> anyhow::Result<()> {
    // Validated when parsed; a failure here would be a bug, not a silent fallback.
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("--log-level {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only on a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once (no backtrace: this is the operator's message).
            eprintln!("fsync-server: {}", fsync_common::one_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    fsync_server::load_dotenv().context("reading .env in the working directory")?;
    let config = Config::parse();
    if let Some(ServerCommand::Admin(args)) = &config.command {
        // The answer on stdout, warnings on stderr, nothing else.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .with_target(false)
            .init();
        return fsync_server::admin::run(&config.storage, args).await;
    }
    init_logging(&config)?;
    if fsync_common::failpoint::init() {
        tracing::warn!("fault injection is armed (FSYNC_FAILPOINTS): test use only");
    }
    let pair = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ if config.tls_self_signed => Some(fsync_server::self_signed(
            &config.storage.data_dir.join("tls"),
            &config.tls_names,
        )?),
        _ => None,
    };
    let tls = match &pair {
        Some((cert, key)) => Some((load_server_config(cert, key)?, cert_fingerprint(cert)?)),
        None => None,
    };
    let mut state = build_state(&config).await.context("starting the server")?;
    if let Some((_, fingerprint)) = &tls {
        state.tls_fingerprint = Some(fingerprint.as_str().into());
        // On stdout, for the operator to hand to clients (and for scripts).
        println!("TLS certificate SHA-256 fingerprint: {fingerprint}");
        if config.tls_self_signed {
            println!("clients trust this self-signed certificate with --server-fingerprint {fingerprint}");
        }
    }
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        database = %redact(&config.database_url()),
        "fsync-server listening"
    );
    match tls {
        Some((tls, _)) => run_tls(listener, tls, state, shutdown_signal()).await?,
        None => run(listener, state, shutdown_signal()).await?,
    }
    Ok(())
}

/// Drops the password from a database URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

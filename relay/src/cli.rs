//! The `trackway-relay` command: load the configuration, set up logging, bind the admin listener, run
//! until SIGTERM or SIGINT. Exit code 0 after a clean shutdown, 2 for a bad setting, 1 otherwise.

use std::process::ExitCode;

use crate::{config::Settings, telemetry, Error, Shutdown};

/// Runs the relay as a process.
pub fn main() -> ExitCode {
    let mut config = match Settings::load(std::env::args_os()) {
        Ok(config) => config,
        Err(Error::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("trackway-relay: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Signal handlers first, so a SIGTERM during start-up is a clean shutdown too.
        let shutdown = Shutdown::new();
        tokio::spawn(cancel_on_signal(signals(), shutdown.clone()));
        let listeners = crate::Listeners::bind(&mut config).await?;
        crate::run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and logs both: every live client is a file
/// descriptor, and when descriptors run out the relay's own reconnects to PostgreSQL and Redis fail too.
fn raise_open_files_limit() {
    use rlimit::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::NOFILE, hard, hard) {
            Ok(()) => tracing::info!(soft = hard, hard, was = soft, "open-files limit raised to its hard limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit"),
        },
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// SIGTERM, registered now (not when a task first polls), or `None` where it cannot be.
#[cfg(unix)]
fn signals() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            None
        }
    }
}

#[cfg(not(unix))]
fn signals() -> Option<()> {
    None
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
#[cfg(unix)]
async fn cancel_on_signal(terminate: Option<tokio::signal::unix::Signal>, shutdown: Shutdown) {
    let terminate = async {
        match terminate {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing the batch in flight, then stopping"),
        () = terminate => tracing::info!("SIGTERM: finishing the batch in flight, then stopping"),
    }
    shutdown.cancel();
}

/// Cancels `shutdown` at the first Ctrl-C.
#[cfg(not(unix))]
async fn cancel_on_signal(_: Option<()>, shutdown: Shutdown) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

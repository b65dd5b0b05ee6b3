//! Supervision: each of the relay's tasks runs until shutdown, and one that ends before it ends the relay
//! (see README "Supervision"). `lib.rs` supervises the consumer, the admin server, the sampler and the
//! live side; the live side its feed and LISTEN tasks, with the same rule ([`ended`]).

use crate::{Error, Shutdown};

/// Waits for the relay's tasks. Each runs until shutdown; one that ends before it (a panic, a server that
/// stopped) stops the relay: the others are shut down and its error is returned, so the process exits
/// non-zero and its supervisor (systemd, Kubernetes) starts it again. Failures of PostgreSQL or Redis never
/// end a task: those are retried inside it with backoff, and `/readyz` says so meanwhile.
pub(crate) async fn all(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Result<(), Error>>)>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let (names, handles): (Vec<&'static str>, Vec<_>) = tasks.into_iter().unzip();
    let (first, index, rest) = futures_util::future::select_all(handles).await;
    let early = !shutdown.is_cancelled();
    shutdown.cancel();
    let mut result = ended(names[index], first, early);
    if let Err(e) = &result {
        tracing::error!(error = %e, "the relay stops");
    }
    let rest_names = names.iter().enumerate().filter(|&(i, _)| i != index).map(|(_, n)| *n);
    for (name, handle) in rest_names.zip(rest) {
        let outcome = ended(name, handle.await, false);
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

/// A task that returns nothing, as one that may fail (for [`all`]).
pub(crate) async fn until_shutdown(task: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    task.await;
    Ok(())
}

/// What a task's end means: `early` when shutdown had not been asked for.
pub(crate) fn ended(
    task: &'static str,
    outcome: Result<Result<(), Error>, tokio::task::JoinError>,
    early: bool,
) -> Result<(), Error> {
    match outcome {
        Ok(Ok(())) if early => Err(Error::Stopped { task, why: "it returned before shutdown".into() }),
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(Error::Stopped { task, why: format!("it panicked: {}", panic_text(e)) }),
        Err(e) => Err(Error::Task(e)),
    }
}

/// The message of a task's panic.
fn panic_text(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

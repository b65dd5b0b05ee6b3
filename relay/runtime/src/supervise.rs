//! Supervision: each of the relay's tasks runs until shutdown, and one that ends before it ends the relay
//! (see README "Supervision"). The relay supervises the consumer, the admin server, the sampler and the
//! live side; the live side its feed and LISTEN tasks, with the same rule ([`ended`]). Each room keeps its
//! own error type: they carry an [`Ended`] from here.

use std::future::Future;

use crate::Shutdown;

/// A task that was to run until shutdown and did not.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// It ended before shutdown was asked for: a panic, or a server that stopped.
    #[error("the {task} stopped unexpectedly: {why}")]
    Early {
        /// Which task: `consumer`, `live side`, `admin server`, `sampler`, `live feed`, `LISTEN connection`.
        task: &'static str,
        /// How it ended.
        why: String,
    },
    /// It was aborted (or panicked during shutdown).
    #[error("task failed: {0}")]
    Aborted(#[from] tokio::task::JoinError),
}

/// Waits for a set of tasks. Each runs until shutdown; one that ends before it (a panic, a server that
/// stopped) stops the others: `shutdown` is cancelled, every task is awaited, and the first one's error is
/// returned, so the process exits non-zero and its supervisor (systemd, Kubernetes) starts it again.
/// Failures of PostgreSQL or Redis never end a task: those are retried inside it with backoff, and
/// `/readyz` says so meanwhile.
pub async fn all<E>(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Result<(), E>>)>,
    shutdown: &Shutdown,
) -> Result<(), E>
where
    E: From<Ended> + std::fmt::Display,
{
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
pub async fn until_shutdown<E>(task: impl Future<Output = ()>) -> Result<(), E> {
    task.await;
    Ok(())
}

/// What a task's end means: `early` when shutdown had not been asked for.
pub fn ended<E: From<Ended>>(
    task: &'static str,
    outcome: Result<Result<(), E>, tokio::task::JoinError>,
    early: bool,
) -> Result<(), E> {
    match outcome {
        Ok(Ok(())) if early => Err(Ended::Early { task, why: "it returned before shutdown".into() }.into()),
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(Ended::Early { task, why: format!("it panicked: {}", panic_text(e)) }.into()),
        Err(e) => Err(Ended::Aborted(e).into()),
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

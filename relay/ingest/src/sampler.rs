//! Samples the consumer group's lag and pending count into the metrics every few seconds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    redis::{Group, Link},
};

/// Time between samples.
const INTERVAL: Duration = Duration::from_secs(5);

/// Samples until shutdown. Failures are logged at debug level: the consumer already reports outages.
pub async fn run(group: Group, mut link: Link, metrics: Metrics, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Supervision tests make the sampler panic here (compiled out without `failpoints`).
        fail::fail_point!("sampler");
        match group.info(&mut link).await {
            Ok(Some(info)) => {
                metrics.group_pending.set(info.pending);
                metrics.group_lag.set(info.lag.unwrap_or(-1));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "could not sample the consumer group"),
        }
    }
}

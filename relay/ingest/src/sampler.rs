//! Samples the consumer group's lag and pending count (summed over the stream's shards) into the metrics
//! every few seconds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    redis::{Group, Link},
};

/// Time between samples.
const INTERVAL: Duration = Duration::from_secs(5);

/// Samples until shutdown. Failures are logged at debug level: the consumer already reports outages.
pub async fn run(groups: Vec<Group>, mut link: Link, metrics: Metrics, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Supervision tests make the sampler panic here (compiled out without `failpoints`).
        fail::fail_point!("sampler");
        // A shard whose lag Redis cannot tell makes the sum unknown (-1).
        let (mut pending, mut lag, mut complete) = (0, Some(0), true);
        for group in &groups {
            match group.info(&mut link).await {
                Ok(Some(info)) => {
                    pending += info.pending;
                    lag = lag.zip(info.lag).map(|(sum, l)| sum + l);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, stream = %group.names.stream, "could not sample the consumer group");
                    complete = false;
                }
            }
        }
        if complete {
            metrics.group_pending.set(pending);
            metrics.group_lag.set(lag.unwrap_or(-1));
        }
    }
}

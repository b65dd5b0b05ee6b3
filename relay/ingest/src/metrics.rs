//! Prometheus metrics of the relay, on their own registry (served at `/metrics`).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::redis::DeadReason;

/// Every metric the relay exports. Cheap to clone (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
    /// Stream entries read, by `source`: `new`, `pending` (own, after a restart) or `claimed`.
    pub entries_read: IntCounterVec,
    /// Batches handled, by `outcome`: `committed`, `retried` (database unavailable, or refusing every write
    /// of the batch: an outage; tried again after a backoff), `split` (the database refused a batch as a
    /// whole; it was bisected).
    pub batches: IntCounterVec,
    /// Statements the server answered with an error, by `sqlstate` (`timeout` when the relay's own bound
    /// expired): refusals, whether the data or the moment caused them (see `trackway_relay_batches_total`
    /// and the dead letters for what became of them).
    pub refusals: IntCounterVec,
    /// Entries refused alone with no write committed since, held (pending, not acknowledged) until a
    /// commit shows the database works and they can be judged.
    pub held: IntGauge,
    /// Entries by `status` reported by `trackway.ingest_batch`: `inserted`, `duplicate`, `invalid`.
    pub rows: IntCounterVec,
    /// Dead letters written, by `reason`: `invalid`, `missing_payload`, `rejected`, `max_deliveries`.
    pub dead_letters: IntCounterVec,
    /// Entries acknowledged (stored, duplicate, or dead-lettered).
    pub acks: IntCounter,
    /// Entries taken over from other consumers (claim sweeps: XPENDING IDLE, then XCLAIM).
    pub reclaimed: IntCounter,
    /// Settle calls (acknowledgements and dead letters) that Redis refused or that failed; each is retried
    /// and its entries stay pending until one succeeds.
    pub settle_failures: IntCounter,
    /// Entries of the stream not yet delivered to the group (sampled from XINFO GROUPS).
    pub group_lag: IntGauge,
    /// Entries delivered to the group and not yet acknowledged (sampled).
    pub group_pending: IntGauge,
    /// `trackway.ingest_batch` statements sent. One may carry several consumers' batches (a sharded
    /// stream's consumers share their statements), so against `batches_total{outcome="committed"}` it tells
    /// how much was combined.
    pub statements: IntCounter,
    /// Duration of one `trackway.ingest_batch` round trip, seconds.
    pub ingest_seconds: Histogram,
    /// Entries per batch read from the stream.
    pub batch_size: Histogram,
    /// Bytes (field names and values) per batch read from the stream.
    pub batch_bytes: Histogram,
    /// The largest batch read so far, bytes (stays within `TRACKWAY_BATCH_BYTES` plus one entry).
    pub batch_bytes_peak: IntGauge,
    /// Connections (re)established after a failure, by `backend`: `postgres`, `redis`.
    pub reconnects: IntCounterVec,
    /// 1 while a backend works for its user, 0 during an outage (unreachable, refusing, or not answering),
    /// by `backend`: `postgres` (the ingest path), `redis`, `postgres_live` (the live feed and LISTEN
    /// connection). `/readyz` and the log say why.
    pub backend_up: IntGaugeVec,
}

impl Metrics {
    /// The registry, for the live side's metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str| {
            let m = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let entries_read =
            counter_vec("trackway_relay_entries_read_total", "Stream entries read, by source.", "source");
        let batches = counter_vec("trackway_relay_batches_total", "Batches handled, by outcome.", "outcome");
        let refusals = counter_vec(
            "trackway_relay_refusals_total",
            "Statements the server answered with an error, by SQLSTATE.",
            "sqlstate",
        );
        let rows = counter_vec("trackway_relay_rows_total", "Entries by ingest status.", "status");
        let dead_letters =
            counter_vec("trackway_relay_dead_letters_total", "Dead letters written, by reason.", "reason");
        let reconnects =
            counter_vec("trackway_relay_reconnects_total", "Reconnections after a failure, by backend.", "backend");
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let acks = counter("trackway_relay_acks_total", "Stream entries acknowledged.");
        let statements = counter(
            "trackway_relay_statements_total",
            "trackway.ingest_batch statements sent (one may carry several consumers' batches).",
        );
        let reclaimed = counter("trackway_relay_reclaimed_total", "Entries claimed from other consumers.");
        let settle_failures =
            counter("trackway_relay_settle_failures_total", "Failed settle calls (retried; entries stay pending).");
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let group_lag = gauge("trackway_relay_group_lag", "Entries not yet delivered to the consumer group (sampled).");
        let held = gauge("trackway_relay_held_entries", "Entries refused alone and held until they can be judged.");
        let group_pending = gauge("trackway_relay_group_pending", "Entries delivered but not acknowledged (sampled).");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let ingest_seconds = histogram(
            "trackway_relay_ingest_duration_seconds",
            "Duration of one trackway.ingest_batch round trip.",
            exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
        );
        let batch_size = histogram(
            "trackway_relay_batch_size",
            "Entries per batch read.",
            exponential_buckets(1.0, 2.0, 15).expect("valid buckets"),
        );
        let batch_bytes = histogram(
            "trackway_relay_batch_bytes",
            "Bytes (field names and values) per batch read.",
            exponential_buckets(1024.0, 4.0, 11).expect("valid buckets"),
        );
        let batch_bytes_peak = gauge("trackway_relay_batch_bytes_peak", "Largest batch read so far, bytes.");
        for source in ["new", "pending", "claimed"] {
            entries_read.with_label_values(&[source]);
        }
        for outcome in ["committed", "retried", "split"] {
            batches.with_label_values(&[outcome]);
        }
        for reason in DeadReason::ALL {
            dead_letters.with_label_values(&[reason.label()]);
        }
        for status in ["inserted", "duplicate", "invalid"] {
            rows.with_label_values(&[status]);
        }
        for backend in ["postgres", "redis"] {
            reconnects.with_label_values(&[backend]);
        }
        let backend_up = IntGaugeVec::new(
            Opts::new("trackway_relay_backend_up", "1 while a backend works, 0 during an outage, by backend."),
            &["backend"],
        )
        .expect("valid metric");
        registry.register(Box::new(backend_up.clone())).expect("unique metric");
        Metrics {
            registry,
            entries_read,
            batches,
            refusals,
            held,
            rows,
            dead_letters,
            acks,
            reclaimed,
            settle_failures,
            group_lag,
            group_pending,
            statements,
            ingest_seconds,
            batch_size,
            batch_bytes,
            batch_bytes_peak,
            reconnects,
            backend_up,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_labels() {
        let m = Metrics::new();
        m.rows.with_label_values(&["inserted"]).inc_by(3);
        m.dead_letters.with_label_values(&["invalid"]).inc();
        let text = m.encode();
        assert!(text.contains("trackway_relay_rows_total{status=\"inserted\"} 3"), "{text}");
        assert!(text.contains("trackway_relay_dead_letters_total{reason=\"invalid\"} 1"), "{text}");
        assert!(text.contains("trackway_relay_rows_total{status=\"duplicate\"} 0"), "{text}");
        assert!(text.contains("trackway_relay_dead_letters_total{reason=\"rejected\"} 0"), "{text}");
        assert!(text.contains("trackway_relay_batches_total{outcome=\"retried\"} 0"), "{text}");
    }
}

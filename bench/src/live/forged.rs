//! A forged `since` (issue 16): a cursor that lists thousands of transactions must cost no more than an
//! honest one. A device gets positions; 8,000 transaction ids are handed out (subtransactions that write);
//! then clients resume the device, again and again, alternately from an honest cursor taken before the
//! positions and from a forged one that lists the positions' transaction and 7,999 more. Measured per
//! resume: subscribe → last replayed position (the database's read is most of it) and the cursor bytes
//! each replayed position carries.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{
    client,
    stats::{latency_header, latency_row, Goal, Percentiles},
    Bench,
};
use crate::db;

/// The device resumed.
const DEVICE: &str = "forged-0";
/// Transactions the forged cursor lists.
const LISTED: u64 = 8_000;

/// Options of the scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct ForgedOptions {
    /// Forged: positions of the device replayed on each resume.
    #[arg(long, default_value_t = 1_000)]
    pub forged_positions: usize,
    /// Forged: resumes from each cursor.
    #[arg(long, default_value_t = 20)]
    pub forged_resumes: usize,
}

/// What resumes from one cursor cost.
struct Cost {
    /// Subscribe → last replayed position, µs, per resume.
    times: Vec<u32>,
    /// Cursor bytes per replayed position (all resumes).
    cursor_bytes: f64,
}

impl Bench<'_> {
    /// Honest and forged resumes of one device, side by side.
    pub(super) async fn forged(&self) -> Result<Vec<Goal>> {
        let o = &self.options.forged;
        println!(
            "\n== forged: {} resumes of {} positions each from an honest cursor and from one listing {LISTED} \
             transactions ==",
            o.forged_resumes, o.forged_positions
        );
        let setup = self.setup("forged", &[DEVICE.to_owned()]).await?;
        let admin = db::connect(&setup.config).await?;
        let honest: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await?.get(0);
        let payloads = trackway_sim::workload(o.forged_positions, 1, self.options.seed);
        let payloads: Vec<String> = payloads.iter().map(|p| renamed(p)).collect::<Result<_>>()?;
        admin.query("SELECT trackway.ingest_batch($1::text[])", &[&payloads]).await.context("ingest_batch")?;
        let xid: String = admin.query_one("SELECT min(ingest_xid)::text FROM trackway.positions", &[]).await?.get(0);
        let xid: u64 = xid.parse().context("a transaction id")?;
        admin
            .batch_execute(&format!(
                "CREATE TEMP TABLE burn (n int);
                 DO $$ BEGIN FOR i IN 1..{LISTED} LOOP
                     BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END;
                 END LOOP; END $$"
            ))
            .await
            .context("handing out transaction ids")?;
        let listed: Vec<String> = (xid..xid + LISTED).map(|x| x.to_string()).collect();
        let forged = format!("{}:0:{}", xid + LISTED, listed.join(","));
        let mut honest_cost = Cost { times: Vec::new(), cursor_bytes: 0.0 };
        let mut forged_cost = Cost { times: Vec::new(), cursor_bytes: 0.0 };
        for _ in 0..o.forged_resumes {
            for (since, cost) in [(&honest, &mut honest_cost), (&forged, &mut forged_cost)] {
                let (took, bytes) = self.resume(&setup, since, o.forged_positions).await?;
                cost.times.push(took);
                cost.cursor_bytes += bytes as f64 / (o.forged_positions * o.forged_resumes) as f64;
            }
        }
        drop(admin);
        self.teardown(setup).await?;
        let honest_p = Percentiles::of_micros(&mut honest_cost.times);
        let forged_p = Percentiles::of_micros(&mut forged_cost.times);
        println!("  forged cursor: {} bytes", forged.len());
        println!("{}", latency_header());
        println!("{}", latency_row("honest since: subscribe -> replayed", honest_p));
        println!("{}", latency_row("forged since: subscribe -> replayed", forged_p));
        println!(
            "  cursor bytes per replayed position: honest {:.1}, forged {:.1}",
            honest_cost.cursor_bytes, forged_cost.cursor_bytes
        );
        let p50 = |p: Option<Percentiles>| p.map_or(f64::NAN, |p| p.p50);
        // Equal time, within the noise of one machine (a quarter and a millisecond); cursor bytes not
        // proportional to the list: the widened cursor keeps where its range starts (`:<xid>-`, a few bytes).
        Ok(vec![
            Goal::at_most("forged: subscribe->replayed p50", p50(forged_p), p50(honest_p) * 1.25 + 1.0, "ms"),
            Goal::at_most(
                "forged: cursor bytes per position",
                forged_cost.cursor_bytes,
                honest_cost.cursor_bytes + 32.0,
                "B",
            ),
        ])
    }

    /// One resume of [`DEVICE`] from `since`: µs to the last of `count` replayed positions, and the cursor
    /// bytes they carried.
    async fn resume(&self, setup: &super::Setup, since: &str, count: usize) -> Result<(u32, usize)> {
        let mut socket = client::connect(&setup.relay.live_url, &setup.token, 256 * 1024).await?;
        let request = serde_json::json!({"type": "subscribe", "device": DEVICE, "since": since}).to_string();
        let asked = Instant::now();
        socket.send(Message::text(request)).await.context("subscribe")?;
        let (mut got, mut bytes) = (0usize, 0usize);
        while got < count {
            let Some(message) = socket.next().await else { bail!("the relay closed the connection") };
            let Message::Text(text) = message.context("reading")? else { continue };
            let frame: serde_json::Value = serde_json::from_str(text.as_str()).context("a JSON frame")?;
            match frame["type"].as_str() {
                Some("error") => bail!("resume refused: {frame}"),
                Some("positions") => {
                    for item in frame["positions"].as_array().into_iter().flatten() {
                        got += 1;
                        bytes += item["cursor"].as_str().map_or(0, str::len);
                    }
                }
                _ => {}
            }
        }
        let took = u32::try_from(asked.elapsed().as_micros()).unwrap_or(u32::MAX);
        let _ = socket.close(None).await;
        Ok((took, bytes))
    }
}

/// A generated payload with its device renamed to [`DEVICE`].
fn renamed(payload: &str) -> Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(payload).context("a generated payload")?;
    doc["deviceId"] = DEVICE.into();
    Ok(doc.to_string())
}

//! A live client: LISTEN on `trackway_positions` and print each announced position as it commits.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

/// Options of `trackway-demo watch`.
#[derive(clap::Args)]
pub struct Args {
    /// Database with the trackway extension.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@localhost:5432/trackway"
    )]
    database_url: String,
}

/// Prints positions until interrupted.
pub async fn run(args: Args) -> Result<()> {
    let (client, mut connection) =
        tokio_postgres::connect(&args.database_url, NoTls).await.context("connecting to PostgreSQL")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024); // full: the connection task waits
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if tx.send(n.payload().to_owned()).await.is_err() {
                    break;
                }
            }
        }
    });
    client.batch_execute("LISTEN trackway_positions").await.context("LISTEN")?;
    let devices: i64 = client.query_one("SELECT count(*) FROM trackway.latest_positions", &[]).await?.get(0);
    eprintln!("watching trackway_positions ({devices} devices known so far; Ctrl-C stops)");
    loop {
        let payload = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => break },
            _ = tokio::signal::ctrl_c() => break,
        };
        for line in describe(&payload) {
            println!("{line}");
        }
    }
    Ok(())
}

/// One line per announced position (and one for a summary of rows not listed).
fn describe(payload: &str) -> Vec<String> {
    let announcement = match trackway_wire::parse_announcement(payload) {
        Ok(a) => a,
        Err(e) => return vec![format!("unreadable announcement ({e}): {payload}")],
    };
    let mut lines: Vec<String> = announcement
        .rows
        .iter()
        .map(|row| match &row.position {
            Some(p) => format!(
                "{}  {}  {:>10.6} {:>10.6}  {:>4} km/h  cursor {}",
                row.device_id,
                row.timestamp,
                p["latitude"].as_f64().unwrap_or(f64::NAN),
                p["longitude"].as_f64().unwrap_or(f64::NAN),
                p["speed"].as_f64().map_or("-".to_owned(), |s| s.to_string()),
                row.cursor
            ),
            None => format!("{}  {}  (announced by reference)  cursor {}", row.device_id, row.timestamp, row.cursor),
        })
        .collect();
    if let Some(o) = announcement.omitted {
        lines
            .push(format!("{} rows not listed ({}); read them with positions_since('{}')", o.rows, o.reason, o.resume));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_whole_and_referenced_positions() {
        let lines = describe(
            r#"{"positions":[{"cursor":"1:2","position":{"deviceId":"d","timestamp":"t","latitude":1.5,"longitude":2.5,"speed":3}},{"cursor":"1:3","deviceId":"e","timestamp":"u"}]}"#,
        );
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("d  t") && lines[0].contains("cursor 1:2"), "{}", lines[0]);
        assert!(lines[1].contains("by reference"), "{}", lines[1]);
        let summary = describe(r#"{"positions":[],"omitted":{"rows":5,"reason":"bulk","resume":"9:0"}}"#);
        assert_eq!(summary, ["5 rows not listed (bulk); read them with positions_since('9:0')"]);
    }
}

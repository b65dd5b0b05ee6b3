//! A live client: connects to the relay's `/live` WebSocket endpoint, subscribes to a group and prints its
//! snapshot, then every position as it arrives. When the connection drops it reconnects and resumes from
//! the last cursor it saw (`since`), so no position is missed (docs/live-protocol.md).

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
};

/// Options of `trackway-demo watch`.
#[derive(clap::Args)]
pub struct Args {
    /// The relay's live endpoint.
    #[arg(long, env = "TRACKWAY_LIVE_URL", default_value = "ws://127.0.0.1:8080/live")]
    url: String,
    /// Group to watch (`trackway.device_groups`).
    #[arg(long, default_value = "demo")]
    group: String,
    /// Access token (not needed when the relay runs with TRACKWAY_AUTH=none).
    #[arg(long, env = "TRACKWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Prints positions until interrupted.
pub async fn run(args: Args) -> Result<()> {
    let mut since: Option<String> = None;
    loop {
        tokio::select! {
            ended = watch(&args, &mut since) => match ended {
                Ok(why) => eprintln!("connection closed ({why}); reconnecting"),
                Err(e) => eprintln!("connection failed ({e:#}); reconnecting"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection: subscribe (resuming after `since` when set), print until it ends.
async fn watch(args: &Args, since: &mut Option<String>) -> Result<String> {
    let mut request = args.url.as_str().into_client_request().context("live URL")?;
    if let Some(token) = &args.token {
        request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
    }
    let (mut socket, _) = connect_async(request).await.with_context(|| format!("connecting to {}", args.url))?;
    while let Some(message) = socket.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Ok(frame.map_or("no reason".into(), |f| format!("{} {}", f.code, f.reason)))
            }
            _ => continue,
        };
        let frame: Value = serde_json::from_str(text.as_str()).context("frame is not JSON")?;
        match frame["type"].as_str().unwrap_or("") {
            "authenticated" => {
                let mut subscribe = json!({"type": "subscribe", "group": args.group});
                if let Some(cursor) = since.as_ref() {
                    subscribe["since"] = json!(cursor);
                }
                socket.send(Message::text(subscribe.to_string())).await?;
            }
            "subscribed" => {
                if let Some(snapshot) = frame["snapshot"].as_array() {
                    eprintln!(
                        "watching group {:?}: {} devices in the snapshot (Ctrl-C stops)",
                        args.group,
                        snapshot.len()
                    );
                    for doc in snapshot {
                        println!("{}", describe(doc, "snapshot"));
                    }
                    *since = frame["cursor"].as_str().map(str::to_owned);
                } else {
                    eprintln!("resumed group {:?}: {} positions missed while away follow", args.group, frame["replay"]);
                }
            }
            "positions" => {
                for item in frame["positions"].as_array().into_iter().flatten() {
                    let cursor = item["cursor"].as_str().unwrap_or("?");
                    println!("{}", describe(&item["position"], cursor));
                    *since = Some(cursor.to_owned());
                }
            }
            "error" => {
                eprintln!("error {}: {}", frame["code"], frame["message"]);
                if frame["code"] == "resume_too_far" {
                    *since = None;
                    return Ok("too far behind: starting again from a snapshot".into());
                }
            }
            _ => {}
        }
    }
    Ok("connection ended".into())
}

/// One line for a position.
fn describe(p: &Value, cursor: &str) -> String {
    format!(
        "{}  {}  {:>10.6} {:>10.6}  {:>4} km/h  cursor {}",
        p["deviceId"].as_str().unwrap_or("?"),
        p["timestamp"].as_str().unwrap_or("?"),
        p["latitude"].as_f64().unwrap_or(f64::NAN),
        p["longitude"].as_f64().unwrap_or(f64::NAN),
        p["speed"].as_f64().map_or("-".to_owned(), |s| s.to_string()),
        cursor
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_position() {
        let line = describe(&json!({"deviceId":"d","timestamp":"t","latitude":1.5,"longitude":2.5,"speed":3}), "1:2");
        assert!(line.starts_with("d  t") && line.contains("3 km/h") && line.ends_with("cursor 1:2"), "{line}");
    }
}

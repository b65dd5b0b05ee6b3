//! `trackway-demo`: what `scripts/demo` runs next to the relay and the simulator (`trackway-sim`).
//!
//! - `watch`: a live client of the relay's WebSocket endpoint that prints every position of a group.

#![forbid(unsafe_code)]

mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trackway-demo", version, about = "Trackway local demo: a live watcher")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints every position the database announces.
    Watch(watch::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Watch(args) => watch::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackway-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

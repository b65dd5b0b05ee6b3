//! `trackway-demo`: what `scripts/demo` runs next to the relay.
//!
//! - `devices`: a fleet of simulated trackers driving around Vilnius, each writing one wire-format
//!   position per interval to the Redis Stream (now and then a broken one, to show dead letters);
//! - `watch`: a live client that LISTENs on `trackway_positions` and prints every announced position.

mod devices;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trackway-demo", version, about = "Trackway local demo: simulated trackers and a live watcher")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulated trackers writing positions to the stream.
    Devices(devices::Args),
    /// Prints every position the database announces.
    Watch(watch::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Devices(args) => devices::run(args).await,
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

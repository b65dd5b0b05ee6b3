//! `trackway-sim`: simulated trackers writing wire-format positions to a Redis Stream (see `cli`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trackway_sim::cli::main()
}

//! `trackway-sim`: simulated trackers writing wire-format positions to a Redis Stream (see `cli`).

fn main() -> std::process::ExitCode {
    trackway_sim::cli::main()
}

//! `trackway-relay`, built inside the tests package so that tests can start and SIGKILL it.

fn main() -> std::process::ExitCode {
    trackway_relay::cli::main()
}

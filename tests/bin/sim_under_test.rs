//! `trackway-sim`, built inside the tests package so that tests can run it as a process.

fn main() -> std::process::ExitCode {
    trackway_sim::cli::main()
}

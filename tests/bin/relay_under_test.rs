//! `trackway-relay`, built inside the tests package so that tests can start and SIGKILL it. Built with the
//! relay's `failpoints`, and reads them from `FAILPOINTS` (for example `store-counted=return(1000)`).

fn main() -> std::process::ExitCode {
    let scenario = fail::FailScenario::setup();
    let code = trackway_relay::cli::main();
    scenario.teardown();
    code
}

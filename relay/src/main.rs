//! `trackway-relay` binary: everything it does is in [`trackway_relay::cli`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trackway_relay::cli::main()
}

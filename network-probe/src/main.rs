//! `network-probe` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use network_probe::{cli::Cli, daemon};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = daemon::init_logging(&cli) {
        eprintln!("network-probe: error: {err}");
        return ExitCode::from(err.exit_code());
    }
    match daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line an operator can act on; the exit code tells the class of failure.
            eprintln!("network-probe: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

//! `network-probe` binary: parses the command line and hands over to the library: the daemon,
//! or the `check` and `probe` subcommands.
// The binary shares its package's dependencies with the library it hands over to and uses
// none of them itself (cargo gives every target of a package all of its dependencies).
#![allow(unused_crate_dependencies)]

use std::process::ExitCode;

use network_probe::{
    cli::{Cli, Command},
    commands::{check, daemon, oneshot},
};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    if let Err(err) = daemon::init_logging(&cli) {
        eprintln!("network-probe: error: {err}");
        return ExitCode::from(err.exit_code());
    }
    match &cli.command {
        Some(Command::Check) => return ExitCode::from(check::run(&cli)),
        Some(Command::Probe(args)) => return ExitCode::from(oneshot::run(&cli, args)),
        None => {}
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

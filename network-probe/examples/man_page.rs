//! Writes the manual page generated from the clap definitions (`network_probe::cli::man`) to the
//! path given as the only argument; `cargo xtask man` and `cargo xtask deb` run it.
#![allow(unused_crate_dependencies)]

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: man_page OUTPUT");
        return std::process::ExitCode::from(2);
    };
    if let Err(err) = std::fs::write(&path, network_probe::cli::man::man_page()) {
        eprintln!("writing {}: {err}", std::path::Path::new(&path).display());
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

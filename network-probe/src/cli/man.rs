//! The manual page `network-probe(8)`, generated from the clap definitions of [`super::Cli`]
//! (clap_mangen), so it lists exactly the flags the daemon parses. Nothing in the daemon calls
//! it: `cargo xtask man` (and `cargo xtask deb`, which ships it gzipped as
//! /usr/share/man/man8/network-probe.8.gz) writes it through the `man_page` example, and
//! tests/integration/deb.rs renders it and checks it against the clap definitions.

use clap::CommandFactory as _;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

/// Section 8: system administration commands (a daemon started by systemd).
pub const SECTION: &str = "8";

/// The page as roff source: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, SUBCOMMANDS with each
/// subcommand's own arguments, FILES, SEE ALSO.
pub fn man_page() -> Vec<u8> {
    let command = super::Cli::command();
    let man = Man::new(command.clone())
        .section(SECTION)
        .manual("System Administration");
    let mut page = Vec::new();
    // Writing into a Vec cannot fail. Man::render's SUBCOMMANDS section would point at pages
    // of their own (network-probe-probe(8)); here each subcommand is a section of this page.
    man.render_title(&mut page).expect("rendering into memory");
    man.render_name_section(&mut page)
        .expect("rendering into memory");
    man.render_synopsis_section(&mut page)
        .expect("rendering into memory");
    man.render_description_section(&mut page)
        .expect("rendering into memory");
    man.render_options_section(&mut page)
        .expect("rendering into memory");
    man.render_version_section(&mut page)
        .expect("rendering into memory");
    for sub in command.get_subcommands() {
        let mut part = Vec::new();
        let sub_man = Man::new(
            sub.clone()
                .bin_name(format!("network-probe {}", sub.get_name())),
        );
        sub_man
            .render_synopsis_section(&mut part)
            .expect("rendering into memory");
        sub_man
            .render_options_section(&mut part)
            .expect("rendering into memory");
        // One section per subcommand; its synopsis and options as subsections of it.
        let part = String::from_utf8(part)
            .expect("roff is UTF-8")
            .replace(".SH ", ".SS ");
        let mut heading = Roff::new();
        heading.control(
            "SH",
            [format!("COMMAND {}", sub.get_name().to_uppercase()).as_str()],
        );
        page.extend_from_slice(heading.render().as_bytes());
        page.extend_from_slice(part.as_bytes());
    }
    let mut tail = Roff::new();
    tail.control("SH", ["FILES"])
        .control("TP", [])
        .text([bold("/etc/network-probe/network-probe.yml")])
        .text([roman(
            "The configuration file the systemd unit passes with --config.file: probe modules, \
             interfaces, flows, Jool, the probe allowlist. Reloaded on SIGHUP.",
        )])
        .control("TP", [])
        .text([bold("/etc/default/network-probe")])
        .text([roman(
            "ARGS: further flags of the systemd unit; they override the configuration file.",
        )])
        .control("TP", [])
        .text([bold("/usr/share/doc/network-probe/")])
        .text([roman(
            "README.md and the guides (configuration.md, deployment.md, ...), the Grafana \
             dashboard and Prometheus alerts under examples/.",
        )])
        .control("SH", ["SEE ALSO"])
        .text([
            bold("systemctl"),
            roman("(1), "),
            bold("prometheus"),
            roman("(1), "),
            bold("tc"),
            roman("(8), "),
            bold("bpftool"),
            roman("(8)"),
        ]);
    page.extend_from_slice(tail.render().as_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_long_flag_of_every_command() {
        let page = String::from_utf8(man_page()).unwrap();
        let command = crate::cli::Cli::command();
        let mut commands = vec![command.clone()];
        commands.extend(command.get_subcommands().cloned());
        let mut checked = 0;
        for command in commands {
            for arg in command.get_arguments() {
                if let Some(long) = arg.get_long() {
                    // roff escapes every '-' as '\-'.
                    let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(page.contains(&escaped), "--{long} missing:\n{page}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} flags");
        assert!(page.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{page}");
        assert!(page.contains(".TH network-probe 8 "), "{page}");
        assert!(page.contains(".SH \"COMMAND PROBE\"") || page.contains(".SH COMMAND PROBE"));
    }
}

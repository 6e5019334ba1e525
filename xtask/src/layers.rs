//! `cargo xtask layers`: checks that the daemon's modules depend on each other in one direction
//! only. Each top-level module of `network-probe/src` (a folder or a file) has a layer in
//! [`LAYERS`]; a module may use its own folder and the modules of lower layers, never one of
//! its own layer or above. `cargo xtask test` runs it before clippy, so an import against the
//! direction fails the build as a lint would.
//!
//! It reads `crate::` paths as text (`use crate::a::b`, `crate::a::f()`, `use crate::{a, b::c}`),
//! leaving out each file's `#[cfg(test)] mod tests` (unit tests may use what they like to build
//! their inputs) and comments. That is enough for this crate's style, where every cross-module
//! reference starts with `crate::`; `super::` only reaches within a folder.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The layers, bottom first: the top-level modules of `network-probe/src` and the layer each
/// belongs to. README.md ("Layout") shows the same table.
pub(crate) const LAYERS: &[(&str, u8)] = &[
    // Start-up errors and their exit codes, then the helpers every layer may use.
    ("error", 0),
    ("support", 1),
    // The kernel and the protocols: datapath, Jool.
    ("kernel", 2),
    ("jool", 2),
    // What builds on the kernel: flow series, probes (the ping prober asks rtnetlink for routes).
    ("flows", 3),
    ("probe", 3),
    // Registry and rendering of everything above.
    ("metrics", 4),
    // Flags, then the configuration file on top of them, then HTTP, then the commands.
    ("cli", 5),
    ("config", 6),
    ("web", 7),
    ("commands", 8),
];

/// Checks every module file below `root/network-probe/src`; fails listing each reference that
/// points against the direction, or each module missing from [`LAYERS`].
pub(crate) fn check(root: &Path) -> Result<()> {
    let src = root.join("network-probe/src");
    let mut files = Vec::new();
    collect(&src, &mut files)?;
    files.sort();
    let mut problems = String::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("below src");
        let Some(module) = top_module(relative) else {
            continue;
        };
        let Some(layer) = layer_of(&module) else {
            let _ = writeln!(
                problems,
                "{}: module `{module}` has no layer in xtask/src/layers.rs LAYERS",
                relative.display()
            );
            continue;
        };
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (line, used) in references(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(used_layer) if used_layer < layer => {}
                Some(used_layer) => {
                    let _ = writeln!(
                        problems,
                        "network-probe/src/{}:{line}: `{module}` (layer {layer}) uses `crate::{used}` \
                         (layer {used_layer}); a module may only use lower layers",
                        relative.display()
                    );
                }
                None => {
                    let _ = writeln!(
                        problems,
                        "network-probe/src/{}:{line}: `crate::{used}` has no layer in LAYERS",
                        relative.display()
                    );
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("module dependencies against the layers:\n{problems}");
    }
    println!(
        "xtask: layers: {} module files, every crate:: reference points to a lower layer",
        files.len()
    );
    Ok(())
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The top-level module a file belongs to (`kernel/datapath.rs` -> `kernel`, `cli.rs` ->
/// `cli`); none for the crate roots.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|&(_, layer)| layer)
}

/// The top-level modules `text` refers to through `crate::`, with their line numbers; the
/// unit-test module and comments left out.
fn references(text: &str) -> Vec<(usize, String)> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(end) => &text[..end],
        None => text,
    };
    let mut found = Vec::new();
    let mut group_depth: Option<usize> = None;
    for (index, raw) in code.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("");
        let number = index + 1;
        // Inside `use crate::{ ... }`: the names at depth one are top-level modules.
        if let Some(depth) = group_depth.as_mut() {
            scan_group(line, depth, number, &mut found);
            if *depth == 0 {
                group_depth = None;
            }
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 1;
                scan_group(group, &mut depth, number, &mut found);
                if depth > 0 {
                    group_depth = Some(depth);
                }
                break;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number, name));
            }
            rest = after;
        }
    }
    found
}

/// Reads the names at depth one of a `use crate::{...}` group from `text`, tracking braces.
fn scan_group(text: &str, depth: &mut usize, line: usize, found: &mut Vec<(usize, String)>) {
    let mut expecting_name = *depth == 1;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' => {
                *depth += 1;
                expecting_name = false;
            }
            '}' => {
                *depth -= 1;
                if *depth == 0 {
                    return;
                }
            }
            ',' if *depth == 1 => expecting_name = true,
            c if c.is_whitespace() => {}
            c if expecting_name && (c.is_ascii_alphabetic() || c == '_') => {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                for _ in 1..name.chars().count() {
                    chars.next();
                }
                if name != "self" {
                    found.push((line, name));
                }
                expecting_name = false;
            }
            _ => expecting_name = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_and_groups() {
        let text = "use crate::{\n    kernel::datapath::{A, B},\n    flows::table,\n};\n\
                    fn f() { crate::support::sync::lock(x); } // crate::web in a comment\n\
                    use crate::{cli::Cli, config};\n\
                    #[cfg(test)]\nmod tests { use crate::commands; }\n";
        let names: Vec<(usize, String)> = references(text);
        let names: Vec<(usize, &str)> = names.iter().map(|(l, n)| (*l, n.as_str())).collect();
        assert_eq!(
            names,
            [
                (2, "kernel"),
                (3, "flows"),
                (5, "support"),
                (6, "cli"),
                (6, "config")
            ]
        );
    }

    #[test]
    fn top_modules() {
        assert_eq!(
            top_module(Path::new("kernel/datapath.rs")).as_deref(),
            Some("kernel")
        );
        assert_eq!(top_module(Path::new("cli.rs")).as_deref(), Some("cli"));
        assert_eq!(top_module(Path::new("lib.rs")), None);
    }

    #[test]
    fn an_upward_use_fails_naming_it() {
        let root = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let kernel = root.join("network-probe/src/kernel");
        fs::create_dir_all(&kernel).unwrap();
        fs::write(kernel.join("mod.rs"), "use crate::support::sync;\n").unwrap();
        fs::write(
            kernel.join("bad.rs"),
            "\n\nfn f() { crate::web::bind(); }\n",
        )
        .unwrap();
        let err = check(&root).unwrap_err().to_string();
        fs::remove_dir_all(&root).unwrap();
        assert!(
            err.contains("network-probe/src/kernel/bad.rs:3: `kernel` (layer 2) uses `crate::web`"),
            "{err}"
        );
        assert!(!err.contains("mod.rs"), "{err}");
    }

    #[test]
    fn this_workspace_follows_its_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(root).unwrap();
    }
}

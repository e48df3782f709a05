//! The folders of `src/` are the layers, and data flows one way: a module may use its own
//! folder and the folders below it, never one above. Reads every source file and checks each
//! `crate::<folder>` path outside comments against the order in README's "Layout".

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// From the bottom up. `cli` sits just below `commands`, which parses nothing itself.
const LAYERS: &[&str] = &[
    "io", "bootconf", "profile", "plan", "image", "build", "base", "outdir", "dist", "flash",
    "preview", "cli", "commands",
];

/// Layers that are siblings, not above one another: neither may use the other.
const SIBLINGS: &[(&str, &str)] = &[("dist", "flash"), ("dist", "preview"), ("flash", "preview")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its folder under `src/`, or its own name at the top.
fn layer_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::<name>` a line of code (not a comment) refers to.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((i + 1, name));
        }
    }
    out
}

#[test]
fn no_layer_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut wrong = Vec::new();
    for file in &files {
        let from = layer_of(&src, file);
        let Some(&from_rank) = rank.get(from.as_str()) else {
            // main.rs and lib.rs sit on top of everything.
            assert!(
                ["main", "lib"].contains(&from.as_str()),
                "{}: not in a layer; add its folder to LAYERS and to README's Layout",
                file.display()
            );
            continue;
        };
        for (line, to) in crate_refs(&fs::read_to_string(file).unwrap()) {
            let Some(&to_rank) = rank.get(to.as_str()) else {
                wrong.push(format!(
                    "{}:{line}: crate::{to} is no layer",
                    file.display()
                ));
                continue;
            };
            let sibling = SIBLINGS.iter().any(|&(a, b)| {
                (a, b) == (from.as_str(), to.as_str()) || (b, a) == (from.as_str(), to.as_str())
            });
            if to_rank > from_rank || sibling {
                wrong.push(format!(
                    "{}:{line}: layer {from} uses crate::{to}, which is not below it",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_references() {
    let refs =
        crate_refs("use crate::image::PendingOutput; // crate::commands\nx(crate::io::hex(b))");
    assert_eq!(refs, [(1, "image".to_string()), (2, "io".to_string())]);
}

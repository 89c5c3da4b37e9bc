//! Tidy: tests that check the codebase itself — crate dependency rules, IO-free core and fakes,
//! driver-free ports, module docs, and no stubs or skipped tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "snapshots")
            {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files_of(rel: &str) -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    rust_files(&root().join(rel), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The names under `[dependencies]` (not dev- or build-dependencies) of a crate's Cargo.toml.
fn normal_dependencies(crate_dir: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        if in_deps && !t.is_empty() && !t.starts_with('#') {
            if let Some((name, _)) = t.split_once('=') {
                let name = name.trim().trim_matches('"');
                out.insert(name.strip_suffix(".workspace").unwrap_or(name).to_string());
            }
        }
    }
    out
}

#[test]
fn crate_dependency_rules_hold() {
    let allowed: &[(&str, &[&str])] = &[
        ("crates/core", &["serde", "serde_json", "thiserror"]),
        (
            "crates/ports",
            &[
                "switchboard-core",
                "async-trait",
                "thiserror",
                "serde",
                "serde_json",
                "futures",
            ],
        ),
        (
            "crates/fakes",
            &[
                "switchboard-core",
                "switchboard-ports",
                "async-trait",
                "serde",
                "serde_json",
                "futures",
                "tokio",
                "sha2",
                "hex",
            ],
        ),
    ];
    for (dir, ok) in allowed {
        let deps = normal_dependencies(dir);
        let extra: Vec<_> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(
            extra.is_empty(),
            "{dir} may not depend on {extra:?} (ARCHITECTURE.md, crate table)"
        );
    }
    let forbidden: &[(&str, &[&str])] = &[
        (
            "crates/adapters",
            &[
                "switchboard-fakes",
                "switchboard-conformance",
                "switchboard-server",
                "switchboard-bench",
            ],
        ),
        (
            "crates/conformance",
            &["switchboard-server", "switchboard-bench"],
        ),
        (
            "crates/bridge",
            &[
                "switchboard-server",
                "switchboard-fakes",
                "switchboard-conformance",
                "switchboard-bench",
                "sqlx",
            ],
        ),
        // The bench drives the server, adapters, ports and core; it needs no fake.
        (
            "crates/bench",
            &["switchboard-fakes", "switchboard-conformance"],
        ),
        ("crates/server", &["switchboard-bench"]),
    ];
    for (dir, no) in forbidden {
        let deps = normal_dependencies(dir);
        let bad: Vec<_> = deps.iter().filter(|d| no.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "{dir} may not depend on {bad:?}");
    }
    let fakes_tokio = std::fs::read_to_string(root().join("crates/fakes/Cargo.toml")).unwrap();
    let tokio_line = fakes_tokio
        .lines()
        .find(|l| l.trim_start().starts_with("tokio"))
        .unwrap_or("");
    assert!(
        tokio_line.contains("\"sync\"")
            && !tokio_line.contains("\"fs\"")
            && !tokio_line.contains("\"net\"")
            && !tokio_line.contains("\"time\""),
        "fakes may use tokio's sync primitives only: {tokio_line}"
    );
}

fn assert_absent(rel: &str, needles: &[&str], why: &str) {
    let mut hits = Vec::new();
    for (path, text) in files_of(rel) {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for needle in needles {
                if code.contains(needle) {
                    hits.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "{why}:\n{}", hits.join("\n"));
}

#[test]
fn core_does_no_io_and_reads_no_clock() {
    assert_absent(
        "crates/core/src",
        &[
            "std::fs",
            "std::net",
            "std::thread",
            "std::process",
            "std::env",
            "SystemTime",
            "Instant::now",
            "tokio",
            "rand::",
        ],
        "crates/core is sans-IO (it must build for wasm32 and run in a Durable Object)",
    );
}

#[test]
fn fakes_read_no_wall_clock_and_do_no_io() {
    assert_absent(
        "crates/fakes/src",
        &[
            "std::fs",
            "std::net",
            "std::process",
            "std::env",
            "SystemTime",
            "Instant::now",
            "tokio::time",
            "tokio::fs",
        ],
        "fakes take time from the Clock port and do no IO",
    );
}

#[test]
fn ports_name_no_driver_type() {
    assert_absent(
        "crates/ports/src",
        &[
            "sqlx",
            "reqwest",
            "tungstenite",
            "tokio::",
            "rusqlite",
            "axum",
        ],
        "ports name no driver or runtime type",
    );
}

#[test]
fn every_module_opens_with_a_doc_line() {
    let mut missing = Vec::new();
    for dir in ["crates", "xtask"] {
        for (path, text) in files_of(dir) {
            if !text.trim_start().starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "every module opens with a `//!` line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_stubs_and_no_skipped_tests() {
    // Built from pieces so this file does not match itself.
    let needles = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("#[", "ignore"),
        concat!("#[", "should_panic"),
    ];
    let mut hits = Vec::new();
    for dir in ["crates", "xtask"] {
        for (path, text) in files_of(dir) {
            for (n, line) in text.lines().enumerate() {
                if needles.iter().any(|needle| line.contains(needle)) {
                    hits.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "no stubs, no ignored or should_panic tests:\n{}",
        hits.join("\n")
    );
}

#[test]
fn no_placeholder_modules_remain() {
    let needle = concat!("(being", " written)");
    let hits: Vec<String> = files_of("crates")
        .into_iter()
        .filter(|(_, t)| t.contains(needle))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        hits.is_empty(),
        "placeholder modules remain:\n{}",
        hits.join("\n")
    );
}

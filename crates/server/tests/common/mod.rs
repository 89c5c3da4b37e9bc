//! What the server's process-level tests share: finding the workspace's other binaries (built when
//! missing) and the pinned OpenCode, and whether this is a CI run (where nothing may be skipped).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where `scripts/install-opencode.sh` puts the OpenCode program, relative to the repository.
pub const OPENCODE_IN_TOOLS: &str =
    "tools/opencode-1.18.33/node_modules/opencode-linux-x64/bin/opencode";

/// Whether this is a CI run (`CI=true`): there a missing tool fails the test instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `target/<profile>/`, where the `switchboard` binary and its siblings are built.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard"))
        .parent()
        .expect("target/<profile>/")
        .to_path_buf()
}

/// The binary `name` of the workspace package `package`, built when it is missing
/// (`cargo test -p switchboard-server` builds only this package's binaries; `cargo test
/// --workspace` builds them all first).
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let path = target_dir().join(name);
    if !path.is_file() {
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", package, "--bin", name]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building {name} failed");
    }
    assert!(path.is_file(), "no {name} at {path:?}");
    path
}

/// The sandbox program.
pub fn bridge() -> PathBuf {
    workspace_binary("switchboard-bridge", "switchboard-bridge")
}

/// The scripted ACP agent (a test double of `switchboard-adapters`).
pub fn scripted_agent() -> PathBuf {
    workspace_binary("switchboard-adapters", "scripted-acp-agent")
}

/// The OpenCode program: `SWITCHBOARD_OPENCODE`, else the repository's tools directory. Missing
/// fails under `CI=true`; elsewhere `None` after a loud `NOT RUN: <test>` line.
pub fn opencode(test: &str) -> Option<PathBuf> {
    let given = std::env::var_os("SWITCHBOARD_OPENCODE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let tools = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(OPENCODE_IN_TOOLS);
    let candidate = given.clone().unwrap_or(tools);
    if candidate.is_file() {
        return Some(candidate.canonicalize().unwrap_or(candidate));
    }
    let reason = format!(
        "OpenCode is not installed at {} ({}); run scripts/install-opencode.sh",
        candidate.display(),
        if given.is_some() {
            "SWITCHBOARD_OPENCODE"
        } else {
            "the repository's tools directory; SWITCHBOARD_OPENCODE is unset"
        }
    );
    if in_ci() {
        panic!("CI must run {test} with real OpenCode: {reason}");
    }
    eprintln!("NOT RUN: {test}: {reason}");
    None
}

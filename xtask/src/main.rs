//! Project tasks: `cargo xtask conformance` (the port × implementation matrix),
//! `cargo xtask ports-doc` (regenerates docs/ports.md from the registry) and
//! `cargo xtask bench [--full]` (runs the benchmarks in release and rewrites docs/benchmarks.md).
//!
//! xtask only selects and reports: every check it runs is an ordinary `cargo test` trial, and the
//! bench is the `switchboard-bench` binary.

use clap::{Parser, Subcommand};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(name = "xtask", about = "Switchboard project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the conformance suites and print the port × implementation matrix.
    Conformance {
        /// Only this port (snake_case, e.g. run_ledger).
        #[arg(long)]
        port: Option<String>,
        /// Only this implementation (e.g. in_memory, sqlite, postgres).
        #[arg(long = "impl")]
        implementation: Option<String>,
    },
    /// Regenerate docs/ports.md from the registry and the trait contracts.
    PortsDoc,
    /// Run the benchmarks in release (quick by default) and rewrite docs/benchmarks.md.
    Bench {
        /// The full sizes (10,000 sessions, 100,000-event replay…) instead of the quick run.
        #[arg(long)]
        full: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Runs the conformance binary with `filter` and returns its JSON report and whether it passed.
fn run_conformance(filter: Option<String>, extra: &[&str]) -> (Value, bool) {
    let report = std::env::temp_dir().join(format!(
        "switchboard-conformance-{}.json",
        std::process::id()
    ));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root())
        .args([
            "test",
            "-q",
            "-p",
            "switchboard-conformance",
            "--test",
            "conformance",
            "--",
        ])
        .args(extra)
        .env("SWITCHBOARD_CONFORMANCE_REPORT", &report);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let status = cmd.status().expect("cargo runs");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "the conformance runner wrote no report at {}: {e}",
            report.display()
        )
    });
    let _ = std::fs::remove_file(&report);
    (
        serde_json::from_str(&text).expect("the report is JSON"),
        status.success(),
    )
}

fn conformance(port: Option<String>, implementation: Option<String>) -> ExitCode {
    let filter = match (&port, &implementation) {
        (Some(p), Some(i)) => Some(format!("{p}::{i}::")),
        (Some(p), None) => Some(format!("{p}::")),
        (None, Some(i)) => Some(format!("::{i}::")),
        (None, None) => None,
    };
    let (report, ok) = run_conformance(filter, &[]);
    print!(
        "{}",
        matrix(&report, port.as_deref(), implementation.as_deref())
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    ignored: usize,
}

fn matrix(report: &Value, port: Option<&str>, implementation: Option<&str>) -> String {
    let mut tallies: BTreeMap<(String, String), Tally> = BTreeMap::new();
    let mut faults: BTreeMap<String, Tally> = BTreeMap::new();
    for r in report["results"].as_array().into_iter().flatten() {
        let (p, i, status) = (
            r["port"].as_str().unwrap_or(""),
            r["implementation"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
        );
        let t = if r["kind"] == "disruption" {
            faults.entry(p.to_string()).or_default()
        } else {
            tallies.entry((p.to_string(), i.to_string())).or_default()
        };
        match status {
            "passed" => t.passed += 1,
            "failed" => t.failed += 1,
            _ => t.ignored += 1,
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<9} {:<17} {:<20} {:<8} {:>6} {:>6} {:>7} {:>7}  {}\n",
        "plane",
        "port",
        "implementation",
        "kind",
        "cases",
        "passed",
        "failed",
        "ignored",
        "port faults covered"
    ));
    let mut failures = 0;
    for s in report["metadata"]["suites"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let p = s["port"].as_str().unwrap_or("");
        if port.is_some_and(|want| want != p) {
            continue;
        }
        let cases = s["cases"].as_array().map_or(0, |c| c.len());
        let catalog = s["catalog"].as_array().map_or(0, |c| c.len());
        let f = faults.get(p);
        let covered = format!(
            "{}/{}{}",
            f.map_or(0, |t| t.passed),
            catalog,
            f.filter(|t| t.failed > 0)
                .map_or(String::new(), |t| format!(" ({} failed)", t.failed))
        );
        let impls = s["implementations"].as_array().cloned().unwrap_or_default();
        if impls.is_empty() {
            out.push_str(&format!(
                "{:<9} {:<17} {:<20} {:<8} {:>6} {:>6} {:>7} {:>7}  {}\n",
                s["plane"].as_str().unwrap_or(""),
                p,
                "(none)",
                "-",
                cases,
                "-",
                "-",
                "-",
                covered
            ));
        }
        for imp in impls {
            let i = imp["name"].as_str().unwrap_or("");
            if implementation.is_some_and(|want| want != i) {
                continue;
            }
            let t = tallies.get(&(p.to_string(), i.to_string()));
            let cell = |n: Option<usize>| n.map_or("-".to_string(), |n| n.to_string());
            failures += t.map_or(0, |t| t.failed);
            out.push_str(&format!(
                "{:<9} {:<17} {:<20} {:<8} {:>6} {:>6} {:>7} {:>7}  {}\n",
                s["plane"].as_str().unwrap_or(""),
                p,
                i,
                imp["kind"].as_str().unwrap_or(""),
                cases,
                cell(t.map(|t| t.passed)),
                cell(t.map(|t| t.failed)),
                cell(t.map(|t| t.ignored)),
                covered
            ));
        }
    }
    let waivers = report["metadata"]["waivers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("\nWAIVERS ({}):\n", waivers.len()));
    for w in &waivers {
        out.push_str(&format!(
            "  {:<17} {:<13} issue #{:<3} {}\n",
            w["port"].as_str().unwrap_or(""),
            w["part"].as_str().unwrap_or(""),
            w["issue"],
            w["reason"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!("\n{} failed trial(s) in the matrix\n", failures));
    out
}

fn ports_doc() -> ExitCode {
    // `--list` runs no trial but the runner still writes the registry metadata.
    let (report, _) = run_conformance(None, &["--list"]);
    let mut out = String::from("# Ports\n\nGenerated by `cargo xtask ports-doc` from the registry (`crates/ports/src/registry.rs`) and the\nconformance suites; do not edit by hand. Each port ships as a bundle: the trait with its `# Contract`,\nan in-memory fake, real adapters, contract cases and a fault catalog exercised by the disruption suite.\n");
    for s in report["metadata"]["suites"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = s["port"].as_str().unwrap_or("");
        out.push_str(&format!("\n## `{name}` ({} plane)\n\nImplementations: {}.\n\nContract cases: {}.\n\nFault catalog:\n", s["plane"].as_str().unwrap_or(""),
            s["implementations"].as_array().into_iter().flatten().map(|i| format!("`{}` ({})", i["name"].as_str().unwrap_or(""), i["kind"].as_str().unwrap_or(""))).collect::<Vec<_>>().join(", "),
            s["cases"].as_array().into_iter().flatten().map(|c| format!("`{}`", c.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")));
        for e in s["catalog"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "- `{}`: {}\n",
                e["name"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or("")
            ));
        }
    }
    let path = root().join("docs/ports.md");
    std::fs::write(&path, out).expect("docs/ports.md is writable");
    println!("wrote {}", path.display());
    ExitCode::SUCCESS
}

/// Builds and runs `switchboard-bench` in release; it prints the table and writes the doc.
fn bench(full: bool) -> ExitCode {
    let shown = if full {
        "cargo xtask bench --full"
    } else {
        "cargo xtask bench"
    };
    let doc = root().join("docs/benchmarks.md");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "switchboard-bench",
            "--",
            "run",
            "--mode",
            if full { "full" } else { "quick" },
            "--command",
            shown,
            "--markdown",
        ])
        .arg(&doc)
        .status()
        .expect("cargo runs");
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Conformance {
            port,
            implementation,
        } => conformance(port, implementation),
        Cmd::PortsDoc => ports_doc(),
        Cmd::Bench { full } => bench(full),
    }
}

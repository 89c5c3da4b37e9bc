//! Smoke test of the bench, so that it cannot rot: the real `switchboard-bench run --mode tiny`
//! (the server and the relay as child processes, every measurement at a size of seconds) must
//! produce a report with all six sections, every figure a finite number beside a finite baseline,
//! and every goal judged. No figure is compared with a target here: numbers of a tiny debug run
//! mean nothing, and no test asserts on time.
//!
//! Postgres: with `DATABASE_URL` the ledger's Postgres row must be measured; without it the row
//! says why it was not run — except under `CI=true`, where a missing `DATABASE_URL` is a failure.

use serde_json::Value;
use std::process::Command;
use switchboard_bench::report::{Report, SECTIONS};

fn run_tiny() -> (Report, String) {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let (json, markdown) = (dir.join("report.json"), dir.join("benchmarks.md"));
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["run", "--mode", "tiny", "--command", "smoke test", "--json"])
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--scratch")
        .arg(dir.join("scratch"))
        .output()
        .expect("the bench binary runs");
    assert!(
        output.status.success(),
        "the tiny bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
            .expect("the report decodes");
    let md = std::fs::read_to_string(&markdown).expect("a Markdown report");
    let _ = std::fs::remove_dir_all(&dir);
    (report, md)
}

#[test]
fn a_tiny_run_reports_every_section_with_finite_numbers() {
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    let postgres = std::env::var("DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"));
    assert!(
        postgres || !in_ci,
        "CI must provide Postgres (DATABASE_URL) for the ledger's Postgres figures"
    );
    let (report, md) = run_tiny();

    assert_eq!(
        report
            .sections
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        SECTIONS,
        "every section, in the issue's order"
    );
    for section in &report.sections {
        assert!(!section.rows.is_empty(), "{} has no rows", section.id);
        for row in &section.rows {
            let what = format!("{} / {}", section.id, row.name);
            match &row.not_run {
                Some(reason) => {
                    assert!(
                        row.name.starts_with("PgRunLedger") && !postgres,
                        "{what} was not run ({reason}) although it could be"
                    );
                    assert!(reason.contains("DATABASE_URL"), "{what}: {reason}");
                }
                None => {
                    let value = row.value.unwrap_or(f64::NAN);
                    assert!(value.is_finite() && value >= 0.0, "{what}: {value}");
                    if let Some(baseline) = row.baseline {
                        assert!(
                            baseline.is_finite() && baseline > 0.0,
                            "{what}: baseline {baseline}"
                        );
                        let ratio = row.ratio.expect("a baseline gives a ratio");
                        assert!(
                            (ratio - value / baseline).abs() <= 1e-9 * ratio.abs().max(1.0),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
    // Every figure the issue names is there.
    let names: Vec<String> = report
        .sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.name.clone()))
        .collect();
    for wanted in [
        "Switchboard p99 at 1 client(s)",
        "Switchboard p99.9 at 10 client(s)",
        "Switchboard at 1 session(s)",
        "server RSS per idle connected session",
        "server RSS per hibernated session",
        "rehydrate one session (GET on a hibernated session) p50",
        "SqliteRunLedger",
        "PgRunLedger",
        "control-plane share p50",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(wanted)),
            "no row {wanted:?} in {names:?}"
        );
    }
    if postgres {
        let pg = report
            .section("ledger_flush")
            .unwrap()
            .rows
            .iter()
            .find(|r| r.name.starts_with("PgRunLedger"))
            .unwrap();
        assert!(
            pg.value.is_some(),
            "with DATABASE_URL the Postgres ledger is measured"
        );
    }

    assert_eq!(report.goals.len(), 6, "the issue's six goals");
    for goal in &report.goals {
        assert!(
            goal.met.is_some(),
            "goal {:?} was not judged: {}",
            goal.goal,
            goal.figure
        );
        assert!(
            !goal.figure.is_empty(),
            "goal {:?} states no figure",
            goal.goal
        );
    }

    // The document names the machine and the command, and has every section and the goals.
    assert!(md.contains("- Command: `smoke test`"), "{md}");
    assert!(md.contains("cores") && md.contains("GiB memory"), "{md}");
    assert!(md.contains("## Goals"));
    for section in &report.sections {
        assert!(
            md.contains(&section.title),
            "the doc lacks {}",
            section.title
        );
    }
    let json: Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "tiny");
}

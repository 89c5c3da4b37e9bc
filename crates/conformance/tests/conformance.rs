//! The conformance runner: every contract case of every port against every implementation, the
//! disruption suite and the tripwire, as one libtest-compatible binary (`harness = false`).
//!
//! Trials are named `port::implementation::case`, `disruption::port::fault@op` and
//! `tripwire::registry`, so cargo's filters select them. An implementation whose backend is absent
//! here is listed as ignored with its reason; under `CI=true` it fails instead.
//! With `SWITCHBOARD_CONFORMANCE_REPORT=<path>`, a JSON report is written there for `cargo xtask
//! conformance`.

use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::json;
use std::sync::{Arc, Mutex};
use switchboard_conformance::harness::{panic_message, Outcome};
use switchboard_conformance::registry::{all_suites, waivers_table, WAIVERS};
use switchboard_conformance::tripwire::{self, RegistryView, SuiteView};
use switchboard_conformance::{disruption, ImplKind};

type Results = Arc<Mutex<Vec<serde_json::Value>>>;

fn ports_sources() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ports/src");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("crates/ports/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).expect("a readable source file"));
        }
    }
    out
}

fn record(
    results: &Results,
    kind: &str,
    port: &str,
    implementation: &str,
    case: &str,
    outcome: &Outcome,
) {
    let (status, detail) = match outcome {
        Outcome::Passed => ("passed", String::new()),
        Outcome::Failed(m) => ("failed", m.clone()),
        Outcome::Ignored(r) => ("ignored", r.clone()),
    };
    results.lock().unwrap().push(json!({
        "kind": kind, "port": port, "implementation": implementation, "case": case,
        "status": status, "detail": detail,
    }));
}

fn to_libtest(outcome: Outcome, ci: bool) -> Result<(), Failed> {
    match outcome {
        Outcome::Passed => Ok(()),
        Outcome::Failed(m) => Err(m.into()),
        Outcome::Ignored(r) if ci => Err(format!("backend unavailable under CI=true: {r}").into()),
        Outcome::Ignored(_) => Ok(()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let results: Results = Arc::default();
    let report_path = std::env::var("SWITCHBOARD_CONFORMANCE_REPORT").ok();

    if !args.list {
        print!("{}", waivers_table(WAIVERS));
    }

    let suites = all_suites();
    let disruptions = disruption::cases();
    let mut view = RegistryView {
        suites: suites
            .iter()
            .map(|s| (s.port, SuiteView::from(s)))
            .collect(),
        disruptions: disruptions
            .iter()
            .map(|d| (d.port, d.entry.clone()))
            .collect(),
        waivers: WAIVERS.to_vec(),
        contract_bullets: tripwire::contract_bullets_of_ports(&ports_sources()),
    };
    let metadata = json!({
        "suites": suites.iter().map(|s| json!({
            "port": s.port.name(),
            "plane": s.port.plane().name(),
            "cases": s.cases,
            "implementations": s.implementations.iter().map(|(n, k)| json!({"name": n, "kind": k})).collect::<Vec<_>>(),
            "catalog": s.catalog.iter().map(|e| json!({"name": e.name(), "outcome": e.outcome})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "waivers": WAIVERS,
    });

    let mut trials = Vec::new();
    for suite in suites {
        for t in suite.trials {
            let name = t.name();
            let (port, implementation, case, kind) =
                (t.port.name(), t.implementation, t.case, t.kind);
            let unavailable = t.unavailable.clone();
            if let (Some(reason), false, false) = (&unavailable, ci, args.list) {
                println!("ignored: {name} — {reason}");
            }
            let results = results.clone();
            let run = t.run;
            trials.push(
                Trial::test(name, move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                        .unwrap_or_else(|p| Outcome::Failed(panic_message(&p)));
                    let kind = if kind == ImplKind::Fake {
                        "fake"
                    } else {
                        "adapter"
                    };
                    record(&results, kind, port, implementation, case, &outcome);
                    to_libtest(outcome, ci)
                })
                .with_ignored_flag(unavailable.is_some() && !ci),
            );
        }
    }
    for d in disruptions {
        let results = results.clone();
        let (port, entry) = (d.port.name(), d.entry.clone());
        let run = d.run;
        trials.push(Trial::test(
            format!("disruption::{port}::{entry}"),
            move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                    .unwrap_or_else(|p| Outcome::Failed(panic_message(&p)));
                record(&results, "disruption", port, "lifecycle", &entry, &outcome);
                to_libtest(outcome, ci)
            },
        ));
    }
    let tripwire_view = std::mem::take(&mut view);
    trials.push(Trial::test("tripwire::registry", move || {
        let violations = tripwire::check(&tripwire_view);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} violation(s):\n  {}",
                violations.len(),
                violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
            .into())
        }
    }));

    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(path) = report_path {
        let report = json!({"metadata": metadata, "results": *results.lock().unwrap()});
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&report).expect("the report serializes"),
        )
        .expect("the report path is writable");
    }
    conclusion.exit();
}

//! The tripwire: fails when a port lacks any part of its bundle (fake, real adapter, contract cases,
//! fault catalog, disruption cases), when a waiver has gone stale, or when a `# Contract` bullet and
//! the registered cases disagree.

use crate::harness::ImplKind;
use crate::registry::{Part, PortSuite, Waiver};
use std::collections::{BTreeMap, BTreeSet};
use switchboard_ports::PortId;

/// What the tripwire sees of one port's suite (so tests can build synthetic registries).
#[derive(Debug, Clone, Default)]
pub struct SuiteView {
    pub cases: Vec<String>,
    pub implementations: Vec<(String, ImplKind)>,
    /// Catalog entry names (`fault@op`).
    pub catalog: Vec<String>,
}

impl From<&PortSuite> for SuiteView {
    fn from(s: &PortSuite) -> Self {
        SuiteView {
            cases: s.cases.iter().map(|c| c.to_string()).collect(),
            implementations: s
                .implementations
                .iter()
                .map(|(n, k)| (n.to_string(), *k))
                .collect(),
            catalog: s.catalog.iter().map(|e| e.name()).collect(),
        }
    }
}

/// Everything the tripwire checks, in one place.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    pub suites: BTreeMap<PortId, SuiteView>,
    /// `(port, fault@op)` of every disruption case.
    pub disruptions: BTreeSet<(PortId, String)>,
    pub waivers: Vec<Waiver>,
    /// Contract bullet names per port, parsed from the trait docs.
    pub contract_bullets: BTreeMap<PortId, Vec<String>>,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub port: PortId,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.port.name(), self.problem)
    }
}

/// Checks every port's bundle. An empty result means the registry is whole.
pub fn check(view: &RegistryView) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |port: PortId, problem: String| out.push(Violation { port, problem });
    for port in PortId::ALL {
        let waived = |part: Part| {
            view.waivers
                .iter()
                .any(|w| w.port == port && w.part == part)
        };
        let Some(suite) = view.suites.get(&port) else {
            flag(port, "no suite is registered".into());
            continue;
        };
        let has = |kind: ImplKind| suite.implementations.iter().any(|(_, k)| *k == kind);
        if !has(ImplKind::Fake) {
            flag(port, "no in-memory fake is registered".into());
        }
        match (has(ImplKind::Adapter), waived(Part::RealAdapter)) {
            (false, false) => flag(port, "no real adapter is registered and no waiver excuses it".into()),
            (true, true) => flag(port, "a real adapter is registered but its waiver is still in WAIVERS: remove the waiver".into()),
            _ => {}
        }
        if suite.cases.is_empty() {
            flag(port, "no contract cases".into());
        }
        let mut seen = BTreeSet::new();
        for c in &suite.cases {
            if !seen.insert(c) {
                flag(port, format!("contract case `{c}` is registered twice"));
            }
        }
        if suite.catalog.is_empty() {
            flag(port, "empty fault catalog".into());
        }
        for entry in &suite.catalog {
            if !view.disruptions.contains(&(port, entry.clone())) {
                flag(
                    port,
                    format!("catalogued fault `{entry}` has no disruption case"),
                );
            }
        }
        let bullets: BTreeSet<&String> = view
            .contract_bullets
            .get(&port)
            .map(|b| b.iter().collect())
            .unwrap_or_default();
        if bullets.is_empty() {
            flag(
                port,
                format!(
                    "the `{}` trait has no `# Contract` bullets",
                    port.info().trait_name
                ),
            );
        }
        let cases: BTreeSet<&String> = suite.cases.iter().collect();
        for b in bullets.difference(&cases) {
            flag(
                port,
                format!("`# Contract` names case `{b}`, which does not exist"),
            );
        }
        for c in cases.difference(&bullets) {
            flag(
                port,
                format!("case `{c}` is not named in the trait's `# Contract`"),
            );
        }
    }
    for (port, entry) in &view.disruptions {
        let catalogued = view
            .suites
            .get(port)
            .is_some_and(|s| s.catalog.contains(entry));
        if !catalogued {
            out.push(Violation {
                port: *port,
                problem: format!("disruption case `{entry}` matches no catalogued fault"),
            });
        }
    }
    out
}

/// Parses `# Contract` bullets (`/// - \`name\`: …`) of every `pub trait` in Rust source text.
/// Returns trait name → bullet names.
pub fn contract_bullets(source: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut doc: Vec<&str> = Vec::new();
    for line in source.lines() {
        let t = line.trim_start();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim());
            continue;
        }
        if t.starts_with("#[") {
            continue;
        }
        if let Some(rest) = t.strip_prefix("pub trait ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let mut bullets = Vec::new();
            let mut in_contract = false;
            for d in &doc {
                if d.starts_with('#') {
                    in_contract = d.trim_start_matches('#').trim() == "Contract";
                    continue;
                }
                if in_contract {
                    if let Some(b) = d.strip_prefix("- `") {
                        if let Some(end) = b.find('`') {
                            bullets.push(b[..end].to_string());
                        }
                    }
                }
            }
            out.insert(name, bullets);
        }
        doc.clear();
    }
    out
}

/// The contract bullets of every port, read from the ports crate's source files.
pub fn contract_bullets_of_ports(sources: &[String]) -> BTreeMap<PortId, Vec<String>> {
    let mut by_trait = BTreeMap::new();
    for s in sources {
        by_trait.extend(contract_bullets(s));
    }
    PortId::ALL
        .into_iter()
        .filter_map(|p| by_trait.get(p.info().trait_name).map(|b| (p, b.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
/// Durable things.
///
/// # Contract
/// - `record_then_get`: it reads back.
/// - `record_is_idempotent`: twice is once.
///
/// # Other
/// - `not_a_case`: ignored.
#[async_trait]
pub trait RunLedger: Send + Sync {}
"#;

    #[test]
    fn parses_contract_bullets_only() {
        let b = contract_bullets(SRC);
        assert_eq!(
            b["RunLedger"],
            vec!["record_then_get", "record_is_idempotent"]
        );
    }

    fn whole_registry() -> RegistryView {
        let mut v = RegistryView::default();
        for p in PortId::ALL {
            v.suites.insert(
                p,
                SuiteView {
                    cases: vec!["a".into(), "b".into()],
                    implementations: vec![
                        ("in_memory".into(), ImplKind::Fake),
                        ("real".into(), ImplKind::Adapter),
                    ],
                    catalog: vec!["unavailable@x".into()],
                },
            );
            v.disruptions.insert((p, "unavailable@x".into()));
            v.contract_bullets.insert(p, vec!["a".into(), "b".into()]);
        }
        v
    }

    #[test]
    fn a_whole_synthetic_registry_passes() {
        assert_eq!(check(&whole_registry()), vec![]);
    }

    #[test]
    fn removing_a_fake_trips() {
        let mut v = whole_registry();
        v.suites
            .get_mut(&PortId::RunLedger)
            .unwrap()
            .implementations
            .retain(|(_, k)| *k != ImplKind::Fake);
        let got = check(&v);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].port, PortId::RunLedger);
        assert!(got[0].problem.contains("fake"));
    }

    #[test]
    fn missing_adapter_trips_unless_waived_and_stale_waiver_trips() {
        let mut v = whole_registry();
        v.suites
            .get_mut(&PortId::Clock)
            .unwrap()
            .implementations
            .retain(|(_, k)| *k != ImplKind::Adapter);
        assert_eq!(check(&v).len(), 1);
        v.waivers.push(Waiver {
            port: PortId::Clock,
            part: Part::RealAdapter,
            reason: "r",
            issue: 1,
        });
        assert_eq!(check(&v), vec![]);
        v.waivers.push(Waiver {
            port: PortId::AuditLog,
            part: Part::RealAdapter,
            reason: "r",
            issue: 1,
        });
        let got = check(&v);
        assert_eq!(got.len(), 1);
        assert!(got[0].problem.contains("remove the waiver"));
    }

    #[test]
    fn contract_mismatch_uncovered_fault_and_missing_suite_trip() {
        let mut v = whole_registry();
        v.contract_bullets
            .get_mut(&PortId::SecretVault)
            .unwrap()
            .push("ghost".into());
        v.disruptions
            .remove(&(PortId::EventBus, "unavailable@x".into()));
        v.suites.remove(&PortId::RepoHost);
        v.suites
            .get_mut(&PortId::PriceBook)
            .unwrap()
            .catalog
            .clear();
        let got = check(&v);
        let text: Vec<String> = got.iter().map(|v| v.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("secret_vault") && t.contains("ghost")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("event_bus") && t.contains("no disruption case")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("repo_host") && t.contains("no suite")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("price_book") && t.contains("empty fault catalog")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("price_book") && t.contains("matches no catalogued fault")),
            "{text:?}"
        );
    }
}

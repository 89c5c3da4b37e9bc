//! Environment autodiscovery: a pure function from a workspace's file list to how to set it up.
//!
//! [`detect`] looks only at file *names* (a repository tree listing, relative paths with `/`
//! separators); it never reads a file, so the same answer comes from a sandbox's `workspace`
//! message, from `POST /v1/environment/detect` with `{"files": [...]}` and from a repo listing.
//!
//! # Rules
//!
//! 1. **Counting.** Paths are normalised by dropping empty and `.` components (`./a//b` is `a/b`).
//!    A path with a `.git` or `node_modules` component, an entry ending in `/` (a directory) and an
//!    entry that normalises to nothing are ignored. `file_count` is the number of distinct
//!    remaining paths. Detection only ever looks at counted paths, so a `package.json` inside
//!    `node_modules/` never decides anything.
//! 2. **Shallowest wins.** Every directory holding a marker file (table below) is a candidate. The
//!    candidate closest to the repository root wins: the root beats everything, a depth-1
//!    directory beats a depth-2 one (monorepos resolve to their root manifest).
//! 3. **Precedence.** Within one directory, and between directories at the same depth, the package
//!    manager earliest in this list wins (it is [`PackageManager::PRECEDENCE`]):
//!
//!    `cargo` > `go` > `gradle` > `maven` > `uv` > `poetry` > `pip` > `pnpm` > `yarn` > `bun` >
//!    `npm`.
//!
//!    Rust, Go and JVM build files come first because a root `package.json` or
//!    `requirements.txt` next to them is usually tooling (linters, docs, scripts), not the
//!    project. Within an ecosystem the lockfile-named tools rank above the manifest default, which
//!    is how **lockfiles beat manifests**: `pnpm-lock.yaml` + `package.json` is pnpm,
//!    `uv.lock` + `pyproject.toml` is uv, `poetry.lock` + `pyproject.toml` is poetry. Two
//!    candidates at the same depth with the same manager resolve to the alphabetically first
//!    directory, so the answer never depends on the order of the list.
//! 4. **Commands** run from the repository root: for a nested winner they are prefixed with
//!    `cd <dir> && ` (the directory shell-quoted when it needs it).
//!
//! | manager | marker files | install | test |
//! |---|---|---|---|
//! | `cargo` | `Cargo.toml` | `cargo fetch` | `cargo test` |
//! | `go` | `go.mod` | `go mod download` | `go test ./...` |
//! | `gradle` | `build.gradle[.kts]`, `settings.gradle[.kts]` | `./gradlew assemble` (`gradle` without a `gradlew`) | `./gradlew test` |
//! | `maven` | `pom.xml` | `mvn -B install -DskipTests` (`./mvnw` with a `mvnw`) | `mvn -B test` |
//! | `uv` | `uv.lock` | `uv sync` | `uv run pytest`* |
//! | `poetry` | `poetry.lock` | `poetry install` | `poetry run pytest`* |
//! | `pip` | `requirements.txt`, `pyproject.toml`, `setup.py` | `pip install -r requirements.txt` (and `-r requirements-dev.txt` when present), else `pip install -e .` | `python -m pytest`* |
//! | `pnpm` | `pnpm-lock.yaml`, `pnpm-workspace.yaml` | `pnpm install` | `pnpm test`† |
//! | `yarn` | `yarn.lock`, `.yarnrc.yml` | `yarn install` | `yarn test`† |
//! | `bun` | `bun.lockb`, `bun.lock`, `bunfig.toml` | `bun install` | `bun run test`† |
//! | `npm` | `package-lock.json`, `npm-shrinkwrap.json`, `package.json` | `npm ci` with a lockfile, else `npm install` | `npm test`† |
//!
//! \* only when the chosen directory's tree holds pytest evidence (`conftest.py`, `pytest.ini`,
//! `test_*.py` or `*_test.py`). † only when the chosen directory holds a `package.json`.

use crate::protocol::events::Event;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What autodiscovery concluded about a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub package_manager: String,
    pub file_count: u64,
    pub install: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
}

impl Environment {
    /// The `environment.detected` event announcing this environment.
    pub fn to_event(&self) -> Event {
        Event::EnvironmentDetected {
            package_manager: self.package_manager.clone(),
            file_count: self.file_count,
            install: self.install.clone(),
        }
    }
}

/// A package manager autodiscovery can name. The declaration order is the precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageManager {
    Cargo,
    Go,
    Gradle,
    Maven,
    Uv,
    Poetry,
    Pip,
    Pnpm,
    Yarn,
    Bun,
    Npm,
}

impl PackageManager {
    /// Every manager, highest precedence first.
    pub const PRECEDENCE: [PackageManager; 11] = [
        PackageManager::Cargo,
        PackageManager::Go,
        PackageManager::Gradle,
        PackageManager::Maven,
        PackageManager::Uv,
        PackageManager::Poetry,
        PackageManager::Pip,
        PackageManager::Pnpm,
        PackageManager::Yarn,
        PackageManager::Bun,
        PackageManager::Npm,
    ];

    /// The stable name used in `package_manager`.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Cargo => "cargo",
            PackageManager::Go => "go",
            PackageManager::Gradle => "gradle",
            PackageManager::Maven => "maven",
            PackageManager::Uv => "uv",
            PackageManager::Poetry => "poetry",
            PackageManager::Pip => "pip",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Yarn => "yarn",
            PackageManager::Bun => "bun",
            PackageManager::Npm => "npm",
        }
    }

    /// The manager a marker file name points at, if it is a marker.
    pub fn for_marker(file_name: &str) -> Option<PackageManager> {
        Some(match file_name {
            "Cargo.toml" => PackageManager::Cargo,
            "go.mod" => PackageManager::Go,
            "build.gradle" | "build.gradle.kts" | "settings.gradle" | "settings.gradle.kts" => {
                PackageManager::Gradle
            }
            "pom.xml" => PackageManager::Maven,
            "uv.lock" => PackageManager::Uv,
            "poetry.lock" => PackageManager::Poetry,
            "requirements.txt" | "pyproject.toml" | "setup.py" => PackageManager::Pip,
            "pnpm-lock.yaml" | "pnpm-workspace.yaml" => PackageManager::Pnpm,
            "yarn.lock" | ".yarnrc.yml" => PackageManager::Yarn,
            "bun.lockb" | "bun.lock" | "bunfig.toml" => PackageManager::Bun,
            "package-lock.json" | "npm-shrinkwrap.json" | "package.json" => PackageManager::Npm,
            _ => return None,
        })
    }
}

impl std::fmt::Display for PackageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Directory names whose contents are never counted nor searched.
pub const EXCLUDED_DIRS: [&str; 2] = [".git", "node_modules"];

/// Non-marker file names that change the commands of the directory they sit in.
const COMPANIONS: [&str; 3] = ["gradlew", "mvnw", "requirements-dev.txt"];

/// The normalised form of one listed path, or `None` when it is not counted (rule 1).
fn normalise(raw: &str) -> Option<String> {
    if raw.ends_with('/') {
        return None;
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.iter().any(|c| EXCLUDED_DIRS.contains(c)) {
        return None;
    }
    Some(parts.join("/"))
}

/// The distinct counted paths of a file list, normalised (rule 1 of the module docs).
pub fn counted_paths(files: &[String]) -> BTreeSet<String> {
    files.iter().filter_map(|f| normalise(f)).collect()
}

/// Splits a normalised path into its directory (`""` for the root) and file name.
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

fn depth(dir: &str) -> usize {
    if dir.is_empty() {
        0
    } else {
        dir.split('/').count()
    }
}

/// Whether a file name suggests the project's tests run under pytest.
fn is_pytest_evidence(name: &str) -> bool {
    name == "conftest.py"
        || name == "pytest.ini"
        || (name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py")))
}

/// Quotes a directory for a POSIX shell when it holds anything beyond plain path characters.
fn shell_quote(s: &str) -> String {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./@%+=:,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Decides how to set up a workspace from its file list; `None` when no ecosystem is recognised.
///
/// See the module docs for the rules: `.git/` and `node_modules/` are ignored, the shallowest
/// directory holding a marker wins, and ties go by the precedence `cargo` > `go` > `gradle` >
/// `maven` > `uv` > `poetry` > `pip` > `pnpm` > `yarn` > `bun` > `npm` (lockfiles beat
/// manifests). The answer does not depend on the order of `files` nor on duplicates in it.
pub fn detect(files: &[String]) -> Option<Environment> {
    let paths = counted_paths(files);

    // Directory → the marker and companion file names it holds.
    let mut dirs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut best: Option<(usize, PackageManager, &str)> = None;
    for path in &paths {
        let (dir, name) = split(path);
        let marker = PackageManager::for_marker(name);
        if marker.is_none() && !COMPANIONS.contains(&name) {
            continue;
        }
        dirs.entry(dir).or_default().insert(name);
        if let Some(pm) = marker {
            let candidate = (depth(dir), pm, dir);
            if best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        }
    }

    let (_, pm, dir) = best?;
    let names = &dirs[dir];
    let has = |n: &str| names.contains(n);
    let pytest = || {
        paths.iter().any(|p| {
            let inside = dir.is_empty()
                || p.strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'));
            inside && is_pytest_evidence(split(p).1)
        })
    };

    let (install, test): (Vec<String>, Vec<String>) = match pm {
        PackageManager::Cargo => (vec!["cargo fetch".into()], vec!["cargo test".into()]),
        PackageManager::Go => (vec!["go mod download".into()], vec!["go test ./...".into()]),
        PackageManager::Gradle => {
            let g = if has("gradlew") {
                "./gradlew"
            } else {
                "gradle"
            };
            (vec![format!("{g} assemble")], vec![format!("{g} test")])
        }
        PackageManager::Maven => {
            let m = if has("mvnw") { "./mvnw" } else { "mvn" };
            (
                vec![format!("{m} -B install -DskipTests")],
                vec![format!("{m} -B test")],
            )
        }
        PackageManager::Uv => (
            vec!["uv sync".into()],
            pytest()
                .then(|| "uv run pytest".into())
                .into_iter()
                .collect(),
        ),
        PackageManager::Poetry => (
            vec!["poetry install".into()],
            pytest()
                .then(|| "poetry run pytest".into())
                .into_iter()
                .collect(),
        ),
        PackageManager::Pip => {
            let install = if has("requirements.txt") {
                let mut v = vec!["pip install -r requirements.txt".to_string()];
                if has("requirements-dev.txt") {
                    v.push("pip install -r requirements-dev.txt".into());
                }
                v
            } else {
                vec!["pip install -e .".into()]
            };
            let test = pytest()
                .then(|| "python -m pytest".into())
                .into_iter()
                .collect();
            (install, test)
        }
        PackageManager::Pnpm | PackageManager::Yarn | PackageManager::Bun | PackageManager::Npm => {
            let (install, test) = match pm {
                PackageManager::Pnpm => ("pnpm install", "pnpm test"),
                PackageManager::Yarn => ("yarn install", "yarn test"),
                PackageManager::Bun => ("bun install", "bun run test"),
                _ if has("package-lock.json") || has("npm-shrinkwrap.json") => {
                    ("npm ci", "npm test")
                }
                _ => ("npm install", "npm test"),
            };
            let test = has("package.json")
                .then(|| test.to_string())
                .into_iter()
                .collect();
            (vec![install.to_string()], test)
        }
    };

    let in_dir = |cmd: String| {
        if dir.is_empty() {
            cmd
        } else {
            format!("cd {} && {cmd}", shell_quote(dir))
        }
    };
    Some(Environment {
        package_manager: pm.as_str().to_string(),
        file_count: paths.len() as u64,
        install: install.into_iter().map(in_dir).collect(),
        test: test.into_iter().map(in_dir).collect(),
    })
}

/// [`detect`], as the `environment.detected` event a session emits.
pub fn detect_event(files: &[String]) -> Option<Event> {
    detect(files).map(|env| env.to_event())
}

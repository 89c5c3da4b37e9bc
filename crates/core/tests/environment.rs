//! Environment autodiscovery: every ecosystem, the precedence rules, monorepos, exclusions, and
//! properties over random file lists.

use proptest::prelude::*;
use std::collections::BTreeSet;
use switchboard_core::environment::{
    counted_paths, detect, detect_event, Environment, PackageManager,
};
use switchboard_core::protocol::events::Event;

fn files(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn env(pm: &str, file_count: u64, install: &[&str], test: &[&str]) -> Environment {
    Environment {
        package_manager: pm.to_string(),
        file_count,
        install: files(install),
        test: files(test),
    }
}

/// One row: a name, a file list, and the environment expected from it.
struct Case {
    name: &'static str,
    files: &'static [&'static str],
    expect: Option<(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )>,
}

const CASES: &[Case] = &[
    // ---- one ecosystem each ----
    Case {
        name: "npm, plain package.json",
        files: &["package.json", "src/index.ts"],
        expect: Some(("npm", &["npm install"], &["npm test"])),
    },
    Case {
        name: "npm, package-lock.json",
        files: &["package.json", "package-lock.json", "index.js"],
        expect: Some(("npm", &["npm ci"], &["npm test"])),
    },
    Case {
        name: "npm, shrinkwrap",
        files: &["package.json", "npm-shrinkwrap.json"],
        expect: Some(("npm", &["npm ci"], &["npm test"])),
    },
    Case {
        name: "npm, lockfile without package.json has no test",
        files: &["package-lock.json"],
        expect: Some(("npm", &["npm ci"], &[])),
    },
    Case {
        name: "pnpm",
        files: &["package.json", "pnpm-lock.yaml"],
        expect: Some(("pnpm", &["pnpm install"], &["pnpm test"])),
    },
    Case {
        name: "pnpm workspace file",
        files: &["package.json", "pnpm-workspace.yaml"],
        expect: Some(("pnpm", &["pnpm install"], &["pnpm test"])),
    },
    Case {
        name: "yarn",
        files: &["package.json", "yarn.lock"],
        expect: Some(("yarn", &["yarn install"], &["yarn test"])),
    },
    Case {
        name: "yarn berry rc",
        files: &["package.json", ".yarnrc.yml"],
        expect: Some(("yarn", &["yarn install"], &["yarn test"])),
    },
    Case {
        name: "bun, binary lockfile",
        files: &["package.json", "bun.lockb"],
        expect: Some(("bun", &["bun install"], &["bun run test"])),
    },
    Case {
        name: "bun, text lockfile",
        files: &["package.json", "bun.lock"],
        expect: Some(("bun", &["bun install"], &["bun run test"])),
    },
    Case {
        name: "cargo",
        files: &["Cargo.toml", "Cargo.lock", "src/main.rs"],
        expect: Some(("cargo", &["cargo fetch"], &["cargo test"])),
    },
    Case {
        name: "go",
        files: &["go.mod", "go.sum", "main.go"],
        expect: Some(("go", &["go mod download"], &["go test ./..."])),
    },
    Case {
        name: "pip, requirements.txt",
        files: &["requirements.txt", "app.py"],
        expect: Some(("pip", &["pip install -r requirements.txt"], &[])),
    },
    Case {
        name: "pip, requirements with dev requirements and tests",
        files: &[
            "requirements.txt",
            "requirements-dev.txt",
            "tests/test_app.py",
        ],
        expect: Some((
            "pip",
            &[
                "pip install -r requirements.txt",
                "pip install -r requirements-dev.txt",
            ],
            &["python -m pytest"],
        )),
    },
    Case {
        name: "pip, plain pyproject.toml",
        files: &["pyproject.toml", "src/pkg/__init__.py"],
        expect: Some(("pip", &["pip install -e ."], &[])),
    },
    Case {
        name: "pip, setup.py with conftest",
        files: &["setup.py", "conftest.py"],
        expect: Some(("pip", &["pip install -e ."], &["python -m pytest"])),
    },
    Case {
        name: "pip, requirements beat pyproject",
        files: &["pyproject.toml", "requirements.txt"],
        expect: Some(("pip", &["pip install -r requirements.txt"], &[])),
    },
    Case {
        name: "uv",
        files: &["pyproject.toml", "uv.lock", "tests/foo_test.py"],
        expect: Some(("uv", &["uv sync"], &["uv run pytest"])),
    },
    Case {
        name: "poetry",
        files: &["pyproject.toml", "poetry.lock", "pytest.ini"],
        expect: Some(("poetry", &["poetry install"], &["poetry run pytest"])),
    },
    Case {
        name: "maven",
        files: &["pom.xml", "src/main/java/App.java"],
        expect: Some(("maven", &["mvn -B install -DskipTests"], &["mvn -B test"])),
    },
    Case {
        name: "maven wrapper",
        files: &["pom.xml", "mvnw", "mvnw.cmd"],
        expect: Some((
            "maven",
            &["./mvnw -B install -DskipTests"],
            &["./mvnw -B test"],
        )),
    },
    Case {
        name: "gradle without wrapper",
        files: &["build.gradle", "src/main/java/App.java"],
        expect: Some(("gradle", &["gradle assemble"], &["gradle test"])),
    },
    Case {
        name: "gradle kotlin dsl with wrapper",
        files: &[
            "build.gradle.kts",
            "settings.gradle.kts",
            "gradlew",
            "gradlew.bat",
        ],
        expect: Some(("gradle", &["./gradlew assemble"], &["./gradlew test"])),
    },
    Case {
        name: "gradle wrapper elsewhere is not used",
        files: &["build.gradle", "tools/gradlew"],
        expect: Some(("gradle", &["gradle assemble"], &["gradle test"])),
    },
    // ---- lockfiles beat manifests ----
    Case {
        name: "pnpm lock beats npm lock",
        files: &["package.json", "package-lock.json", "pnpm-lock.yaml"],
        expect: Some(("pnpm", &["pnpm install"], &["pnpm test"])),
    },
    Case {
        name: "yarn lock beats npm lock",
        files: &["package.json", "package-lock.json", "yarn.lock"],
        expect: Some(("yarn", &["yarn install"], &["yarn test"])),
    },
    Case {
        name: "pnpm beats yarn beats bun",
        files: &["package.json", "bun.lockb", "yarn.lock", "pnpm-lock.yaml"],
        expect: Some(("pnpm", &["pnpm install"], &["pnpm test"])),
    },
    Case {
        name: "yarn beats bun",
        files: &["package.json", "bun.lockb", "yarn.lock"],
        expect: Some(("yarn", &["yarn install"], &["yarn test"])),
    },
    Case {
        name: "uv lock beats poetry lock and requirements",
        files: &[
            "pyproject.toml",
            "poetry.lock",
            "uv.lock",
            "requirements.txt",
        ],
        expect: Some(("uv", &["uv sync"], &[])),
    },
    Case {
        name: "poetry lock beats requirements",
        files: &["pyproject.toml", "poetry.lock", "requirements.txt"],
        expect: Some(("poetry", &["poetry install"], &[])),
    },
    // ---- several ecosystems at the root ----
    Case {
        name: "cargo beats package.json tooling",
        files: &["Cargo.toml", "package.json", "package-lock.json"],
        expect: Some(("cargo", &["cargo fetch"], &["cargo test"])),
    },
    Case {
        name: "cargo beats go",
        files: &["go.mod", "Cargo.toml"],
        expect: Some(("cargo", &["cargo fetch"], &["cargo test"])),
    },
    Case {
        name: "go beats python and js",
        files: &["go.mod", "requirements.txt", "package.json"],
        expect: Some(("go", &["go mod download"], &["go test ./..."])),
    },
    Case {
        name: "gradle beats maven",
        files: &["pom.xml", "build.gradle"],
        expect: Some(("gradle", &["gradle assemble"], &["gradle test"])),
    },
    Case {
        name: "maven beats npm (frontend plugin layout)",
        files: &["pom.xml", "package.json", "package-lock.json"],
        expect: Some(("maven", &["mvn -B install -DskipTests"], &["mvn -B test"])),
    },
    Case {
        name: "python beats js",
        files: &["requirements.txt", "package.json", "yarn.lock", "manage.py"],
        expect: Some(("pip", &["pip install -r requirements.txt"], &[])),
    },
    // ---- root beats nested; shallowest wins ----
    Case {
        name: "pnpm monorepo resolves to its root",
        files: &[
            "package.json",
            "pnpm-lock.yaml",
            "pnpm-workspace.yaml",
            "packages/a/package.json",
            "packages/b/package.json",
            "packages/b/Cargo.toml",
        ],
        expect: Some(("pnpm", &["pnpm install"], &["pnpm test"])),
    },
    Case {
        name: "root npm beats nested cargo",
        files: &[
            "package.json",
            "src-tauri/Cargo.toml",
            "src-tauri/src/main.rs",
        ],
        expect: Some(("npm", &["npm install"], &["npm test"])),
    },
    Case {
        name: "cargo workspace root beats member manifests",
        files: &["Cargo.toml", "crates/a/Cargo.toml", "crates/b/Cargo.toml"],
        expect: Some(("cargo", &["cargo fetch"], &["cargo test"])),
    },
    Case {
        name: "nested only: commands run in that directory",
        files: &["README.md", "backend/go.mod", "backend/main.go"],
        expect: Some((
            "go",
            &["cd backend && go mod download"],
            &["cd backend && go test ./..."],
        )),
    },
    Case {
        name: "shallowest nested wins over deeper precedence",
        files: &["web/package.json", "services/api/Cargo.toml"],
        expect: Some(("npm", &["cd web && npm install"], &["cd web && npm test"])),
    },
    Case {
        name: "same depth: precedence then name",
        files: &["web/package.json", "api/go.mod", "zeta/go.mod"],
        expect: Some((
            "go",
            &["cd api && go mod download"],
            &["cd api && go test ./..."],
        )),
    },
    Case {
        name: "same depth, same manager: alphabetically first directory",
        files: &["b/package.json", "a/package.json"],
        expect: Some(("npm", &["cd a && npm install"], &["cd a && npm test"])),
    },
    Case {
        name: "lockfile in a nested dir decides only that dir",
        files: &["app/package.json", "app/yarn.lock", "app/src/x.ts"],
        expect: Some((
            "yarn",
            &["cd app && yarn install"],
            &["cd app && yarn test"],
        )),
    },
    Case {
        name: "nested python: pytest evidence is looked for under the chosen dir only",
        files: &["py/requirements.txt", "other/test_x.py"],
        expect: Some(("pip", &["cd py && pip install -r requirements.txt"], &[])),
    },
    Case {
        name: "nested python with tests inside",
        files: &["py/requirements.txt", "py/tests/test_x.py", "pyx/test_y.py"],
        expect: Some((
            "pip",
            &["cd py && pip install -r requirements.txt"],
            &["cd py && python -m pytest"],
        )),
    },
    Case {
        name: "a directory name needing quotes is shell-quoted",
        files: &["my app/go.mod"],
        expect: Some((
            "go",
            &["cd 'my app' && go mod download"],
            &["cd 'my app' && go test ./..."],
        )),
    },
    Case {
        name: "a quote in the directory name is escaped",
        files: &["it's/go.mod"],
        expect: Some((
            "go",
            &[r"cd 'it'\''s' && go mod download"],
            &[r"cd 'it'\''s' && go test ./..."],
        )),
    },
    // ---- exclusions and nothing recognised ----
    Case {
        name: "node_modules manifests never count",
        files: &[
            "node_modules/left-pad/package.json",
            "node_modules/x/Cargo.toml",
        ],
        expect: None,
    },
    Case {
        name: ".git contents never count",
        files: &[".git/HEAD", ".git/config", "sub/.git/go.mod"],
        expect: None,
    },
    Case {
        name: "nested node_modules are excluded too, root wins",
        files: &["go.mod", "web/node_modules/a/Cargo.toml"],
        expect: Some(("go", &["go mod download"], &["go test ./..."])),
    },
    Case {
        name: "markers must match exactly (case, suffix)",
        files: &[
            "cargo.toml",
            "Package.json",
            "requirements.txt.bak",
            "pom.xml.orig",
        ],
        expect: None,
    },
    Case {
        name: "no marker",
        files: &["README.md", "src/main.c", "Makefile"],
        expect: None,
    },
    Case {
        name: "empty list",
        files: &[],
        expect: None,
    },
];

#[test]
fn table_of_ecosystems_and_precedence() {
    for case in CASES {
        let list = files(case.files);
        let got = detect(&list);
        let want = case
            .expect
            .map(|(pm, install, test)| env(pm, counted_paths(&list).len() as u64, install, test));
        assert_eq!(got, want, "case {:?}", case.name);
    }
}

#[test]
fn every_package_manager_is_covered_by_the_table() {
    let named: BTreeSet<&str> = CASES
        .iter()
        .filter_map(|c| c.expect.map(|(pm, _, _)| pm))
        .collect();
    for pm in PackageManager::PRECEDENCE {
        assert!(named.contains(pm.as_str()), "no case for {pm}");
    }
}

#[test]
fn package_manager_names_are_stable() {
    let names: Vec<&str> = PackageManager::PRECEDENCE
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(
        names,
        ["cargo", "go", "gradle", "maven", "uv", "poetry", "pip", "pnpm", "yarn", "bun", "npm"]
    );
    for pm in PackageManager::PRECEDENCE {
        assert_eq!(
            serde_json::to_value(pm).unwrap(),
            serde_json::json!(pm.as_str())
        );
    }
    let mut sorted = PackageManager::PRECEDENCE;
    sorted.sort();
    assert_eq!(
        sorted,
        PackageManager::PRECEDENCE,
        "Ord is the precedence order"
    );
}

#[test]
fn file_count_ignores_git_node_modules_duplicates_and_directories() {
    let list = files(&[
        "package.json",
        "./package.json",
        "src//index.ts",
        "src/index.ts",
        "src/",
        "",
        ".",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "node_modules/a/index.js",
        "packages/x/node_modules/b/package.json",
        "vendor/lib/.git/config",
        "README.md",
    ]);
    let got = detect(&list).expect("package.json is at the root");
    assert_eq!(got.file_count, 3, "package.json, src/index.ts, README.md");
    assert_eq!(
        counted_paths(&list).into_iter().collect::<Vec<_>>(),
        ["README.md", "package.json", "src/index.ts"]
    );
    assert_eq!(got.package_manager, "npm");
}

#[test]
fn a_file_merely_named_like_an_excluded_dir_prefix_is_counted() {
    let list = files(&[
        ".github/workflows/ci.yml",
        "node_modules_backup.txt",
        ".gitignore",
        "go.mod",
    ]);
    assert_eq!(detect(&list).unwrap().file_count, 4);
}

#[test]
fn the_event_carries_the_environment() {
    let list = files(&["go.mod", "main.go"]);
    assert_eq!(
        detect_event(&list),
        Some(Event::EnvironmentDetected {
            package_manager: "go".into(),
            file_count: 2,
            install: vec!["go mod download".into()],
        })
    );
    assert_eq!(detect_event(&[]), None);
    assert_eq!(detect_event(&files(&["README.md"])), None);
}

#[test]
fn environment_wire_shape_omits_empty_test() {
    let with_test = detect(&files(&["package.json"])).unwrap();
    assert_eq!(
        serde_json::to_value(&with_test).unwrap(),
        serde_json::json!({
            "package_manager": "npm", "file_count": 1,
            "install": ["npm install"], "test": ["npm test"]
        })
    );
    let without = detect(&files(&["requirements.txt"])).unwrap();
    let json = serde_json::to_value(&without).unwrap();
    assert!(json.get("test").is_none(), "{json}");
    let back: Environment = serde_json::from_value(json).unwrap();
    assert_eq!(back, without);
}

// ---------------------------------------------------------------- properties

/// Path pieces that mix markers, companions, noise and excluded directories.
fn path_strategy() -> impl Strategy<Value = String> {
    let dir = prop::sample::select(vec![
        "",
        "",
        "",
        "./",
        "a/",
        "b/",
        "a/b/",
        "pkg/x/",
        ".git/",
        "node_modules/",
        "a/node_modules/",
        "c//",
        "web/",
        "my dir/",
    ]);
    let name = prop::sample::select(vec![
        "package.json",
        "package-lock.json",
        "pnpm-lock.yaml",
        "yarn.lock",
        "bun.lockb",
        "Cargo.toml",
        "go.mod",
        "requirements.txt",
        "requirements-dev.txt",
        "pyproject.toml",
        "uv.lock",
        "poetry.lock",
        "pom.xml",
        "mvnw",
        "build.gradle",
        "gradlew",
        "test_a.py",
        "conftest.py",
        "README.md",
        "main.rs",
        "index.ts",
        "HEAD",
    ]);
    (dir, name).prop_map(|(d, n)| format!("{d}{n}"))
}

/// Reference model for counting, written independently of the implementation.
fn reference_count(list: &[String]) -> u64 {
    let mut seen = BTreeSet::new();
    for raw in list {
        if raw.ends_with('/') {
            continue;
        }
        let comps: Vec<&str> = raw
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if comps.is_empty() || comps.contains(&".git") || comps.contains(&"node_modules") {
            continue;
        }
        seen.insert(comps.join("/"));
    }
    seen.len() as u64
}

proptest! {
    #[test]
    fn file_count_is_the_number_of_distinct_counted_paths(
        list in prop::collection::vec(path_strategy(), 0..40)
    ) {
        let count = reference_count(&list);
        prop_assert_eq!(counted_paths(&list).len() as u64, count);
        if let Some(env) = detect(&list) {
            prop_assert_eq!(env.file_count, count);
            prop_assert!(!env.install.is_empty());
        }
    }

    #[test]
    fn detection_is_invariant_under_permutation_and_duplication(
        (list, shuffled) in prop::collection::vec(path_strategy(), 0..40)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        dup in 0usize..40,
    ) {
        let base = detect(&list);
        prop_assert_eq!(&detect(&shuffled), &base);
        let mut doubled = shuffled.clone();
        if !list.is_empty() {
            doubled.push(list[dup % list.len()].clone());
            doubled.push(format!("./{}", list[dup % list.len()]));
        }
        prop_assert_eq!(&detect(&doubled), &base);
    }

    #[test]
    fn excluded_entries_never_change_the_answer(
        list in prop::collection::vec(path_strategy(), 0..30),
        junk in prop::collection::vec(path_strategy(), 0..10),
        under in prop::sample::select(vec![".git/", "node_modules/", "x/node_modules/", "y/.git/"]),
    ) {
        let base = detect(&list);
        let mut more = list.clone();
        more.extend(junk.iter().map(|j| format!("{under}{j}")));
        prop_assert_eq!(detect(&more), base);
    }

    #[test]
    fn deeper_markers_never_change_a_found_answer(
        list in prop::collection::vec(path_strategy(), 1..30),
        extra in prop::collection::vec(path_strategy(), 1..10),
    ) {
        // Every generated marker sits at depth <= 2, so anything under `z/y/x/` is deeper.
        let base = detect(&list);
        let mut more = list.clone();
        more.extend(extra.iter().map(|e| format!("z/y/x/{e}")));
        let got = detect(&more);
        match base {
            Some(b) => {
                let g = got.expect("still found");
                prop_assert_eq!(&g.package_manager, &b.package_manager);
                prop_assert_eq!(&g.install, &b.install);
                prop_assert_eq!(g.file_count, reference_count(&more));
            }
            None => {
                // Nothing before: whatever is found now sits under the new directory.
                if let Some(g) = got {
                    prop_assert!(
                        g.install.iter().all(|c| c.starts_with("cd z/y/x") || c.starts_with("cd 'z/y/x")),
                        "{:?}", g
                    );
                }
            }
        }
    }

    #[test]
    fn a_root_marker_always_wins_over_nested_ones(
        nested in prop::collection::vec(path_strategy(), 0..30),
        root in prop::sample::select(vec!["Cargo.toml", "go.mod", "pom.xml", "package.json", "uv.lock"]),
    ) {
        let mut list: Vec<String> = nested.iter().map(|n| format!("deep/{n}")).collect();
        list.push(root.to_string());
        let got = detect(&list).expect("a root marker is recognised");
        prop_assert!(got.install.iter().all(|c| !c.starts_with("cd ")), "{:?}", got);
    }
}

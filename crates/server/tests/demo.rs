//! `switchboard demo`, run as a user runs it: the built binary in a child process, with the real
//! bridge and agent beside it. With the scripted ACP agent it must stream the real output of a
//! command run in the sandbox's workspace, end with `execution_complete` completed and the run's
//! ledger record (usage, events), exit 0, remove its temporary data, and leave no process of its
//! sandbox behind. With OpenCode (CI sets `SWITCHBOARD_OPENCODE`) it must also show that the model
//! server received the tenant's BYOK key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one demo may take before the test calls it hung (the demo has its own, shorter
/// deadlines; this one only turns a hang into a failure).
const SCRIPTED_WAIT: Duration = Duration::from_secs(300);
const OPENCODE_WAIT: Duration = Duration::from_secs(600);

fn switchboard() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard"))
}

fn siblings() {
    common::bridge();
    common::scripted_agent();
}

/// What a finished demo printed.
struct Demo {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Demo {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The first stdout line that starts with `prefix` once its indent is trimmed (returned
    /// trimmed), or a failure showing all the output.
    fn line(&self, prefix: &str) -> &str {
        self.lines()
            .into_iter()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}\n{self}"))
    }

    /// Event lines of `kind` (`#<seq> <type> <run> <text>`).
    fn events(&self, kind: &str) -> Vec<&str> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with('#') && l.split_whitespace().nth(1) == Some(kind))
            .collect()
    }
}

impl std::fmt::Display for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `switchboard demo <args>` with an environment holding nothing the demo reads, except
/// `extra`; kills it and fails when it takes longer than `within`.
fn run_demo(args: &[&str], extra: &[(&str, &str)], within: Duration) -> Demo {
    let scratch = std::env::temp_dir().join(format!(
        "switchboard-demo-test-{}-{}",
        std::process::id(),
        args.join("_").replace(['/', ' '], "_")
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    let mut cmd = Command::new(switchboard());
    cmd.arg("demo").args(args);
    for name in [
        "DATABASE_URL",
        "SWITCHBOARD_DATA_DIR",
        "SWITCHBOARD_MASTER_KEY",
        "SWITCHBOARD_MASTER_KEY_PREVIOUS",
        "SWITCHBOARD_OPENCODE",
        "SWITCHBOARD_URL",
        "SWITCHBOARD_API_KEY",
        "RUST_LOG",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("the switchboard binary starts");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let demo = Demo {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        status.is_some(),
        "switchboard demo {args:?} did not end within {within:?}\n{demo}"
    );
    demo
}

/// Live processes (pids) in process group `pgid`, or whose working directory or command line
/// names `dir`.
fn processes_of(pgid: i32, dir: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| stat[i + 1..].to_string()) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("X");
        if state == "Z" || state == "X" {
            continue;
        }
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if group == Some(pgid) || cwd.contains(dir) || cmdline.contains(dir) {
            found.push((pid, format!("cwd {cwd}, cmdline {cmdline}")));
        }
    }
    found
}

/// The field after `word` in `line` (`"process group 12, …"` → `12`).
fn after<'a>(line: &'a str, word: &str) -> &'a str {
    let rest = &line[line
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"))
        + word.len()..];
    rest.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches([',', ';', ')'])
}

/// The checks both agents share: the run completed in a sandbox that is now gone, its record was
/// read from the ledger, the temporary data was removed. Returns the sandbox's workspace.
fn assert_a_clean_completed_run(demo: &Demo) -> String {
    assert_eq!(demo.code, Some(0), "the demo must exit 0\n{demo}");
    let sandboxes = demo.line("sandboxes ");
    if common::in_ci() {
        assert!(
            sandboxes.contains("bubblewrap"),
            "under CI the local sandbox must be isolated: {sandboxes}\n{demo}"
        );
    } else {
        assert!(
            sandboxes.contains("bubblewrap") || sandboxes.contains("NOT isolated"),
            "{sandboxes}"
        );
    }
    let data_dir = after(demo.line("data "), "data").to_string();
    assert!(
        data_dir.contains("switchboard-demo-"),
        "a fresh temporary data dir: {data_dir}"
    );

    // One sandbox was started; its workspace is where the command ran.
    let started = demo.line("sandbox    lp-");
    let pgid: i32 = after(started, "process group").parse().expect("a pgid");
    let workspace = after(started, "workspace").to_string();
    assert!(
        workspace.starts_with(&data_dir) && workspace.ends_with("/workspace"),
        "the workspace is inside the demo's data dir: {workspace}"
    );

    // The events streamed in order and end with the run's completion.
    let complete = demo.events("execution_complete");
    assert_eq!(complete.len(), 1, "one execution_complete\n{demo}");
    assert!(
        after(complete[0], "execution_complete").starts_with("run_")
            && complete[0].contains(" completed"),
        "the run completed: {}",
        complete[0]
    );
    let seqs: Vec<u64> = demo
        .lines()
        .iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| l[1..].split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "event lines are in seq order: {seqs:?}"
    );

    // The ledger's record: completed, with usage, a cost and events.
    let record = demo.line("status ");
    assert!(record.starts_with("status completed,"), "{record}");
    let input: u64 = after(record, "usage").parse().unwrap();
    let output: u64 = after(record, "in /").parse().unwrap();
    assert!(input > 0 && output > 0, "usage is recorded: {record}");
    let cost: u64 = after(record, "cost").parse().unwrap();
    assert!(cost > 0, "the model is priced, so the run costs: {record}");
    let events: u64 = record
        .rsplit(", ")
        .next()
        .and_then(|t| t.strip_suffix(" events"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an event count in {record:?}"));
    assert!(
        events as usize >= demo.events("tool_result").len() + 2,
        "the record holds the run's events: {record}"
    );
    let kinds = demo.line("events ");
    assert!(
        kinds.contains("run.started") && kinds.ends_with("execution_complete"),
        "the ledger's events run from start to completion: {kinds}"
    );

    // Shut down: the sandbox ended, nothing of it is left, the data is gone.
    assert!(
        demo.lines()
            .iter()
            .any(|l| l.trim_start().starts_with("sandbox    lp-")
                && l.contains(" ended (")
                && l.contains(&format!("process group {pgid}: no process left"))),
        "the demo saw its sandbox end and checked its process group\n{demo}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(pgid, &data_dir);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the demo's sandbox outlived it: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !Path::new(&data_dir).exists(),
        "the demo removes its data dir {data_dir}"
    );
    assert!(demo.stdout.contains("\ndemo complete:"), "{demo}");
    workspace
}

#[test]
fn the_demo_with_the_scripted_agent_runs_a_real_command_in_its_sandbox() {
    siblings();
    let demo = run_demo(&["--agent", "scripted"], &[], SCRIPTED_WAIT);
    assert!(
        demo.line("agent ").contains("scripted ACP agent"),
        "the demo says which agent: {}",
        demo.line("agent ")
    );
    let workspace = assert_a_clean_completed_run(&demo);

    // The command really ran in the sandbox's workspace: its output is the workspace's path, the
    // machine's kernel name and the file it wrote there.
    let calls = demo.events("tool_call");
    assert!(
        calls.len() == 1 && calls[0].contains("bash") && calls[0].contains("uname -s"),
        "one bash tool call: {calls:?}"
    );
    let results = demo.events("tool_result");
    assert_eq!(results.len(), 1, "{demo}");
    let kernel = String::from_utf8(Command::new("uname").arg("-s").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let status = results[0].split_whitespace().nth(3);
    assert_eq!(status, Some("ok"), "the command succeeded: {}", results[0]);
    for expected in [workspace.as_str(), kernel.as_str(), "hello.txt"] {
        assert!(
            results[0].contains(expected),
            "the tool's real output reached the client ({expected:?} missing): {}",
            results[0]
        );
    }
    assert!(
        demo.line("BYOK       PUT /v1/credentials/openai")
            .contains("sk-demo-…"),
        "the BYOK key is stored and shown redacted\n{demo}"
    );
}

#[test]
fn the_demo_with_opencode_shows_the_tenant_key_reaching_the_model_server() {
    let Some(opencode) = common::opencode("the demo with OpenCode") else {
        return;
    };
    let opencode = opencode.display().to_string();
    siblings();
    let demo = run_demo(
        &["--agent", "opencode"],
        &[("SWITCHBOARD_OPENCODE", &opencode)],
        OPENCODE_WAIT,
    );
    assert!(
        demo.line("agent ").contains("OpenCode at"),
        "the demo says which agent: {}\n{demo}",
        demo.line("agent ")
    );
    let workspace = assert_a_clean_completed_run(&demo);
    let results = demo.events("tool_result");
    assert!(
        results
            .iter()
            .any(|r| r.split_whitespace().nth(3) == Some("ok")
                && r.contains(&workspace)
                && r.contains("hello.txt")),
        "OpenCode's bash tool ran the command in the sandbox: {results:?}\n{demo}"
    );
    let byok = demo.line("BYOK: the model server saw");
    assert!(
        byok.contains("every one with Authorization: Bearer sk-demo-…"),
        "{byok}"
    );
    let stored = demo.line("BYOK       PUT");
    assert!(
        stored.contains(after(byok, "Bearer")),
        "the key the model server saw is the one stored: {stored} / {byok}"
    );
}

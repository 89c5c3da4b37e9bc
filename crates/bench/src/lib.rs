//! Switchboard's benchmarks (issue 6): the real server on loopback with its real stores, driven
//! by scripted Rust sandboxes and clients, each figure reported beside a baseline measured in the
//! same run (a bare tokio-tungstenite relay with no persistence, raw SQLite inserts, a raw
//! Postgres `COPY`).
//!
//! Processes: the driver (`switchboard-bench run`) starts the server under test and the bare relay
//! as child processes of its own binary (`switchboard-bench serve`, `switchboard-bench relay`), so
//! that both sides of every socket do not share one file-descriptor limit and the server's memory
//! is read from `/proc/<pid>/status` alone. Session start uses the local sandbox provider with
//! this binary as an instant bridge (`switchboard-bench sandbox`).
//!
//! No figure here is asserted by a test: the smoke test (`tests/smoke.rs`) only checks that a tiny
//! run produces every section with finite numbers.

pub mod children;
pub mod measure;
pub mod relay;
pub mod report;
pub mod sandbox;
pub mod serve;
pub mod sys;
pub mod wire;

use std::time::Duration;

/// The model every bench session uses (the embedded price table knows it).
pub const MODEL: &str = "openai/gpt-4o-mini";

/// The longest any single wait of the bench may take: a hang fails with a message, never passes.
pub const WAIT: Duration = Duration::from_secs(60);

/// How big a run is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Seconds: the smoke test's size, numbers meaningless.
    Tiny,
    /// A few minutes on 2 cores (the default of `cargo xtask bench`).
    Quick,
    /// The sizes (10,000 sessions, 100,000-event replay, 1,000 concurrent sessions).
    Full,
}

/// The sizes of one mode.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Messages timed per latency configuration, after `latency_warmup` untimed ones.
    pub latency_messages: usize,
    pub latency_warmup: usize,
    /// Clients per session in the latency configurations.
    pub latency_clients: Vec<usize>,
    /// `(concurrent sessions, events per session)` of each throughput level.
    pub throughput: Vec<(usize, usize)>,
    /// Events a sandbox may have sent that its client has not yet received (below the server's
    /// per-client buffer of 256 frames, past which a client is dropped as too slow).
    pub window: usize,
    /// Idle connected sessions held at once (capped by the file-descriptor limit).
    pub idle_sessions: usize,
    /// Sessions created and left to hibernate, for the memory per hibernated session.
    pub hibernated_sessions: usize,
    /// Hibernated sessions woken one by one for the rehydration time.
    pub rehydrate_samples: usize,
    /// Event counts replayed with `after = 0`.
    pub replay_events: Vec<usize>,
    /// Replays timed per event count.
    pub replay_repeats: usize,
    /// Events per ledger run, and runs per store.
    pub ledger_run_events: usize,
    pub ledger_runs: usize,
    /// Sessions started through the local sandbox provider.
    pub start_samples: usize,
}

impl Mode {
    pub fn sizes(self) -> Sizes {
        match self {
            Mode::Tiny => Sizes {
                latency_messages: 20,
                latency_warmup: 5,
                latency_clients: vec![1, 10],
                throughput: vec![(1, 100), (4, 25)],
                window: 16,
                idle_sessions: 10,
                hibernated_sessions: 10,
                rehydrate_samples: 3,
                replay_events: vec![200],
                replay_repeats: 1,
                ledger_run_events: 200,
                ledger_runs: 2,
                start_samples: 2,
            },
            Mode::Quick => Sizes {
                latency_messages: 1_000,
                latency_warmup: 100,
                latency_clients: vec![1, 10],
                throughput: vec![(1, 20_000), (100, 200), (1_000, 20)],
                window: 192,
                idle_sessions: 1_000,
                hibernated_sessions: 500,
                rehydrate_samples: 50,
                replay_events: vec![10_000],
                replay_repeats: 3,
                ledger_run_events: 10_000,
                ledger_runs: 3,
                start_samples: 20,
            },
            Mode::Full => Sizes {
                latency_messages: 5_000,
                latency_warmup: 500,
                latency_clients: vec![1, 10],
                throughput: vec![(1, 100_000), (100, 1_000), (1_000, 100)],
                window: 192,
                idle_sessions: 10_000,
                hibernated_sessions: 2_000,
                rehydrate_samples: 200,
                replay_events: vec![10_000, 100_000],
                replay_repeats: 3,
                ledger_run_events: 10_000,
                ledger_runs: 10,
                start_samples: 100,
            },
        }
    }
}

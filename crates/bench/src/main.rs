//! `switchboard-bench`: `run` measures everything and prints the table (and writes the report);
//! `serve`, `relay` and `sandbox` are the child processes `run` starts (the server under test,
//! the bare relay, the instant bridge). With `BENCH_DEBUG` set, `run` keeps its scratch directory
//! and the scripted peers print why the server closed their sockets.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard_bench::measure::{self, Ctx};
use switchboard_bench::{serve, sys, Mode};

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    about = "Switchboard against a bare relay, measured in one run"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every measurement and prints the table.
    Run {
        #[arg(long, value_enum, default_value = "quick")]
        mode: Mode,
        /// Writes the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Writes the report as Markdown here (`docs/benchmarks.md`).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// The command line the report names (default: this one).
        #[arg(long)]
        command: Option<String>,
        /// Scratch space for data directories (default: a fresh directory under the temp dir).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Only these sections (e.g. `durable_throughput`; repeat or separate with commas).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Throughput levels instead of the mode's, as `SESSIONSxEVENTS` (e.g. `1x5000,100x100`).
        #[arg(long, value_delimiter = ',')]
        throughput: Vec<String>,
    },
    /// The server under test (a child of `run`).
    Serve(serve::ServeArgs),
    /// The bare relay (a child of `run`).
    Relay,
    /// The instant bridge (started by the local sandbox provider).
    Sandbox,
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("a tokio runtime")
}

fn main() -> ExitCode {
    let main_ns = sys::unix_nanos();
    let outcome = match Cli::parse().command {
        Cmd::Sandbox => runtime(false).block_on(switchboard_bench::sandbox::run(main_ns)),
        Cmd::Relay => runtime(true).block_on(async {
            sys::raise_fd_limit();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::json!({"ready": {"addr": addr.to_string()}})
            );
            tokio::spawn(switchboard_bench::relay::serve(listener));
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
            Ok(())
        }),
        Cmd::Serve(args) => runtime(true).block_on(serve::run(args)),
        Cmd::Run {
            mode,
            json,
            markdown,
            command,
            scratch,
            only,
            throughput,
        } => runtime(true).block_on(async {
            let fd_limit = sys::raise_fd_limit();
            let scratch = scratch.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()))
            });
            let mut sizes = mode.sizes();
            if !throughput.is_empty() {
                sizes.throughput = throughput
                    .iter()
                    .map(|level| {
                        let (s, e) = level
                            .split_once('x')
                            .ok_or(format!("{level}: not SESSIONSxEVENTS"))?;
                        Ok((
                            s.parse().map_err(|_| format!("{level}: sessions"))?,
                            e.parse().map_err(|_| format!("{level}: events"))?,
                        ))
                    })
                    .collect::<Result<_, String>>()?;
            }
            let ctx = Ctx {
                exe: std::env::current_exe().map_err(|e| e.to_string())?,
                mode,
                sizes,
                scratch: scratch.clone(),
                fd_limit,
                only,
            };
            let command = command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
            let report = measure::run_all(&ctx, command).await;
            if std::env::var_os("BENCH_DEBUG").is_none() {
                let _ = std::fs::remove_dir_all(&scratch);
            }
            let report = report?;
            println!("{}", report.table());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if let Some(path) = markdown {
                std::fs::write(&path, report.markdown())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!("[bench] wrote {}", path.display());
            }
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

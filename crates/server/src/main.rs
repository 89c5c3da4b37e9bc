//! The `switchboard` binary: `demo` runs the whole session lifecycle in-process and prints it;
//! `ports` prints the registry of ports; `migrate` applies the schema. (`serve`, `admin` and
//! `doctor` arrive with the server issue.)

use clap::{Parser, Subcommand};
use std::sync::Arc;
use switchboard_core::protocol::ServerFrame;
use switchboard_core::run::Price;
use switchboard_core::session::SessionConfig;
use switchboard_core::ModelRef;
use switchboard_fakes::price_book::InMemoryPriceBook;
use switchboard_ports::PortId;
use switchboard_server::journey::{journey, MODEL};
use switchboard_server::stack::InMemoryStack;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A control plane for hosted coding agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one session end to end in this process (in-memory ports, the tokio session host, a
    /// scripted sandbox) and print every event as the client receives it, then the ledger's runs.
    Demo,
    /// List the fifteen ports by plane.
    Ports,
    /// Apply the database schema migrations (idempotent). Postgres when `DATABASE_URL` is set,
    /// else the embedded SQLite database under `--data-dir`. A schema newer than this binary is
    /// refused.
    Migrate {
        /// Where the embedded default keeps its data.
        #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./switchboard-data")]
        data_dir: std::path::PathBuf,
    },
}

fn print_frame(frame: &ServerFrame) {
    println!("  <- {}", serde_json::to_string(frame).expect("frames serialize"));
}

async fn demo() -> Result<(), String> {
    let price = Price { input_per_mtok_micros: 400_000, output_per_mtok_micros: 1_600_000 };
    let prices = InMemoryPriceBook::new().with_price(ModelRef::parse(MODEL).expect("the demo model parses"), price);
    let stack = InMemoryStack::new(SessionConfig::default(), Arc::new(prices));
    println!("switchboard demo: one session, two prompts, a reconnect — in-memory ports, tokio host, scripted sandbox");
    println!("client frames:");
    let t = journey(&stack, print_frame).await?;
    println!("\norg {} (user {}), session {} on {}", t.org.org_id, t.org.user_id, t.session.id, t.session.model);
    println!("a second client resumed with after={} and received {} frames", t.resumed_after, t.resumed_client.len());
    println!("\nrun ledger:");
    for run in &t.runs {
        println!("{}", serde_json::to_string_pretty(&run.summary()).expect("runs serialize"));
    }
    Ok(())
}

fn ports() {
    for p in PortId::ALL {
        let info = p.info();
        println!("{:<9} {:<17} {}", info.plane.name(), info.trait_name, info.description);
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            if let Err(e) = rt.block_on(demo()) {
                eprintln!("demo failed: {e}");
                std::process::exit(1);
            }
        }
        Command::Ports => ports(),
        Command::Migrate { data_dir } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            match rt.block_on(switchboard_server::db::migrate(&data_dir, std::env::var("DATABASE_URL").ok().as_deref())) {
                Ok(done) => println!("{done}"),
                Err(e) => {
                    eprintln!("switchboard migrate: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

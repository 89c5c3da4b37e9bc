//! `switchboard-bridge`: the program that runs inside every sandbox. It dials back to its session,
//! drives the coding agent over ACP and streams the agent's work home. Built in the data-plane
//! issue; until then it only says so.

fn main() {
    eprintln!(
        "switchboard-bridge {}: the sandbox bridge is not built yet (data-plane issue)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}

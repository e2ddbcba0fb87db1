//! `cargo xtask <command>`: everything a developer types.
//!
//! Each command lives in its own module so it can grow independently.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod bench;
mod e2e;
mod setup;
mod sim;
mod validate;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  e2e        run scenario files (default: the default suite on the simulator)
  sim        run one topology in the simulator and print a summary with its trace hash
  validate   check scenario, topology and GitOps files without running anything
  bench      run the criterion benches and print one table
  setup      install what a backend needs (ci | local | flower | containers | kvm)
";

/// Errors print as one line with their causes (`error: what: why`), never as a backtrace:
/// anyhow adds one to `main`'s returned error whenever `RUST_BACKTRACE` is set, which reads
/// like a crash.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once: a message that already quotes its source is not repeated.
            let mut line = e.to_string();
            for cause in e.chain().skip(1).map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "e2e" => e2e::run(rest),
        "sim" => sim::run(rest),
        "validate" => validate::run(rest),
        "bench" => bench::run(rest),
        "setup" => setup::run(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown xtask command `{other}`")
        }
    }
}

/// The workspace root (xtask always runs from there via the cargo alias, but be robust).
#[allow(dead_code)]
pub fn workspace_root() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

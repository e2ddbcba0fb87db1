//! The `fl` binary: `coordinator`, `worker`, `aggregate`, `export-round`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod aggregate;
mod api;
mod auth;
mod clock;
mod coordinator;
mod dataset;
mod export;
mod http;
mod metrics;
mod modelio;
mod pg;
mod store;
mod tls;
mod worker;

use anyhow::{Result, bail};

const USAGE: &str = "usage: fl <command> [args]

commands:
  aggregate     recompute a round offline from stored updates (the audit path)
  coordinator   run the FL coordinator (HTTP API)
  worker        run an FL worker against a coordinator
  export-round  write a stored round's updates and state in `fl aggregate`'s input format
  token         mint an HS256 JWT for a worker or an operator
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
        "aggregate" => aggregate::run(rest),
        "coordinator" => coordinator::run(rest),
        "worker" => worker::run(rest),
        "export-round" => export::run(rest),
        "token" => auth::run_token(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// Parses a command's flags; `--help` prints the help and exits 0, a bad flag prints clap's
/// message and exits 2 (clap's own behaviour, instead of an error with a backtrace).
pub(crate) fn parse_args<A: clap::Parser>(command: &str, args: Vec<String>) -> A {
    A::try_parse_from(std::iter::once(command.to_owned()).chain(args)).unwrap_or_else(|e| e.exit())
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub(crate) fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

//! The `fl` binary: `coordinator`, `worker`, `aggregate`, `export-round`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod aggregate;

use anyhow::{Result, bail};

const USAGE: &str = "usage: fl <command> [args]

commands:
  aggregate     recompute a round offline from stored updates (the audit path)
  coordinator   run the FL coordinator (HTTP API)
  worker        run an FL worker against a coordinator
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "aggregate" => aggregate::run(rest),
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

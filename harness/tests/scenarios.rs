//! Every case of the default suite (`scenarios/*.yaml` x matrix) is a test, listed and filtered
//! by name by `cargo test` and `cargo nextest`. A case the backend cannot run at all is listed as
//! ignored, with the reason in its name, so skipped never reads as passed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use harness::backend::Backend;
use harness::outcome::Status;
use harness::report::junit::step_log;
use harness::runner::{RunOptions, Silent, run_case};
use harness::sim::SimBackend;
use harness::suite::{self, Selection};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let cases = match suite::select(&root, &Selection::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("failed to load the default suite:\n{e}");
            std::process::exit(2);
        }
    };
    let caps = SimBackend::caps();
    let trials: Vec<Trial> = cases
        .into_iter()
        .map(|case| {
            let skip = caps.skips_whole_case("sim", &case);
            let name = case.name.clone();
            let root = root.clone();
            let trial = Trial::test(name, move || {
                let be = SimBackend::new(&root);
                let opts = RunOptions {
                    jobs: 1,
                    timeout_ms: None,
                    artifacts_dir: None,
                    root: root.clone(),
                };
                let r = run_case(&be, &case, &opts, &Silent, &AtomicBool::new(false));
                match r.status {
                    Status::Passed => Ok(()),
                    Status::Skipped => Err(Failed::from(format!(
                        "skipped at run time (not passed): {}",
                        r.reason.unwrap_or_default()
                    ))),
                    Status::Failed => Err(Failed::from(format!(
                        "{}\n{}\nrepro: {}",
                        r.reason.clone().unwrap_or_default(),
                        step_log(&r),
                        r.repro
                    ))),
                }
            })
            .with_kind("sim");
            match skip {
                Some(reason) => trial
                    .with_ignored_flag(true)
                    .with_kind(format!("skip: {reason}")),
                None => trial,
            }
        })
        .collect();
    let _ = SimBackend::new(&root).name();
    libtest_mimic::run(&args, trials).exit();
}

//! `cargo xtask e2e`: run scenario files on a backend and write reports under
//! `target/e2e/<run-id>/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use harness::backend;
use harness::e2e::E2eOptions;
use harness::outcome::Status;
use harness::report::human_ms;

const USAGE: &str = "usage: cargo xtask e2e [options] [FILTER]...

Runs the default suite (every file under scenarios/) on the simulated stack, or the selected
scenarios, and writes target/e2e/<run-id>/{report.json,junit.xml,report.md,report.html,repro.txt}.

  FILTER                   run cases whose name contains FILTER (nextest style)
  --exact                  FILTERs must equal the case name
  --skip FILTER            leave out cases whose name contains FILTER (repeatable)
  --scenario PATH_OR_NAME  a scenario file, a folder, or a scenario name (repeatable)
  --backend NAME           sim (default) | local | containers | kvm | cluster
  --seed N                 run every scenario with this seed instead of its own (repeatable)
  --jobs N                 cases run in parallel (default: number of CPUs)
  --timeout DURATION       wall-clock limit per case (default: the scenario's `timeout`, else 60s)
  --baseline NAME|FILE     compare metrics with baselines/NAME.json (or FILE); regressions fail
  --save-baseline NAME     save this run's metrics as baselines/NAME.json
  --baseline-dir DIR       where baselines live (default: baselines/)
  --threshold PCT          regression threshold in percent (default 10)
  --out DIR                report folder (default: target/e2e)
  --no-compare             on a real backend, do not also run the cases on sim (no sim-vs-real table)
  --list                   list the cases (and what the backend would skip), run nothing
  -h, --help               this text
";

pub fn run(args: Vec<String>) -> Result<()> {
    let root = crate::workspace_root();
    let mut opts = E2eOptions::defaults(&root);
    let mut list = false;
    let mut it = args.into_iter();
    let value = |it: &mut std::vec::IntoIter<String>, flag: &str| -> Result<String> {
        it.next()
            .with_context(|| format!("`{flag}` needs a value\n\n{USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--list" => list = true,
            "--no-compare" => opts.compare_with_sim = false,
            "--exact" => opts.selection.exact = true,
            "--skip" => opts.selection.skip.push(value(&mut it, "--skip")?),
            "--scenario" => opts.selection.scenarios.push(value(&mut it, "--scenario")?),
            "--backend" => opts.backend = value(&mut it, "--backend")?,
            "--seed" => {
                let v = value(&mut it, "--seed")?;
                opts.selection.seeds.push(
                    v.parse()
                        .with_context(|| format!("`--seed {v}`: not a non-negative integer"))?,
                );
            }
            "--jobs" | "-j" => {
                let v = value(&mut it, "--jobs")?;
                opts.jobs = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("`--jobs {v}`: expected a positive integer"))?;
            }
            "--timeout" => {
                let v = value(&mut it, "--timeout")?;
                let d = harness::duration::Duration::parse(&v)
                    .map_err(|e| anyhow::anyhow!("`--timeout {v}`: {e}"))?;
                opts.timeout_ms = Some(d.as_ms());
            }
            "--baseline" => opts.baseline = Some(value(&mut it, "--baseline")?),
            "--save-baseline" => opts.save_baseline = Some(value(&mut it, "--save-baseline")?),
            "--baseline-dir" => opts.baseline_dir = root.join(value(&mut it, "--baseline-dir")?),
            "--threshold" => {
                let v = value(&mut it, "--threshold")?;
                opts.threshold_pct = v
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .with_context(|| format!("`--threshold {v}`: expected a percentage >= 0"))?;
            }
            "--out" => opts.out_dir = root.join(value(&mut it, "--out")?),
            s if s.starts_with('-') => bail!("unknown option `{s}`\n\n{USAGE}"),
            _ => opts.selection.filters.push(a),
        }
    }
    init_tracing();
    if list {
        return list_cases(&opts);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // Ctrl-C: stop running cases at their next slice, start no more, still write reports.
        ctrlc::set_handler(move || {
            if c.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping the running cases and writing the reports (Ctrl-C again to quit now)");
        })
        .context("failed to install the Ctrl-C handler")?;
    }
    eprintln!(
        "e2e: backend {}, {} job(s); reports under {}",
        opts.backend,
        opts.jobs,
        opts.out_dir
            .strip_prefix(&root)
            .unwrap_or(&opts.out_dir)
            .display()
    );
    let res = harness::e2e::run(&opts, &cancel).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s = res.run.summary;
    let rel = |p: &std::path::Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    println!();
    for c in res.run.cases.iter().filter(|c| c.status == Status::Failed) {
        println!("FAILED {}: {}", c.name, c.reason.as_deref().unwrap_or(""));
        println!("  repro: {}", c.repro);
    }
    if let Some(b) = &res.run.baseline {
        println!(
            "baseline {}: {} regression(s) beyond the {}% threshold ({} metrics compared)",
            b.source,
            b.regressions,
            b.threshold_pct,
            b.rows.len()
        );
        for r in b.rows.iter().filter(|r| r.regression) {
            println!(
                "  REGRESSION {} {}: {:.3} -> {:.3} ({:+.1}%)",
                r.case, r.metric, r.baseline, r.current, r.worse_by_pct
            );
        }
    }
    if let Some(c) = &res.run.comparison {
        println!(
            "sim vs {}: {} case(s) compared, {} difference(s) beyond the {}% tolerance or unequal, {} mismatch(es)",
            c.real_backend,
            c.cases.len(),
            c.differences,
            c.tolerance_pct,
            c.mismatches
        );
        for case in &c.cases {
            for r in case
                .rows
                .iter()
                .filter(|r| r.agreement == harness::compare::Agreement::Mismatch)
            {
                println!(
                    "  MISMATCH {} {}: sim {} vs real {} ({})",
                    case.case, r.quantity, r.sim, r.real, r.note
                );
            }
        }
    }
    if let Some(p) = &res.saved_baseline {
        println!("baseline saved: {}", rel(p));
    }
    println!("reports: {}/", rel(&res.dir));
    for f in &res.files {
        println!("  {}", rel(f));
    }
    println!("wall time {}", human_ms(res.run.wall_ms));
    println!(
        "e2e: {} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    if s.interrupted > 0 {
        eprintln!("interrupted: {} case(s) did not finish", s.interrupted);
        std::process::exit(130);
    }
    if res.failed() {
        bail!(
            "e2e run failed: {} failed case(s){}; see {}",
            s.failed,
            res.run
                .baseline
                .as_ref()
                .filter(|b| b.regressions > 0)
                .map(|b| format!(", {} metric regression(s)", b.regressions))
                .unwrap_or_default()
                + &res
                    .run
                    .comparison
                    .as_ref()
                    .filter(|c| c.mismatches > 0)
                    .map(|c| format!(", {} sim-vs-real mismatch(es)", c.mismatches))
                    .unwrap_or_default(),
            rel(&res.dir.join("repro.txt"))
        );
    }
    Ok(())
}

fn list_cases(opts: &E2eOptions) -> Result<()> {
    let cases =
        harness::suite::select(&opts.root, &opts.selection).map_err(|e| anyhow::anyhow!("{e}"))?;
    let be = backend::by_name(&opts.backend, &opts.root).map_err(|e| anyhow::anyhow!(e))?;
    let caps = be.capabilities();
    let mut skipped = 0;
    for c in &cases {
        match caps.skips_whole_case(be.name(), c) {
            Some(r) => {
                skipped += 1;
                println!("{}  [skip: {r}]", c.name);
            }
            None => println!("{}", c.name),
        }
    }
    println!(
        "\n{} case(s) on backend {}; {} would be skipped",
        cases.len(),
        be.name(),
        skipped
    );
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

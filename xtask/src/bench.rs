//! `cargo xtask bench [NAME...]`: runs the criterion benches of the `benches` package (all
//! `[[bench]]` targets of `benches/Cargo.toml`, or the named ones), then prints one table.
//!
//! Rows come from two places, only those written by this run:
//! - `<target>/bench-results/<bench>.json` (see the `benches` crate docs): a case with its
//!   criterion id or measured value, bytes read, reference id, peak extra memory, Flower's
//!   figure and targets, checked here (ok / MISS);
//! - any other criterion benchmark (`<target>/criterion/<group>/<id>/new/`): its median time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const USAGE: &str = "usage: cargo xtask bench [NAME...]   (NAME: a [[bench]] of benches/Cargo.toml, `e2e`: the default suite's wall time, or `local`: the local stack's stand-up, the local suite and sim-vs-real medians)";

/// The pseudo-bench timing `cargo xtask e2e` (the default suite on the sim backend).
const E2E: &str = "e2e";
/// Issue target: the default suite in <= 60 s wall on 2 cores after the build.
const E2E_TARGET_MS: f64 = 60_000.0;

/// Runs the default suite as a user does (this same xtask build, `e2e` with no arguments) and
/// writes its wall time as a row of `<target>/bench-results/e2e.json`.
fn bench_e2e(target: &Path) -> Result<()> {
    eprintln!("== cargo xtask e2e (timed)");
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    #[allow(clippy::disallowed_methods)] // a bench measures wall time
    let t0 = std::time::Instant::now();
    let status = Command::new(exe)
        .arg("e2e")
        .status()
        .context("running the e2e suite")?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("the default suite failed ({status}); its time is not a result");
    }
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let doc = serde_json::json!({
        "bench": E2E,
        "rows": [{
            "case": "default e2e suite on the sim backend (wall, after the build)",
            "value": wall_ms,
            "unit": "ms",
            "targets": [{"metric": "value", "op": "<=", "value": E2E_TARGET_MS}],
        }],
    });
    let path = dir.join("e2e.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The pseudo-bench of the local backend (issue 8 targets).
const LOCAL: &str = "local";
/// Issue 8: standing up the local stack (etcd x3, PostgreSQL, S3, coordinator, 10 workers).
const LOCAL_STACK_TARGET_MS: f64 = 10_000.0;
/// Issue 8: the local suite on 2 cores.
const LOCAL_SUITE_TARGET_MS: f64 = 300_000.0;
/// Issue 8: medians over at least this many runs.
const LOCAL_RUNS: u64 = 5;
/// The FL case whose stand-up and round time are measured (10 clients).
const LOCAL_FL_SCENARIO: &str = "scenarios/fl-fedavg-matches-offline-recompute.yaml";
const LOCAL_FL_FILTER: &str = "clients=10";
/// The etcd case whose stand-up and leader election are measured (3 members).
const LOCAL_ETCD_SCENARIO: &str = "scenarios/mlworkbench-cp-loss-keeps-quorum.yaml";

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Runs cases on the local backend (and on sim for the comparison) in-process.
fn e2e_local(
    root: &Path,
    scenarios: &[&str],
    filters: &[&str],
    seeds: &[u64],
) -> Result<harness::e2e::E2eResult> {
    let mut o = harness::e2e::E2eOptions::defaults(root);
    o.backend = "local".into();
    o.selection.scenarios = scenarios.iter().map(|s| s.to_string()).collect();
    o.selection.filters = filters.iter().map(|s| s.to_string()).collect();
    o.selection.seeds = seeds.to_vec();
    // One case at a time: a timing is not shared with a second case's processes.
    o.jobs = 1;
    o.progress = harness::e2e::ProgressMode::Lines;
    o.out_dir = root.join("target/e2e-bench");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    harness::e2e::run(&o, &cancel).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Issue 8's targets: the local stack's stand-up time (median of [`LOCAL_RUNS`]), the local
/// suite's wall time, and sim-vs-real medians of FL round time and etcd election time (a
/// measurement: every difference beyond 20% is listed in the row's case text).
fn bench_local(root: &Path, target: &Path) -> Result<()> {
    eprintln!("== local backend: {LOCAL_RUNS} runs of {LOCAL_FL_SCENARIO} [{LOCAL_FL_FILTER}]");
    let seeds: Vec<u64> = (1..=LOCAL_RUNS).collect();
    let fl = e2e_local(root, &[LOCAL_FL_SCENARIO], &[LOCAL_FL_FILTER], &seeds)?;
    // A metric of every case, on the real side or on its sim twin.
    let metric = |cases: &[harness::outcome::CaseReport], m: &str| -> Vec<f64> {
        cases
            .iter()
            .filter_map(|c| c.metrics.get(m).copied())
            .collect()
    };
    eprintln!("== local backend: {LOCAL_RUNS} runs of {LOCAL_ETCD_SCENARIO}");
    let etcd = e2e_local(root, &[LOCAL_ETCD_SCENARIO], &[], &seeds)?;
    let mut rows = Vec::new();
    let stack = median(metric(&fl.run.cases, "local_stack_up_ms"));
    let etcd_up = median(metric(&etcd.run.cases, "local_etcd_standup_ms"));
    rows.push(serde_json::json!({
        "case": format!(
            "local stack stand-up: etcd x3 ({} ms) + PostgreSQL, S3, coordinator, 10 workers ({} ms), medians of {LOCAL_RUNS}",
            etcd_up.map_or("-".into(), |v| format!("{v:.0}")),
            stack.map_or("-".into(), |v| format!("{v:.0}"))
        ),
        "value": match (etcd_up, stack) { (Some(a), Some(b)) => Some(a + b), _ => None },
        "unit": "ms",
        "targets": [{"metric": "value", "op": "<=", "value": LOCAL_STACK_TARGET_MS}],
    }));
    // Election after a leader kill: only the seeds whose kill hit the leader measure one.
    let (real_el, sim_el) = (
        metric(&etcd.run.cases, "etcd_leader_election_ms"),
        metric(&etcd.sim_cases, "etcd_leader_election_ms"),
    );
    if let (Some(r), Some(s)) = (median(real_el.clone()), median(sim_el.clone())) {
        let pct = (r - s).abs() / r.max(s).max(1.0) * 100.0;
        rows.push(serde_json::json!({
            "case": format!(
                "etcd election after a leader kill, real (median of {} of {LOCAL_RUNS} runs that killed the leader); sim {s:.0} ms (median of {}): {pct:.0}% apart{}",
                real_el.len(), sim_el.len(),
                if pct > 20.0 { " (DIFFERENCE beyond 20%)" } else { "" }
            ),
            "value": r,
            "unit": "ms",
            "targets": [],
        }));
    }
    let (real_round, sim_round) = (
        median(metric(&fl.run.cases, "fl_round_p50_ms")),
        median(metric(&fl.sim_cases, "fl_round_p50_ms")),
    );
    if let (Some(r), Some(s)) = (real_round, sim_round) {
        let pct = (r - s).abs() / r.max(s).max(1.0) * 100.0;
        rows.push(serde_json::json!({
            "case": format!(
                "FL round p50, 10 clients, real (median of {LOCAL_RUNS}); sim {s:.0} ms: {pct:.0}% apart{}",
                if pct > 20.0 { " (DIFFERENCE beyond 20%)" } else { "" }
            ),
            "value": r,
            "unit": "ms",
            "targets": [],
        }));
    }
    eprintln!("== local backend: the default suite");
    let suite = e2e_local(root, &[], &[], &[])?;
    rows.push(serde_json::json!({
        "case": format!(
            "local suite ({} passed, {} failed, {} skipped), wall",
            suite.run.summary.passed, suite.run.summary.failed, suite.run.summary.skipped
        ),
        "value": suite.run.wall_ms as f64,
        "unit": "ms",
        "targets": [{"metric": "value", "op": "<=", "value": LOCAL_SUITE_TARGET_MS}],
    }));
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("local.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({"bench": LOCAL, "rows": rows}))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn run(args: Vec<String>) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let root = crate::workspace_root();
    let manifest = root.join("benches/Cargo.toml");
    let mut known = bench_names(&manifest)?;
    // Not a criterion bench: the default e2e suite's wall time on the sim backend.
    known.push(E2E.to_owned());
    known.push(LOCAL.to_owned());
    let selected = if args.is_empty() {
        known.clone()
    } else {
        for a in &args {
            if !known.contains(a) {
                bail!(
                    "no bench named `{a}` in {} (known: {})",
                    manifest.display(),
                    known.join(", ")
                );
            }
        }
        args
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let started = SystemTime::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut failed = Vec::new();
    for name in &selected {
        if name == LOCAL {
            if let Err(e) = bench_local(&root, &target) {
                eprintln!("bench `{LOCAL}` failed: {e:#}");
                failed.push(name.clone());
            }
            continue;
        }
        if name == E2E {
            if let Err(e) = bench_e2e(&target) {
                eprintln!("bench `{E2E}` failed: {e:#}");
                failed.push(name.clone());
            }
            continue;
        }
        eprintln!("== cargo bench -p benches --bench {name}");
        let status = Command::new(&cargo)
            .args(["bench", "-p", "benches", "--bench", name])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&root)
            .status()
            .with_context(|| format!("running `{cargo} bench -p benches --bench {name}`"))?;
        if !status.success() {
            eprintln!("bench `{name}` failed: {status}");
            failed.push(name.clone());
        }
    }
    let rows = collect(&target, started)?;
    print!("{}", render(&rows));
    if !failed.is_empty() {
        bail!("benches failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `name = "..."` of every `[[bench]]` section, in file order.
fn bench_names(manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bench = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
        } else if in_bench && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_owned());
        }
    }
    Ok(names)
}

/// One printed row.
#[derive(Debug, Default)]
struct Out {
    case: String,
    time_ns: Option<f64>,
    value: Option<(f64, String)>,
    bytes: Option<f64>,
    ratio: Option<f64>,
    memory_models: Option<f64>,
    flower: String,
    targets: Vec<(String, bool)>,
}

fn modified_since(path: &Path, since: SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t >= since)
        .unwrap_or(false)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Median time in ns of criterion benchmark `id` (`group/function`), if this run wrote it.
fn criterion_median_ns(target: &Path, id: &str, since: SystemTime) -> Result<Option<f64>> {
    let path = target.join("criterion").join(id).join("new/estimates.json");
    if !modified_since(&path, since) {
        return Ok(None);
    }
    let v = read_json(&path)?;
    Ok(v.pointer("/median/point_estimate").and_then(Value::as_f64))
}

fn collect(target: &Path, since: SystemTime) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let mut claimed = std::collections::BTreeSet::new();
    let results = target.join("bench-results");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&results) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| modified_since(p, since))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for file in files {
        let doc = read_json(&file)?;
        let rows = doc
            .get("rows")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: no `rows` array", file.display()))?;
        for (i, r) in rows.iter().enumerate() {
            let case = r
                .get("case")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: row {i} has no `case`", file.display()))?;
            let id = r.get("criterion").and_then(Value::as_str);
            let reference = r.get("reference").and_then(Value::as_str);
            for claimed_id in [id, reference].into_iter().flatten() {
                claimed.insert(claimed_id.to_owned());
            }
            let time_ns = match id {
                Some(id) => criterion_median_ns(target, id, since)?,
                None => None,
            };
            let ref_ns = match reference {
                Some(id) => criterion_median_ns(target, id, since)?,
                None => None,
            };
            if id.is_some() && time_ns.is_none() {
                // the case was filtered out of this run
                continue;
            }
            let mut row = Out {
                case: case.to_owned(),
                time_ns,
                value: r.get("value").and_then(Value::as_f64).map(|v| {
                    let unit = r.get("unit").and_then(Value::as_str).unwrap_or("");
                    (v, unit.to_owned())
                }),
                bytes: r.get("bytes").and_then(Value::as_f64),
                ratio: match (time_ns, ref_ns) {
                    (Some(t), Some(rf)) if t > 0.0 => Some(rf / t),
                    _ => None,
                },
                memory_models: r.get("memory_models").and_then(Value::as_f64),
                flower: r
                    .get("flower")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                targets: Vec::new(),
            };
            for t in r
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                row.targets.push(check(&row, t));
            }
            out.push(row);
        }
    }
    // every other criterion benchmark this run measured: its median time only
    let crit = target.join("criterion");
    let mut others = Vec::new();
    for group in read_dirs(&crit) {
        for bench in read_dirs(&group) {
            let est = bench.join("new/estimates.json");
            if !modified_since(&est, since) {
                continue;
            }
            let id = format!(
                "{}/{}",
                group.file_name().unwrap_or_default().to_string_lossy(),
                bench.file_name().unwrap_or_default().to_string_lossy()
            );
            if claimed.contains(&id) {
                continue;
            }
            let full_id = read_json(&bench.join("new/benchmark.json"))
                .ok()
                .and_then(|v| v.get("full_id").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| id.clone());
            let v = read_json(&est)?;
            others.push(Out {
                case: full_id,
                time_ns: v.pointer("/median/point_estimate").and_then(Value::as_f64),
                ..Out::default()
            });
        }
    }
    others.sort_by(|a, b| a.case.cmp(&b.case));
    out.extend(others);
    Ok(out)
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Checks one target `{metric, op, value}` against a row: (label, met).
fn check(row: &Out, t: &Value) -> (String, bool) {
    let metric = t.get("metric").and_then(Value::as_str).unwrap_or("?");
    let op = t.get("op").and_then(Value::as_str).unwrap_or("?");
    let bound = t.get("value").and_then(Value::as_f64).unwrap_or(f64::NAN);
    let (actual, label) = match metric {
        "ratio" => (row.ratio, format!("{op} {bound}x sum")),
        "time_ms" => (row.time_ns.map(|ns| ns / 1e6), format!("{op} {bound} ms")),
        "memory_models" => (row.memory_models, format!("mem {op} {bound}x")),
        "value" => (
            row.value.as_ref().map(|v| v.0),
            format!(
                "{op} {bound} {}",
                row.value.as_ref().map(|v| v.1.as_str()).unwrap_or("")
            ),
        ),
        other => (None, format!("unknown metric {other}")),
    };
    let met = match (actual, op) {
        (Some(a), ">=") => a >= bound,
        (Some(a), "<=") => a <= bound,
        _ => false,
    };
    (label, met)
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn render(rows: &[Out]) -> String {
    let header = [
        "case",
        "time (measured value)",
        "GB/s",
        "vs ref",
        "extra mem",
        "Flower",
        "target",
        "",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let time = match (&r.time_ns, &r.value) {
                (Some(ns), Some((v, unit))) => format!("{} ({v:.3} {unit})", fmt_time(*ns)),
                (Some(ns), None) => fmt_time(*ns),
                (None, Some((v, unit))) => format!("{v:.3} {unit}"),
                _ => "-".into(),
            };
            let gbs = match (r.bytes, r.time_ns) {
                (Some(b), Some(ns)) if ns > 0.0 => format!("{:.1}", b / ns),
                _ => "-".into(),
            };
            let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}x"));
            let mem = r.memory_models.map_or("-".into(), |m| format!("{m:.2}x"));
            let target = r
                .targets
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let verdict = if r.targets.is_empty() {
                String::new()
            } else {
                r.targets
                    .iter()
                    .map(|(_, ok)| if *ok { "ok" } else { "MISS" })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                r.case.clone(),
                time,
                gbs,
                ratio,
                mem,
                if r.flower.is_empty() {
                    "-".into()
                } else {
                    r.flower.clone()
                },
                if target.is_empty() {
                    "-".into()
                } else {
                    target
                },
                verdict,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::from("|");
        for (i, (cell, w)) in c.iter().zip(widths).enumerate() {
            // text columns left-aligned, numbers right-aligned
            if matches!(i, 0 | 5 | 6 | 7) {
                s.push_str(&format!(" {cell:<w$} |"));
            } else {
                s.push_str(&format!(" {cell:>w$} |"));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('|');
    for w in widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c));
    }
    if rows.is_empty() {
        out.push_str("(no results written by this run)\n");
    } else {
        out.push_str(
            "time: criterion median; vs ref: the reference's time / this time, both measured in \
             this run (aggregation: a single-threaded plain f32 sum of the same bytes); extra mem: \
             peak heap growth during one call, in f32 models\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_names_reads_every_bench_section() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("Cargo.toml");
        std::fs::write(
            &path,
            "[package]\nname = \"benches\"\n\n[[bench]]\nname = \"a\"\nharness = false\n\n\
             [dependencies]\nname = \"x\"\n\n[[bench]]\nharness = false\nname = \"b\"\n",
        )
        .unwrap();
        let names = bench_names(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn targets_are_checked_against_the_row() {
        let row = Out {
            time_ns: Some(50e6),
            ratio: Some(0.65),
            memory_models: Some(1.5),
            ..Out::default()
        };
        let t = |m: &str, op: &str, v: f64| serde_json::json!({"metric": m, "op": op, "value": v});
        assert!(check(&row, &t("time_ms", "<=", 100.0)).1);
        assert!(!check(&row, &t("time_ms", "<=", 40.0)).1);
        assert!(!check(&row, &t("ratio", ">=", 0.7)).1);
        assert!(check(&row, &t("memory_models", "<=", 2.5)).1);
        assert!(!check(&row, &t("value", ">=", 1.0)).1);
    }
}

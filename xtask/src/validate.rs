//! `cargo xtask validate [PATH]...`: check scenario, topology and GitOps files without running
//! anything. With no PATH: every scenario under `scenarios/`, every topology under
//! `fixtures/topologies/` and every GitOps tree under `fixtures/gitops/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask validate [--gitops DIR]... [--write-schema] [PATH]...

  PATH            a scenario file or folder, a topology file (fixtures/topologies/*.yaml),
                  or a GitOps folder (one with bootstrap/, or fixtures/gitops)
  --gitops DIR    validate the GitOps manifests under DIR
  --write-schema  regenerate scenarios/scenario.schema.json and harness/report.schema.json
";

#[derive(Default)]
struct Targets {
    scenarios: Vec<PathBuf>,
    topologies: Vec<PathBuf>,
    gitops: Vec<PathBuf>,
}

pub fn run(args: Vec<String>) -> Result<()> {
    let root = crate::workspace_root();
    let mut t = Targets::default();
    let mut given = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--write-schema" => return write_schemas(&root),
            "--gitops" => {
                let d = it
                    .next()
                    .with_context(|| format!("`--gitops` needs a folder\n\n{USAGE}"))?;
                t.gitops.push(abs(&root, &d));
                given = true;
            }
            s if s.starts_with('-') => bail!("unknown option `{s}`\n\n{USAGE}"),
            p => {
                classify(&root, &abs(&root, p), &mut t)?;
                given = true;
            }
        }
    }
    if !given {
        classify(&root, &root.join("scenarios"), &mut t)?;
        let topo_dir = root.join("fixtures/topologies");
        if topo_dir.is_dir() {
            for p in
                harness::suite::scenario_files(&topo_dir).map_err(|e| anyhow::anyhow!("{e}"))?
            {
                t.topologies.push(p);
            }
        }
        let g = root.join("fixtures/gitops");
        if g.is_dir() {
            t.gitops.push(g);
        }
    }
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    let mut problems = 0usize;
    let mut checked = 0usize;
    for p in &t.topologies {
        checked += 1;
        match simulator::Topology::load(p) {
            Ok(topo) => println!("ok  topology {} ({} nodes)", rel(p), topo.nodes.len()),
            Err(e) => {
                problems += 1;
                println!("ERR topology {}: {e}", rel(p));
            }
        }
    }
    for p in &t.scenarios {
        checked += 1;
        match harness::validate::scenario_file(p, &root) {
            Ok(n) => println!("ok  scenario {} ({n} case(s))", rel(p)),
            Err(e) => {
                problems += e.diagnostics().len().max(1);
                println!("ERR scenario {}:\n{e}", rel(p));
            }
        }
    }
    for d in &t.gitops {
        checked += 1;
        match simulator::gitops::validate(d, None) {
            Ok(report) => {
                for n in &report.notes {
                    println!("    note: {n}");
                }
                if report.findings.is_empty() {
                    println!(
                        "ok  gitops {} ({} repo(s), {} object(s))",
                        rel(d),
                        report.repos.len(),
                        report.objects_checked
                    );
                } else {
                    problems += report.findings.len();
                    println!(
                        "ERR gitops {}: {} finding(s)",
                        rel(d),
                        report.findings.len()
                    );
                    for f in &report.findings {
                        println!("    {f}");
                    }
                }
            }
            Err(e) => {
                problems += 1;
                println!("ERR gitops {}: {e}", rel(d));
            }
        }
    }
    println!("validate: {checked} checked, {problems} problem(s)");
    if problems > 0 {
        bail!("validation found {problems} problem(s)");
    }
    Ok(())
}

fn abs(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

fn classify(root: &Path, p: &Path, t: &mut Targets) -> Result<()> {
    let topo_dir = root.join("fixtures/topologies");
    let gitops_dir = root.join("fixtures/gitops");
    if !p.exists() {
        bail!("no such file or folder: {}", p.display());
    }
    if p.starts_with(&gitops_dir) || p.join("bootstrap").is_dir() {
        t.gitops.push(p.to_path_buf());
    } else if p.is_dir() {
        let files = harness::suite::scenario_files(p).map_err(|e| anyhow::anyhow!("{e}"))?;
        for f in files {
            if f.starts_with(&topo_dir) {
                t.topologies.push(f);
            } else {
                t.scenarios.push(f);
            }
        }
    } else if p.starts_with(&topo_dir) {
        t.topologies.push(p.to_path_buf());
    } else {
        t.scenarios.push(p.to_path_buf());
    }
    Ok(())
}

fn write_schemas(root: &Path) -> Result<()> {
    let s = root.join("scenarios/scenario.schema.json");
    std::fs::write(&s, harness::scenario_schema_json())
        .with_context(|| format!("failed to write {}", s.display()))?;
    let r = root.join("harness/report.schema.json");
    std::fs::write(&r, harness::report::report_schema_json())
        .with_context(|| format!("failed to write {}", r.display()))?;
    println!("wrote {} and {}", s.display(), r.display());
    Ok(())
}

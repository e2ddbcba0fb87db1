//! A Git repository snapshot held in memory (sans-IO) and the rendering of a path in it:
//! a plain directory of manifests, or a kustomization (`resources`, `namespace`, JSON 6902
//! `patches`), the subset of kustomize the platforms use. Anything else in a
//! `kustomization.yaml` is reported, never silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::object::Object;

/// Bound on nested kustomization references (kustomize itself refuses cycles).
const MAX_KUSTOMIZE_DEPTH: usize = 16;

/// One revision of a repository: relative path -> file text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repo {
    pub revision: u64,
    pub files: BTreeMap<String, String>,
}

/// Why a path could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RenderError {
    /// The file (or directory) at fault, relative to the repository root.
    pub file: String,
    pub message: String,
}

fn err(file: &str, message: impl Into<String>) -> RenderError {
    RenderError {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Normalizes `./a/b/`, `a//b`, `a/../c` to `a/b` / `c`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn is_manifest(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json")
}

fn is_kustomization_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(
        name,
        "kustomization.yaml" | "kustomization.yml" | "Kustomization"
    )
}

/// Parses every YAML document of a file into objects (empty documents skipped).
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Object>, RenderError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| err(file, format!("invalid YAML: {e}")))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        match doc {
            Value::Null => {}
            Value::Object(_) => out.push(Object::new(file, doc)),
            other => {
                return Err(err(
                    file,
                    format!("document {} is not a mapping but {other}", i + 1),
                ));
            }
        }
    }
    Ok(out)
}

impl Repo {
    pub fn new(revision: u64, files: BTreeMap<String, String>) -> Self {
        Self { revision, files }
    }

    /// Does a file or a directory exist at `path`?
    pub fn exists(&self, path: &str) -> bool {
        let path = normalize(path);
        if path.is_empty() {
            return !self.files.is_empty();
        }
        self.files.contains_key(&path)
            || self
                .files
                .keys()
                .any(|f| f.starts_with(&format!("{path}/")))
    }

    /// The kustomization file of a directory, if any.
    pub fn kustomization_in(&self, dir: &str) -> Option<String> {
        let dir = normalize(dir);
        ["kustomization.yaml", "kustomization.yml", "Kustomization"]
            .iter()
            .map(|n| {
                if dir.is_empty() {
                    n.to_string()
                } else {
                    format!("{dir}/{n}")
                }
            })
            .find(|p| self.files.contains_key(p))
    }

    /// Immediate subdirectories of `dir` (for ApplicationSet git directory generators).
    pub fn subdirs(&self, dir: &str) -> Vec<String> {
        let dir = normalize(dir);
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<String> = self
            .files
            .keys()
            .filter_map(|f| f.strip_prefix(&prefix))
            .filter_map(|rest| rest.split_once('/').map(|(d, _)| format!("{prefix}{d}")))
            .collect();
        out.dedup();
        out
    }

    /// Renders a path: a kustomization if the directory has one, else its manifests
    /// (`recurse`: subdirectories too, as Flux does; ArgoCD's directory default is not to).
    pub fn render(&self, path: &str, recurse: bool) -> Result<Vec<Object>, RenderError> {
        let path = normalize(path);
        if !self.exists(&path) {
            return Err(err(&path, "path does not exist in the repository"));
        }
        if self.files.contains_key(&path) {
            return parse_documents(&path, &self.files[&path]);
        }
        if let Some(k) = self.kustomization_in(&path) {
            return self.kustomize(&k, 0);
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut out = Vec::new();
        for (file, text) in self.files.range(prefix.clone()..) {
            let Some(rest) = file.strip_prefix(&prefix) else {
                break;
            };
            if !is_manifest(file) || (!recurse && rest.contains('/')) {
                continue;
            }
            if recurse && rest.contains('/') {
                // A nested kustomization is rendered as a unit by Flux's generator.
                let dir = &file[..file.rfind('/').unwrap_or(0)];
                if self.kustomization_in(dir).is_some() {
                    continue;
                }
            }
            out.extend(parse_documents(file, text)?);
        }
        if recurse {
            let mut nested: Vec<String> = self
                .files
                .keys()
                .filter(|f| f.starts_with(&prefix) && is_kustomization_file(f))
                .cloned()
                .collect();
            nested.sort();
            for k in nested {
                out.extend(self.kustomize(&k, 0)?);
            }
        }
        Ok(out)
    }

    /// Every kustomization file under `dir` (for the `kubectl kustomize` cross-check).
    pub fn kustomizations_under(&self, dir: &str) -> Vec<String> {
        let dir = normalize(dir);
        self.files
            .keys()
            .filter(|f| {
                is_kustomization_file(f) && (dir.is_empty() || f.starts_with(&format!("{dir}/")))
            })
            .cloned()
            .collect()
    }

    /// The files a render of kustomization directory `dir` can read: every file under `dir` and
    /// under each directory its `resources` name (recursively), and each file they name. A
    /// superset of what `kubectl kustomize` reads for the subset the built-in renderer accepts:
    /// the key of cached `kubectl kustomize` renders.
    pub fn kustomize_inputs(&self, dir: &str) -> BTreeSet<String> {
        let mut files = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        let mut stack = vec![normalize(dir)];
        while let Some(d) = stack.pop() {
            if dirs.len() > MAX_KUSTOMIZE_DEPTH * 64 || !dirs.insert(d.clone()) {
                continue;
            }
            let prefix = if d.is_empty() {
                String::new()
            } else {
                format!("{d}/")
            };
            files.extend(
                self.files
                    .range(prefix.clone()..)
                    .take_while(|(f, _)| f.starts_with(&prefix))
                    .map(|(f, _)| f.clone()),
            );
            let Some(k) = self.kustomization_in(&d) else {
                continue;
            };
            let Ok(docs) = parse_documents(&k, &self.files[&k]) else {
                continue;
            };
            let resources = docs
                .first()
                .and_then(|k| k.value.get("resources"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for r in resources.iter().filter_map(Value::as_str) {
                let target = normalize(&format!("{prefix}{r}"));
                if self.files.contains_key(&target) {
                    files.insert(target);
                } else {
                    stack.push(target);
                }
            }
        }
        files
    }

    fn kustomize(&self, kfile: &str, depth: usize) -> Result<Vec<Object>, RenderError> {
        if depth > MAX_KUSTOMIZE_DEPTH {
            return Err(err(
                kfile,
                "kustomization resources nest too deep (a cycle?)",
            ));
        }
        let dir = kfile.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let docs = parse_documents(kfile, &self.files[kfile])?;
        let Some(k) = docs.into_iter().next() else {
            return Ok(Vec::new());
        };
        let mut objects = Vec::new();
        let map = k.value.as_object().cloned().unwrap_or_default();
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "resources" | "namespace" | "patches"
            ) {
                return Err(err(
                    kfile,
                    format!("kustomize field {key:?} is not supported by the offline renderer"),
                ));
            }
        }
        for (i, r) in map
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(r) = r.as_str() else {
                return Err(err(kfile, format!("resources[{i}] is not a string")));
            };
            let target = normalize(&if dir.is_empty() {
                r.to_string()
            } else {
                format!("{dir}/{r}")
            });
            if self.files.contains_key(&target) {
                objects.extend(parse_documents(&target, &self.files[&target])?);
            } else if let Some(nested) = self.kustomization_in(&target) {
                objects.extend(self.kustomize(&nested, depth + 1)?);
            } else {
                return Err(err(
                    kfile,
                    format!(
                        "resources[{i}]: {r:?} is neither a file nor a directory with a kustomization"
                    ),
                ));
            }
        }
        if let Some(ns) = map.get("namespace").and_then(Value::as_str) {
            for o in &mut objects {
                if !super::object::is_cluster_scoped(o.kind())
                    && let Some(meta) = o.value.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    meta.insert("namespace".into(), Value::String(ns.to_string()));
                }
            }
        }
        for (i, p) in map
            .get("patches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            apply_patch(kfile, i, p, &mut objects)?;
        }
        Ok(objects)
    }
}

fn apply_patch(
    kfile: &str,
    index: usize,
    patch: &Value,
    objects: &mut [Object],
) -> Result<(), RenderError> {
    let at = |m: &str| err(kfile, format!("patches[{index}]: {m}"));
    let kind = patch.pointer("/target/kind").and_then(Value::as_str);
    let name = patch.pointer("/target/name").and_then(Value::as_str);
    let text = patch
        .get("patch")
        .and_then(Value::as_str)
        .ok_or_else(|| at("missing inline patch"))?;
    let ops: Value =
        serde_saphyr::from_str(text).map_err(|e| at(&format!("invalid patch YAML: {e}")))?;
    let ops = ops
        .as_array()
        .ok_or_else(|| at("only JSON 6902 patches (a list of ops) are supported offline"))?;
    let mut matched = 0;
    for o in objects.iter_mut() {
        if kind.is_some_and(|k| k != o.kind()) || name.is_some_and(|n| n != o.name()) {
            continue;
        }
        matched += 1;
        let id = o.id();
        for (j, op) in ops.iter().enumerate() {
            let verb = op.get("op").and_then(Value::as_str).unwrap_or("");
            let path = op
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| at(&format!("op {j} has no path")))?;
            let (parent, last) = path
                .rsplit_once('/')
                .ok_or_else(|| at(&format!("op {j}: bad path {path:?}")))?;
            let value = op.get("value").cloned();
            let target = o
                .value
                .pointer_mut(parent)
                .ok_or_else(|| at(&format!("op {j}: path {path:?} not found in {id}")))?;
            match (verb, target) {
                ("replace" | "add", Value::Object(m)) => {
                    if verb == "replace" && !m.contains_key(last) {
                        return Err(at(&format!("op {j}: replace of missing {path:?} in {id}")));
                    }
                    m.insert(
                        last.to_string(),
                        value.ok_or_else(|| at(&format!("op {j}: no value")))?,
                    );
                }
                ("remove", Value::Object(m)) => {
                    m.remove(last)
                        .ok_or_else(|| at(&format!("op {j}: remove of missing {path:?}")))?;
                }
                ("replace", Value::Array(a)) => {
                    let idx: usize = last
                        .parse()
                        .map_err(|_| at(&format!("op {j}: bad index in {path:?}")))?;
                    let slot = a
                        .get_mut(idx)
                        .ok_or_else(|| at(&format!("op {j}: index out of range in {path:?}")))?;
                    *slot = value.ok_or_else(|| at(&format!("op {j}: no value")))?;
                }
                ("add", Value::Array(a)) => {
                    let v = value.ok_or_else(|| at(&format!("op {j}: no value")))?;
                    if last == "-" {
                        a.push(v);
                    } else {
                        let idx: usize = last
                            .parse()
                            .map_err(|_| at(&format!("op {j}: bad index in {path:?}")))?;
                        if idx > a.len() {
                            return Err(at(&format!("op {j}: index out of range in {path:?}")));
                        }
                        a.insert(idx, v);
                    }
                }
                (other, _) => {
                    return Err(at(&format!("op {j}: unsupported op {other:?} at {path:?}")));
                }
            }
        }
    }
    if matched == 0 {
        return Err(at("target matches no resource"));
    }
    Ok(())
}

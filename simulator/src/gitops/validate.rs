//! Offline checks of a GitOps tree (sans-IO: takes parsed repositories and CRD schemas).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::object::{Object, Requests, pod_requests, pod_spec_location, quantity_value, replicas};
use super::schema::{K8S_OPENAPI_WINDOW, SCHEMA_KUBERNETES_MINOR, Schemas};
use super::tree::{HOOK, Tree, UnitKind, wave_of};
use super::{Capacity, Finding};

/// Namespaces every cluster has.
pub const BUILTIN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];
/// Priority classes every cluster has.
pub const BUILTIN_PRIORITY_CLASSES: [&str; 2] = ["system-cluster-critical", "system-node-critical"];

/// Which controller's namespace a bootstrap object implies (created by the controller install).
fn controller_namespaces(tree: &Tree) -> BTreeSet<String> {
    tree.bootstrap
        .iter()
        .filter_map(|o| o.namespace().map(str::to_string))
        .collect()
}

/// Notes about the Kubernetes version a topology runs versus the compiled schemas.
pub fn version_note(topology_version: Option<&str>) -> String {
    let compiled = format!("1.{SCHEMA_KUBERNETES_MINOR}");
    let Some(v) = topology_version else {
        return format!(
            "schemas: Kubernetes {compiled} (k8s-openapi 0.29, feature v1_{SCHEMA_KUBERNETES_MINOR}); no topology given"
        );
    };
    let minor = v
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m == SCHEMA_KUBERNETES_MINOR => {
            format!("schemas: Kubernetes {compiled}, the topology's version ({v})")
        }
        Some(m) if (K8S_OPENAPI_WINDOW.0..=K8S_OPENAPI_WINDOW.1).contains(&m) => format!(
            "schemas: Kubernetes {compiled} (the version compiled in); the topology runs {v}, inside k8s-openapi's window 1.{}-1.{} but validated against the nearest compiled version",
            K8S_OPENAPI_WINDOW.0, K8S_OPENAPI_WINDOW.1
        ),
        Some(_) => format!(
            "schemas: Kubernetes {compiled}; the topology runs {v}, OUTSIDE k8s-openapi's window 1.{}-1.{}: validated against the nearest version",
            K8S_OPENAPI_WINDOW.0, K8S_OPENAPI_WINDOW.1
        ),
        None => format!(
            "schemas: Kubernetes {compiled}; the topology's version {v:?} could not be parsed"
        ),
    }
}

/// Schema-checks objects, deduplicated by file and identity.
pub fn check_schemas(
    schemas: &Schemas,
    objects: &[Object],
    findings: &mut Vec<Finding>,
    seen: &mut BTreeSet<(String, String, String)>,
) -> usize {
    let mut checked = 0;
    for o in objects {
        let key = (o.file.clone(), o.id(), o.value.to_string());
        if !seen.insert(key) {
            continue;
        }
        checked += 1;
        for v in schemas.validate(o) {
            findings.push(Finding::new(&o.file, o.id(), v.field, v.message));
        }
    }
    checked
}

/// Happens-before of two positions in an ArgoCD tree (see [`super::tree::Unit::order_key`]
/// plus the object's wave): is something at `a` applied and healthy before `b` starts?
fn before(a: &[(i64, String)], b: &[(i64, String)]) -> bool {
    for (x, y) in a.iter().zip(b.iter()) {
        if x.0 != y.0 {
            return x.0 < y.0;
        }
        if x.1 != y.1 {
            // Same wave: a plain object ("") is applied before an Application in the same wave
            // (ArgoCD orders by kind within a wave: Namespace first); two sibling apps are concurrent.
            return x.1.is_empty();
        }
    }
    true
}

fn position(
    tree: &Tree,
    unit: Option<usize>,
    o: &Object,
    f: &mut Vec<Finding>,
) -> Vec<(i64, String)> {
    let mut key = unit
        .map(|u| tree.units[u].order_key(&tree.units))
        .unwrap_or_default();
    // PreSync hooks run before wave sync, PostSync after every wave.
    let wave = match o.annotation(HOOK) {
        Some("PreSync") => i64::MIN,
        Some("PostSync") => i64::MAX,
        _ => wave_of(o, f),
    };
    key.push((wave, String::new()));
    key
}

/// Where a namespace, CRD or PriorityClass is created: the unit and the position.
type Provider = (Option<usize>, Vec<(i64, String)>);

/// Flux: units whose contents are applied before `u` starts (dependsOn closure and ancestors).
fn flux_before(tree: &Tree, u: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut stack = vec![u];
    let mut steps = 0;
    while let Some(x) = stack.pop() {
        steps += 1;
        if steps > 10_000 {
            break;
        }
        if let Some(p) = tree.units[x].parent
            && out.insert(p)
        {
            stack.push(p);
        }
        for d in &tree.units[x].depends_on {
            if let Some(i) = tree.find(d)
                && out.insert(i)
            {
                stack.push(i);
            }
        }
    }
    out
}

/// The graph checks: dependsOn targets and cycles, source references, namespaces, CRDs and
/// priority classes existing before use.
pub fn check_graph(tree: &Tree, findings: &mut Vec<Finding>) {
    let flux = tree.units.iter().any(|u| {
        matches!(
            u.kind,
            UnitKind::FluxKustomization | UnitKind::FluxHelmRelease
        )
    });
    // dependsOn targets and cycles.
    for (i, u) in tree.units.iter().enumerate() {
        for (j, d) in u.depends_on.iter().enumerate() {
            if tree.find(d).is_none() {
                findings.push(Finding::new(
                    &u.definition.file,
                    u.definition.id(),
                    format!("spec.dependsOn[{j}].name"),
                    format!("dependsOn target {d:?} does not exist in the tree"),
                ));
            }
        }
        if flux_deps_cycle(tree, i) {
            findings.push(Finding::new(
                &u.definition.file,
                u.definition.id(),
                "spec.dependsOn",
                format!("dependsOn cycle through {:?}", u.name),
            ));
        }
    }
    // Source references.
    let mut sources: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, o) in tree.all_objects() {
        if o.group() == "source.toolkit.fluxcd.io" {
            sources.insert((o.kind().to_string(), o.name().to_string()));
        }
    }
    for u in &tree.units {
        let (ptr, field) = match u.kind {
            UnitKind::FluxKustomization => ("/spec/sourceRef", "spec.sourceRef.name"),
            UnitKind::FluxHelmRelease => (
                "/spec/chart/spec/sourceRef",
                "spec.chart.spec.sourceRef.name",
            ),
            _ => continue,
        };
        let r = u.definition.value.pointer(ptr);
        let kind = r
            .and_then(|r| r.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = r
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !sources.contains(&(kind.to_string(), name.to_string())) {
            findings.push(Finding::new(
                &u.definition.file,
                u.definition.id(),
                field,
                format!("source {kind} {name:?} is not defined in the tree"),
            ));
        }
    }
    // Where each namespace, CRD and PriorityClass comes from.
    let ctrl_ns = controller_namespaces(tree);
    let mut f = Vec::new();
    let mut providers: BTreeMap<(&str, String), Vec<Provider>> = BTreeMap::new();
    for (u, o) in tree.all_objects() {
        let what = match o.kind() {
            "Namespace" => "Namespace",
            "CustomResourceDefinition" => "CRD",
            "PriorityClass" => "PriorityClass",
            _ => continue,
        };
        let name = if what == "CRD" {
            let g = o
                .value
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("");
            let k = o
                .value
                .pointer("/spec/names/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{g}/{k}")
        } else {
            o.name().to_string()
        };
        providers
            .entry((what, name))
            .or_default()
            .push((u, position(tree, u, o, &mut f)));
    }
    for (i, u) in tree.units.iter().enumerate() {
        if u.create_namespace && !u.namespace.is_empty() {
            let mut key = u.order_key(&tree.units);
            key.push((i64::MIN, String::new()));
            providers
                .entry(("Namespace", u.namespace.clone()))
                .or_default()
                .push((Some(i), key));
        }
    }
    let available =
        |what: &str, name: &str, user: Option<usize>, pos: &[(i64, String)]| -> Option<bool> {
            let list = providers.get(&(what, name.to_string()))?;
            Some(list.iter().any(|(pu, ppos)| {
                if flux {
                    match (pu, user) {
                        (Some(p), Some(u)) => *p == u || flux_before(tree, u).contains(p),
                        (None, _) => true,
                        (Some(_), None) => false,
                    }
                } else {
                    before(ppos, pos)
                }
            }))
        };
    for (u, o) in tree.all_objects() {
        let pos = position(tree, u, o, &mut f);
        if let Some(ns) = o.namespace() {
            if !crate::gitops::object::is_cluster_scoped(o.kind())
                && !BUILTIN_NAMESPACES.contains(&ns)
                && !ctrl_ns.contains(ns)
            {
                match available("Namespace", ns, u, &pos) {
                    None => findings.push(Finding::new(&o.file, o.id(), "metadata.namespace", format!("namespace {ns:?} is created nowhere in the tree (no Namespace object, no CreateNamespace=true)"))),
                    Some(false) => findings.push(Finding::new(&o.file, o.id(), "metadata.namespace", format!("namespace {ns:?} is not created before this object is applied (sync wave / dependsOn order)"))),
                    Some(true) => {}
                }
            }
        } else if u.is_some_and(|u| tree.units[u].kind == UnitKind::FluxKustomization)
            && !crate::gitops::object::is_cluster_scoped(o.kind())
        {
            findings.push(Finding::new(
                &o.file,
                o.id(),
                "metadata.namespace",
                "namespaced object without a namespace and no targetNamespace",
            ));
        }
        let crd_key = format!("{}/{}", o.group(), o.kind());
        if !o.group().is_empty()
            && !o.group().ends_with(".k8s.io")
            && !matches!(o.group(), "apps" | "batch" | "policy")
            && let Some(false) = available("CRD", &crd_key, u, &pos)
        {
            findings.push(Finding::new(
                &o.file,
                o.id(),
                "kind",
                format!("its CRD ({crd_key}) is applied in a later sync wave than this object"),
            ));
        }
        if let Some((ptr, path)) = pod_spec_location(o.kind())
            && let Some(pc) = o
                .value
                .pointer(ptr)
                .and_then(|p| p.get("priorityClassName"))
                .and_then(Value::as_str)
            && !BUILTIN_PRIORITY_CLASSES.contains(&pc)
        {
            match available("PriorityClass", pc, u, &pos) {
                None => findings.push(Finding::new(
                    &o.file,
                    o.id(),
                    format!("{path}.priorityClassName"),
                    format!("PriorityClass {pc:?} is defined nowhere in the tree"),
                )),
                Some(false) => findings.push(Finding::new(
                    &o.file,
                    o.id(),
                    format!("{path}.priorityClassName"),
                    format!("PriorityClass {pc:?} is created after this workload"),
                )),
                Some(true) => {}
            }
        }
    }
    findings.extend(f);
}

fn flux_deps_cycle(tree: &Tree, start: usize) -> bool {
    let mut stack: Vec<usize> = tree.units[start]
        .depends_on
        .iter()
        .filter_map(|d| tree.find(d))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(x) = stack.pop() {
        if x == start {
            return true;
        }
        if seen.insert(x) {
            stack.extend(tree.units[x].depends_on.iter().filter_map(|d| tree.find(d)));
        }
    }
    false
}

/// Requests of the tree per namespace and in total, checked against quotas and capacity.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    pub total: Requests,
    pub pods: u64,
    pub by_namespace: BTreeMap<String, Requests>,
    /// Helm units modelled from an estimate.
    pub estimated: Vec<String>,
}

/// Sums requests and checks namespace quotas and, with a topology, node capacity.
pub fn check_capacity(
    tree: &Tree,
    capacity: Option<&Capacity>,
    findings: &mut Vec<Finding>,
) -> Demand {
    let mut demand = Demand::default();
    let nodes = capacity
        .map(|c| c.nodes.iter().filter(|n| n.schedulable).count() as u64)
        .unwrap_or(1)
        .max(1);
    let largest = capacity.and_then(|c| {
        c.nodes
            .iter()
            .filter(|n| n.schedulable)
            .map(|n| (n.cpu_millis, n.memory_bytes))
            .max()
    });
    let mut quotas: BTreeMap<String, (Object, Requests)> = BTreeMap::new();
    for (_, o) in tree.all_objects() {
        if o.kind() == "ResourceQuota" {
            let hard = o.value.pointer("/spec/hard");
            let get = |keys: [&str; 2], scale| {
                keys.iter().find_map(|k| {
                    hard.and_then(|h| h.get(*k))
                        .and_then(|v| quantity_value(v, scale))
                })
            };
            let q = Requests {
                cpu_millis: get(["requests.cpu", "cpu"], 1000).unwrap_or(u64::MAX),
                memory_bytes: get(["requests.memory", "memory"], 1).unwrap_or(u64::MAX),
            };
            quotas.insert(o.namespace().unwrap_or("").to_string(), (o.clone(), q));
        }
    }
    for u in &tree.units {
        if let Some((req, pods)) = u.estimate {
            demand.total = demand.total.plus(req);
            demand.pods += pods;
            *demand.by_namespace.entry(u.namespace.clone()).or_default() = demand
                .by_namespace
                .get(&u.namespace)
                .copied()
                .unwrap_or_default()
                .plus(req);
            demand.estimated.push(u.name.clone());
        }
    }
    for (_, o) in tree.all_objects() {
        let Some((ptr, path)) = pod_spec_location(o.kind()) else {
            continue;
        };
        if o.annotation(HOOK).is_some() {
            continue; // hooks run to completion; they do not hold requests
        }
        let Some(spec) = o.value.pointer(ptr) else {
            continue;
        };
        let (per_pod, missing) = pod_requests(spec, path);
        let count = if o.kind() == "DaemonSet" {
            nodes
        } else {
            replicas(&o.value)
        };
        let ns = o.namespace().unwrap_or("").to_string();
        let topology_quota = capacity.is_some_and(|c| c.quotas.iter().any(|q| q.namespace == ns));
        if quotas.contains_key(&ns) || topology_quota {
            for m in &missing {
                findings.push(Finding::new(&o.file, o.id(), m.clone(), format!("namespace {ns:?} has a ResourceQuota: every container needs cpu and memory requests")));
            }
        }
        if let Some((cpu, mem)) = largest
            && (per_pod.cpu_millis > cpu || per_pod.memory_bytes > mem)
        {
            findings.push(Finding::new(
                    &o.file,
                    o.id(),
                    format!("{path}.containers[*].resources.requests"),
                    format!(
                        "one pod requests {} CPU / {}, more than the largest schedulable node ({} CPU / {}): it never schedules",
                        fmt_cpu(per_pod.cpu_millis), fmt_mem(per_pod.memory_bytes), fmt_cpu(cpu), fmt_mem(mem)
                    ),
                ));
        }
        let req = per_pod.times(count);
        demand.total = demand.total.plus(req);
        demand.pods += count;
        let entry = demand.by_namespace.entry(ns).or_default();
        *entry = entry.plus(req);
    }
    for (ns, (q, limit)) in &quotas {
        let used = demand.by_namespace.get(ns).copied().unwrap_or_default();
        if used.cpu_millis > limit.cpu_millis {
            findings.push(Finding::new(
                &q.file,
                q.id(),
                "spec.hard.requests.cpu",
                format!(
                    "the tree requests {} CPU in namespace {ns:?}, over its quota of {}",
                    fmt_cpu(used.cpu_millis),
                    fmt_cpu(limit.cpu_millis)
                ),
            ));
        }
        if used.memory_bytes > limit.memory_bytes {
            findings.push(Finding::new(
                &q.file,
                q.id(),
                "spec.hard.requests.memory",
                format!(
                    "the tree requests {} in namespace {ns:?}, over its quota of {}",
                    fmt_mem(used.memory_bytes),
                    fmt_mem(limit.memory_bytes)
                ),
            ));
        }
    }
    if let Some(c) = capacity {
        for q in &c.quotas {
            let used = demand
                .by_namespace
                .get(&q.namespace)
                .copied()
                .unwrap_or_default();
            let object = format!("Namespace {}", q.namespace);
            if let Some(limit) = q.cpu_millis
                && used.cpu_millis > limit
            {
                findings.push(Finding::new(
                    &c.source,
                    object.clone(),
                    format!("{}.cpu", q.field),
                    format!(
                        "the tree requests {} CPU in namespace {:?}, over topology {:?}'s quota of {}",
                        fmt_cpu(used.cpu_millis),
                        q.namespace,
                        c.name,
                        fmt_cpu(limit)
                    ),
                ));
            }
            if let Some(limit) = q.memory_bytes
                && used.memory_bytes > limit
            {
                findings.push(Finding::new(
                    &c.source,
                    object,
                    format!("{}.memory", q.field),
                    format!(
                        "the tree requests {} in namespace {:?}, over topology {:?}'s quota of {}",
                        fmt_mem(used.memory_bytes),
                        q.namespace,
                        c.name,
                        fmt_mem(limit)
                    ),
                ));
            }
        }
        let (cpu, mem) = c.allocatable();
        let root = tree
            .bootstrap
            .first()
            .map(|o| (o.file.clone(), o.id()))
            .unwrap_or_default();
        if demand.total.cpu_millis > cpu {
            findings.push(Finding::new(
                &root.0,
                root.1.clone(),
                "(tree requests.cpu)",
                format!(
                    "the tree requests {} CPU, more than topology {:?} allocates ({})",
                    fmt_cpu(demand.total.cpu_millis),
                    c.name,
                    fmt_cpu(cpu)
                ),
            ));
        }
        if demand.total.memory_bytes > mem {
            findings.push(Finding::new(
                &root.0,
                root.1,
                "(tree requests.memory)",
                format!(
                    "the tree requests {}, more than topology {:?} allocates ({})",
                    fmt_mem(demand.total.memory_bytes),
                    c.name,
                    fmt_mem(mem)
                ),
            ));
        }
    }
    demand
}

pub fn fmt_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

pub fn fmt_mem(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else {
        format!("{}Mi", bytes.div_ceil(1 << 20))
    }
}

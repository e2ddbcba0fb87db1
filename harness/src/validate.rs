//! Checking scenario files without running them: the format, then every name they use against
//! the topology each case runs on (nodes, network groups, workloads).

use std::collections::BTreeSet;
use std::path::Path;

use crate::load::{self, Catalog, Diagnostic, LoadError};
use crate::scenario::{Action, Assertion, Fault, Scenario, Step};

/// Loads a scenario file and checks its names against the topologies of its cases.
/// Returns the number of cases it expands to.
pub fn scenario_file(path: &Path, root: &Path) -> Result<usize, LoadError> {
    let catalog = Catalog::from_workspace(root);
    let sc = load::load_file(path, &catalog)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let file = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut topologies: Vec<&str> = vec![sc.topology.as_str()];
    if let Some(m) = &sc.matrix
        && !m.topologies.is_empty()
    {
        topologies = m.topologies.iter().map(String::as_str).collect();
    }
    let mut diags = Vec::new();
    for t in topologies {
        let tp = root.join("fixtures/topologies").join(format!("{t}.yaml"));
        match simulator::Topology::load(&tp) {
            Ok(topo) => diags.extend(check_names(&file, &text, &sc, &topo)),
            Err(e) => diags.push(Diagnostic {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("topology `{t}` does not load: {e}"),
                snippet: None,
            }),
        }
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    let cases = load::expand(path, std::sync::Arc::new(sc), &[]);
    Ok(cases.len())
}

/// Names a scenario uses that its topology does not have.
pub fn check_names(
    file: &str,
    text: &str,
    sc: &Scenario,
    topo: &simulator::Topology,
) -> Vec<Diagnostic> {
    let nodes: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
    let groups: BTreeSet<String> = topo.nodes.iter().map(|n| n.group.clone()).collect();
    let mut workloads: Vec<String> = topo
        .workloads
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    workloads.extend(
        sc.workload
            .k8s
            .iter()
            .map(|w| format!("{}/{}", w.namespace, w.name)),
    );
    let mut diags = Vec::new();
    let mut bad = |word: &str, what: &str, known: &[String]| {
        let (line, column) = locate(text, word);
        let hint = load::did_you_mean(word, known)
            .map(|b| format!(", did you mean `{b}`?"))
            .unwrap_or_default();
        diags.push(Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: format!(
                "unknown {what} `{word}`{hint} (topology {} has: {})",
                topo.name,
                known.join(", ")
            ),
            snippet: load::snippet(text, line, column),
        });
    };
    // The FL job's own endpoints are network groups too (the local backend's fault proxy).
    let fl_clients = sc.workload.fl.as_ref().map_or(0, |w| w.clients);
    let node_or_group: Vec<String> = nodes
        .iter()
        .cloned()
        .chain(groups.iter().cloned())
        .chain(crate::scenario::fl_groups(fl_clients))
        .collect();
    let steps = sc.steps.iter().chain(sc.finally.iter()).map(|s| &s.value);
    for st in steps {
        for n in step_nodes(st) {
            if !nodes.contains(&n) {
                bad(&n, "node", &nodes);
            }
        }
        for g in step_groups(st) {
            if !node_or_group.contains(&g) {
                bad(&g, "node or network group", &node_or_group);
            }
        }
        if let Some(Action::Assert(list)) = st.action() {
            for a in list {
                if let Assertion::WorkloadReady { workload, .. } = a
                    && !workloads.contains(workload)
                {
                    bad(workload, "workload", &workloads);
                }
            }
        }
        if let Some(w) = &st.wait
            && let Some(wl) = &w.workload
            && !workloads.contains(wl)
        {
            bad(wl, "workload", &workloads);
        }
    }
    for w in &sc.workload.k8s {
        if let Some(n) = &w.node
            && !nodes.contains(n)
        {
            bad(n, "node", &nodes);
        }
        if let Some(class) = &w.storage_class
            && !topo.storage_classes.iter().any(|s| &s.name == class)
        {
            let known: Vec<String> = topo
                .storage_classes
                .iter()
                .map(|s| s.name.clone())
                .collect();
            bad(class, "storage class", &known);
        }
    }
    diags
}

fn step_nodes(st: &Step) -> Vec<String> {
    let mut out = Vec::new();
    // An FL worker is named by its client (`client-N`) on the local backend, not by a node of
    // the topology; the backend checks N against the job's clients.
    if let Some(Fault::KillProcess { node, process } | Fault::RestoreProcess { node, process }) =
        &st.fault
        && *process == crate::scenario::Process::FlWorker
        && node
            .strip_prefix("client-")
            .is_some_and(|i| i.parse::<u32>().is_ok())
    {
        return out;
    }
    if let Some(
        Fault::KillNode(n)
        | Fault::RestoreNode(n)
        | Fault::EtcdMemberLoss(n)
        | Fault::DiskFull { node: n }
        | Fault::ClockSkew { node: n, .. }
        | Fault::KillProcess { node: n, .. }
        | Fault::RestoreProcess { node: n, .. },
    ) = &st.fault
    {
        out.push(n.clone());
    }
    if let Some(w) = &st.wait
        && let Some(n) = &w.node
    {
        out.push(n.clone());
    }
    if let Some(list) = &st.assert {
        for a in list {
            match a {
                Assertion::NodeCondition { node, .. } => out.push(node.clone()),
                Assertion::PodPhase { node: Some(n), .. } => out.push(n.clone()),
                _ => {}
            }
        }
    }
    out
}

fn step_groups(st: &Step) -> Vec<String> {
    match &st.fault {
        Some(Fault::Partition { a, b })
        | Some(Fault::Link { a, b, .. })
        | Some(Fault::HealPartition { a, b }) => a.iter().chain(b.iter()).cloned().collect(),
        _ => Vec::new(),
    }
}

/// First line:column where `word` appears as a whole token.
fn locate(text: &str, word: &str) -> (u64, u64) {
    for (i, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(p) = line[from..].find(word) {
            let s = from + p;
            let e = s + word.len();
            let before_ok = s == 0
                || !line.as_bytes()[s - 1].is_ascii_alphanumeric()
                    && line.as_bytes()[s - 1] != b'-';
            let after_ok = e >= line.len()
                || !line.as_bytes()[e].is_ascii_alphanumeric() && line.as_bytes()[e] != b'-';
            if before_ok && after_ok {
                return (i as u64 + 1, s as u64 + 1);
            }
            from = e;
        }
    }
    (0, 0)
}

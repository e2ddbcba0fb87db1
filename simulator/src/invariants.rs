//! Core invariants, checked after every event that changed cluster state (the engine skips the
//! check when nothing changed, which cannot break an invariant). The pod-set invariants below
//! read only pod objects, their bindings, PVC bindings and quotas, so they re-run only after an
//! event that created, bound, deleted or removed a pod or applied an object
//! (`Cluster::pods_generation`), and then recompute from scratch over every pod: readiness,
//! lease and etcd events, most of a run, cannot break them. The etcd one-leader-per-term
//! invariant is checked inside the etcd model at each role change.

use std::collections::BTreeMap;

use crate::cluster::PodPhase;
use crate::engine::World;
use crate::topology::{Provisioner, WorkloadKind};

/// Check the core invariants (the pod-set ones only when `pods_changed`); `Err((name,
/// message))` on the first violation.
pub fn check(w: &World, pods_changed: bool) -> Result<(), (String, String)> {
    if !pods_changed {
        return Ok(());
    }
    node_capacity(w)?;
    local_path_affinity(w)?;
    statefulset_identity(w)?;
    quota(w)?;
    Ok(())
}

/// No node has pods whose requests exceed its allocatable CPU or memory.
fn node_capacity(w: &World) -> Result<(), (String, String)> {
    let mut used = vec![(0u64, 0u64); w.cluster.nodes.len()];
    for p in w.cluster.pods.values() {
        if let Some(n) = p.node {
            used[n].0 += p.cpu.0;
            used[n].1 += p.memory.0;
        }
    }
    for (i, (c, m)) in used.into_iter().enumerate() {
        let n = &w.cluster.nodes[i];
        if c > n.cpu.0 || m > n.memory.0 {
            return Err((
                "node-capacity".into(),
                format!(
                    "node {} has requests cpu {}m / memory {} bytes over allocatable {}m / {} bytes",
                    n.name, c, m, n.cpu.0, n.memory.0
                ),
            ));
        }
    }
    Ok(())
}

/// A pod using a local-path volume runs only on the node that holds the volume.
fn local_path_affinity(w: &World) -> Result<(), (String, String)> {
    for p in w.cluster.pods.values() {
        let Some(n) = p.node else { continue };
        for c in &p.pvcs {
            if let Some(v) = w.cluster.pvcs.get(&(p.namespace.clone(), c.clone()))
                && v.provisioner == Provisioner::LocalPath
                && v.node.is_some_and(|b| b != n)
            {
                return Err((
                    "local-path-node-affinity".into(),
                    format!(
                        "pod {} runs on {} but its local-path volume {c} lives on another node",
                        p.key(),
                        w.cluster.nodes[n].name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// At most one pod object per StatefulSet ordinal, and never two running at once.
fn statefulset_identity(w: &World) -> Result<(), (String, String)> {
    let mut seen: BTreeMap<(&str, &str, u32), u64> = BTreeMap::new();
    for p in w.cluster.pods.values() {
        if let (Some((WorkloadKind::StatefulSet, sts)), Some(o)) = (&p.owner, p.ordinal)
            && let Some(prev) = seen.insert((p.namespace.as_str(), sts.as_str(), o), p.uid)
        {
            let other = &w.cluster.pods[&prev];
            let running = [other.phase, p.phase]
                .iter()
                .filter(|x| **x == PodPhase::Running)
                .count();
            return Err((
                "statefulset-at-most-one-pod-per-ordinal".into(),
                format!(
                    "two pods for {}/{} ordinal {o} ({running} running): uids {prev} and {}",
                    p.namespace, sts, p.uid
                ),
            ));
        }
    }
    Ok(())
}

/// No namespace's live pods exceed its ResourceQuota.
fn quota(w: &World) -> Result<(), (String, String)> {
    for (ns, q) in &w.cluster.namespaces {
        let Some(q) = q else { continue };
        let live = w
            .cluster
            .pods
            .values()
            .filter(|p| &p.namespace == ns && p.deleting.is_none());
        let (mut c, mut m, mut n) = (0u64, 0u64, 0u32);
        for p in live {
            c += p.cpu.0;
            m += p.memory.0;
            n += 1;
        }
        if q.cpu.is_some_and(|x| c > x.0)
            || q.memory.is_some_and(|x| m > x.0)
            || q.pods.is_some_and(|x| n > x)
        {
            return Err((
                "resource-quota".into(),
                format!("namespace {ns} uses cpu {c}m, memory {m} bytes, {n} pods over its quota"),
            ));
        }
    }
    Ok(())
}

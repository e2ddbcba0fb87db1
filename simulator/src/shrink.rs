//! Random fault schedules and their shrinking to a minimal failing one.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fault::{Fault, Process, ScheduledFault};
use crate::topology::{Datastore, Role, Topology};
use crate::{SimOptions, Time};

/// Most runs one shrink may spend (each run is a full simulation).
pub const MAX_SHRINK_RUNS: usize = 200;

/// A random fault schedule of `count` faults in `[0, horizon)`, drawn from its own ChaCha stream
/// (seeded from `seed`, so the schedule is part of the repro).
pub fn random_faults(
    topo: &Topology,
    seed: u64,
    count: usize,
    horizon: Time,
) -> Vec<ScheduledFault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17);
    let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    let cps: Vec<&str> = topo
        .nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::ControlPlane))
        .map(|n| n.name.as_str())
        .collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let at = rng.random_range(0..horizon.max(1));
        let ni = rng.random_range(0..names.len());
        let node = names[ni].to_string();
        let cp = cps[rng.random_range(0..cps.len())].to_string();
        let fault = match rng.random_range(0..8u32) {
            0 | 1 => Fault::KillNode { node },
            2 => Fault::RestoreNode { node },
            3 => Fault::KillProcess {
                node,
                process: Process::Kubelet,
            },
            4 if topo.datastore == Datastore::Etcd => Fault::EtcdMemberLoss { node: cp },
            4 => Fault::KillProcess {
                node: cp,
                process: Process::Apiserver,
            },
            // Between two different nodes: a node cut off from itself is no fault (and a
            // one-node topology has no link to cut, so it heals instead).
            5 if names.len() > 1 => {
                let k = rng.random_range(0..names.len() - 1);
                let other = names[if k >= ni { k + 1 } else { k }].to_string();
                Fault::Partition {
                    a: vec![node],
                    b: vec![other],
                }
            }
            5 | 6 => Fault::Heal,
            _ => Fault::KillProcess {
                node: cp,
                process: Process::Etcd,
            },
        };
        out.push(ScheduledFault { at, fault });
    }
    out.sort_by_key(|f| f.at);
    out
}

/// Shrink `faults` to a smaller schedule for which `fails` still returns true (delta debugging:
/// drop halves, then quarters, ... then single faults; keep any drop that still fails). Returns
/// the smallest failing schedule found and the number of runs spent. `fails(faults)` must be
/// true on entry.
pub fn shrink(
    faults: &[ScheduledFault],
    mut fails: impl FnMut(&[ScheduledFault]) -> bool,
) -> (Vec<ScheduledFault>, usize) {
    let mut cur: Vec<ScheduledFault> = faults.to_vec();
    let mut runs = 0;
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut progressed = false;
        let mut start = 0;
        while start < cur.len() && runs < MAX_SHRINK_RUNS {
            let end = (start + chunk).min(cur.len());
            let cand: Vec<ScheduledFault> = cur[..start]
                .iter()
                .chain(cur[end..].iter())
                .cloned()
                .collect();
            runs += 1;
            if fails(&cand) {
                cur = cand;
                progressed = true;
            } else {
                start = end;
            }
        }
        if runs >= MAX_SHRINK_RUNS {
            break;
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    (cur, runs)
}

/// Why a run did not recover. `kind` names the check that failed (`invariant:<name>`,
/// `api-unavailable`, `etcd-no-quorum`, `nodes-not-ready`): shrinking keeps only schedules that
/// fail with the same kind, so it never trades the bug it was given for another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure {
    /// The failing check.
    pub kind: String,
    /// What was seen, with names.
    pub message: String,
}

impl std::fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.kind, self.message)
    }
}

fn failure(kind: impl Into<String>, message: impl Into<String>) -> RecoveryFailure {
    RecoveryFailure {
        kind: kind.into(),
        message: message.into(),
    }
}

/// The property `cargo xtask sim --shrink` checks: after the faults and `settle` of quiet time,
/// the cluster has recovered (API up, etcd quorum where etcd is used, every node that is powered
/// Ready) and no invariant was violated. Returns the failure, if any.
pub fn recovery_failure(
    topo: &Topology,
    seed: u64,
    options: &SimOptions,
    settle: Time,
) -> Option<RecoveryFailure> {
    let mut sim = crate::Sim::new(topo.clone(), seed, options.clone());
    let last = options.faults.iter().map(|f| f.at).max().unwrap_or(0);
    let _ = sim.run_until(last + settle);
    if let Some(v) = sim.violation() {
        return Some(failure(format!("invariant:{}", v.invariant), v.to_string()));
    }
    let w = sim.world();
    if !w.api_available() {
        return Some(failure(
            "api-unavailable",
            "kubernetes api unavailable after settling",
        ));
    }
    if topo.datastore == Datastore::Etcd && !w.etcd_status().quorum {
        return Some(failure(
            "etcd-no-quorum",
            "etcd has no quorum after settling",
        ));
    }
    let down: Vec<&str> = w
        .nodes()
        .iter()
        .filter(|n| n.powered && n.exists && !n.ready)
        .map(|n| n.name.as_str())
        .collect();
    if !down.is_empty() {
        return Some(failure(
            "nodes-not-ready",
            format!(
                "powered nodes not Ready after settling: {}",
                down.join(", ")
            ),
        ));
    }
    None
}

/// A shrunk schedule: the failure it was shrunk for, the smallest schedule that still fails the
/// same way, that schedule's own failure, and the runs spent.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The failure of the full schedule.
    pub original: RecoveryFailure,
    /// The minimal schedule.
    pub faults: Vec<ScheduledFault>,
    /// Its failure (same `kind` as `original`).
    pub failure: RecoveryFailure,
    /// Simulation runs spent shrinking.
    pub runs: usize,
}

/// Shrinks the fault schedule of `options` to a minimal one that fails [`recovery_failure`] with
/// the same failure kind. `None` when the full schedule recovers (nothing to shrink).
pub fn shrink_recovery(
    topo: &Topology,
    seed: u64,
    options: &SimOptions,
    settle: Time,
) -> Option<Shrunk> {
    let original = recovery_failure(topo, seed, options, settle)?;
    let with = |faults: &[ScheduledFault]| SimOptions {
        faults: faults.to_vec(),
        ..options.clone()
    };
    let (faults, runs) = shrink(&options.faults, |cand| {
        recovery_failure(topo, seed, &with(cand), settle).is_some_and(|f| f.kind == original.kind)
    });
    // `shrink` only keeps candidates that failed the same way, and the full schedule did.
    let failure =
        recovery_failure(topo, seed, &with(&faults), settle).unwrap_or_else(|| original.clone());
    Some(Shrunk {
        original,
        faults,
        failure,
        runs,
    })
}

//! Network links between nodes: latency, bandwidth, loss and partitions.
//!
//! Every pair of nodes is linked with the topology's latency and bandwidth. Faults cut links
//! between two sets of nodes (partitions) or degrade them (extra latency, loss, bandwidth cap).
//! Sets are written with node names or network group names (`group:` of a node).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::Time;
use crate::topology::Topology;

/// A link change between two sets of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkChange {
    /// Extra one-way latency in microseconds.
    pub latency_us: u64,
    /// Loss in percent (0-100).
    pub loss_percent: f64,
    /// Bandwidth cap in Mbit/s.
    pub bandwidth_mbps: Option<u64>,
}

/// The network state.
#[derive(Debug, Clone)]
pub struct Network {
    names: Vec<String>,
    groups: BTreeMap<String, BTreeSet<usize>>,
    base_latency_us: u64,
    base_bandwidth_mbps: u64,
    /// Cut pairs (i < j).
    cut: BTreeSet<(usize, usize)>,
    /// Degraded pairs (i < j).
    degraded: BTreeMap<(usize, usize), LinkChange>,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    if a < b { (a, b) } else { (b, a) }
}

impl Network {
    /// The network of a topology: every node linked to every other.
    pub fn new(topo: &Topology) -> Self {
        let mut groups: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (i, n) in topo.nodes.iter().enumerate() {
            groups.entry(n.group.clone()).or_default().insert(i);
        }
        Network {
            names: topo.nodes.iter().map(|n| n.name.clone()).collect(),
            groups,
            base_latency_us: topo.network.latency_us,
            base_bandwidth_mbps: topo.network.bandwidth_mbps.max(1),
            cut: BTreeSet::new(),
            degraded: BTreeMap::new(),
        }
    }

    /// Resolve node or group names to node indices; unknown names are returned as the error.
    pub fn resolve(&self, names: &[String]) -> Result<BTreeSet<usize>, String> {
        let mut out = BTreeSet::new();
        for n in names {
            if let Some(i) = self.names.iter().position(|x| x == n) {
                out.insert(i);
            } else if let Some(g) = self.groups.get(n) {
                out.extend(g.iter().copied());
            } else {
                return Err(n.clone());
            }
        }
        Ok(out)
    }

    /// Cut every link between `a` and `b`.
    pub fn partition(&mut self, a: &BTreeSet<usize>, b: &BTreeSet<usize>) {
        for &i in a {
            for &j in b {
                if i != j {
                    self.cut.insert(pair(i, j));
                }
            }
        }
    }

    /// Degrade every link between `a` and `b`.
    pub fn degrade(&mut self, a: &BTreeSet<usize>, b: &BTreeSet<usize>, change: LinkChange) {
        for &i in a {
            for &j in b {
                if i != j {
                    self.degraded.insert(pair(i, j), change.clone());
                }
            }
        }
    }

    /// Remove all partitions and link changes.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.degraded.clear();
    }

    /// Whether `a` can reach `b` (ignoring loss).
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        a == b || !self.cut.contains(&pair(a, b))
    }

    /// Number of cut links.
    pub fn cut_links(&self) -> usize {
        self.cut.len()
    }

    /// Delay for `bytes` sent from `a` to `b`, or `None` if the message is lost or the link cut.
    /// Loss draws from the simulation's stream only on lossy links.
    pub fn delay(&self, rng: &mut ChaCha8Rng, a: usize, b: usize, bytes: u64) -> Option<Time> {
        if a == b {
            return Some(0);
        }
        let p = pair(a, b);
        if self.cut.contains(&p) {
            return None;
        }
        let mut latency = self.base_latency_us;
        let mut bw = self.base_bandwidth_mbps;
        if let Some(d) = self.degraded.get(&p) {
            if d.loss_percent > 0.0 && rng.random_range(0.0..100.0) < d.loss_percent {
                return None;
            }
            latency += d.latency_us;
            if let Some(cap) = d.bandwidth_mbps {
                bw = bw.min(cap.max(1));
            }
        }
        // bits / (Mbit/s) = microseconds
        Some(latency + bytes.saturating_mul(8) / bw)
    }
}

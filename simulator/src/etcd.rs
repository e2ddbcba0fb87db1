//! etcd: one real Raft node (TiKV's `raft` crate) per control-plane member, driven by the
//! simulated clock and network.
//!
//! Ticks come from the event queue every [`ETCD_HEARTBEAT_US`]; messages travel through
//! [`crate::net::Network`] (latency, loss, partitions). The randomized election timeout is drawn
//! from the simulation's ChaCha stream: the library resets it (with its own RNG) only when a
//! member changes term or role, and after every step or tick that changed them we overwrite it
//! with a draw from the stream, before any further tick reads it.
//!
//! Like etcd (`--pre-vote` and CheckQuorum on by default since 3.4/3.5), members run with
//! pre-vote and check-quorum: a leader cut off from the majority steps down after an election
//! timeout.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfState, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};
use rand::Rng;

use crate::engine::{Event, World};
use crate::timings::{ETCD_ELECTION_TICKS, ETCD_HEARTBEAT_US};
use crate::topology::{Datastore, Topology};
use crate::trace::TraceEvent;

/// Bytes of a Raft message without entries (header, term, index, commit): used for bandwidth.
const RAFT_MESSAGE_OVERHEAD_BYTES: u64 = 64;

/// One etcd member.
pub struct Member {
    /// Member name (= node name).
    pub name: String,
    /// Node index.
    pub node: usize,
    /// Raft id (1-based).
    pub id: u64,
    raw: Option<RawNode<MemStorage>>,
    storage: MemStorage,
    /// Data directory lost: the member can not come back.
    pub lost: bool,
    last_role: (u64, StateRole),
}

/// Status of one member, for queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Member (node) name.
    pub name: String,
    /// Process running.
    pub running: bool,
    /// Data lost.
    pub lost: bool,
    /// Raft role (`Leader`, `Follower`, `Candidate`, `PreCandidate`), `None` when stopped.
    pub role: Option<String>,
    /// Current term (last persisted when stopped).
    pub term: u64,
    /// Leader this member believes in (0 = none).
    pub leader_id: u64,
    /// Commit index.
    pub commit: u64,
}

/// The etcd cluster status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStatus {
    /// Members in id order.
    pub members: Vec<MemberStatus>,
    /// Name of the current leader, if one is running and reaches a majority.
    pub leader: Option<String>,
    /// Highest term among running members.
    pub term: u64,
    /// A leader exists and reaches a majority of members (writes can commit).
    pub quorum: bool,
}

/// All etcd members of the cluster (empty for the sqlite datastore).
pub struct Etcd {
    pub(crate) members: Vec<Member>,
    /// term -> leader id seen, for the one-leader-per-term invariant.
    leaders_by_term: BTreeMap<u64, u64>,
    pub(crate) had_quorum: bool,
    pub(crate) ticking: bool,
    logger: slog::Logger,
}

fn raft_config(id: u64) -> Config {
    Config {
        id,
        heartbeat_tick: 1,
        election_tick: ETCD_ELECTION_TICKS,
        // the library draws in [min, max) with its own thread RNG at every reset; we overwrite
        // that draw from the simulation stream right after each term or role change (the only
        // times it resets), before any tick can use it (see module docs).
        min_election_tick: ETCD_ELECTION_TICKS,
        max_election_tick: 2 * ETCD_ELECTION_TICKS,
        check_quorum: true,
        pre_vote: true,
        max_inflight_msgs: 256,
        max_size_per_msg: 1024 * 1024,
        ..Default::default()
    }
}

impl Etcd {
    /// Members for every control-plane node of an etcd topology.
    pub fn new(topo: &Topology) -> Self {
        let mut members = Vec::new();
        if topo.datastore == Datastore::Etcd {
            let cps: Vec<usize> = topo
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.roles.contains(&crate::topology::Role::ControlPlane))
                .map(|(i, _)| i)
                .collect();
            let voters: Vec<u64> = (1..=cps.len() as u64).collect();
            for (k, &node) in cps.iter().enumerate() {
                let storage =
                    MemStorage::new_with_conf_state(ConfState::from((voters.clone(), vec![])));
                members.push(Member {
                    name: topo.nodes[node].name.clone(),
                    node,
                    id: k as u64 + 1,
                    raw: None,
                    storage,
                    lost: false,
                    last_role: (0, StateRole::Follower),
                });
            }
        }
        Etcd {
            members,
            leaders_by_term: BTreeMap::new(),
            had_quorum: false,
            ticking: false,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        }
    }

    /// Member index of a node.
    pub fn member_of(&self, node: usize) -> Option<usize> {
        self.members.iter().position(|m| m.node == node)
    }
}

impl World {
    /// Start the etcd member of `node` (from its persisted storage).
    pub(crate) fn etcd_start(&mut self, node: usize) {
        let Some(i) = self.etcd.member_of(node) else {
            return;
        };
        let m = &mut self.etcd.members[i];
        if m.lost || m.raw.is_some() {
            return;
        }
        let mut cfg = raft_config(m.id);
        cfg.applied = Storage::initial_state(&m.storage)
            .map(|s| s.hard_state.commit)
            .unwrap_or(0)
            .min(Storage::last_index(&m.storage).unwrap_or(0));
        match RawNode::new(&cfg, m.storage.clone(), &self.etcd.logger) {
            Ok(raw) => m.raw = Some(raw),
            Err(e) => {
                self.violation_pending = Some((
                    "etcd-start".into(),
                    format!("etcd member {} failed to start: {e}", m.name),
                ));
                return;
            }
        }
        self.etcd_randomize(i);
        if !self.etcd.ticking {
            self.etcd.ticking = true;
            let at = self.now + ETCD_HEARTBEAT_US;
            self.schedule(at, Event::EtcdTick);
        }
        self.etcd_quorum_update();
    }

    /// Stop the etcd member of `node` (its storage survives).
    pub(crate) fn etcd_stop(&mut self, node: usize) {
        let Some(i) = self.etcd.member_of(node) else {
            return;
        };
        self.etcd.members[i].raw = None;
        self.etcd_quorum_update();
    }

    /// The member's data directory is gone.
    pub(crate) fn etcd_lose(&mut self, node: usize) {
        let Some(i) = self.etcd.member_of(node) else {
            return;
        };
        let m = &mut self.etcd.members[i];
        m.raw = None;
        m.lost = true;
        m.storage = MemStorage::new();
        self.etcd_quorum_update();
    }

    fn etcd_randomize(&mut self, i: usize) {
        let t = self
            .rng
            .random_range(ETCD_ELECTION_TICKS..2 * ETCD_ELECTION_TICKS);
        if let Some(raw) = self.etcd.members[i].raw.as_mut() {
            raw.raft.set_randomized_election_timeout(t);
        }
    }

    pub(crate) fn etcd_tick(&mut self) {
        let mut any = false;
        for i in 0..self.etcd.members.len() {
            if let Some(raw) = self.etcd.members[i].raw.as_mut() {
                any = true;
                raw.tick();
                self.etcd_after_step(i);
            }
        }
        if any {
            let at = self.now + ETCD_HEARTBEAT_US;
            self.schedule(at, Event::EtcdTick);
        } else {
            self.etcd.ticking = false;
        }
    }

    pub(crate) fn etcd_deliver(&mut self, to: usize, msg: Message) {
        let Some(raw) = self.etcd.members.get_mut(to).and_then(|m| m.raw.as_mut()) else {
            return;
        };
        // a step error is a message Raft rejects (e.g. from an unknown peer): drop it, as etcd does.
        let _ = raw.step(msg);
        self.etcd_after_step(to);
    }

    fn etcd_after_step(&mut self, i: usize) {
        self.etcd_handle_ready(i);
        let (term, role, id) = match self.etcd.members[i].raw.as_ref() {
            Some(r) => (r.raft.term, r.raft.state, r.raft.id),
            None => return,
        };
        if (term, role) != self.etcd.members[i].last_role {
            self.etcd.members[i].last_role = (term, role);
            self.etcd_randomize(i);
            if role == StateRole::Leader {
                match self.etcd.leaders_by_term.get(&term) {
                    Some(&other) if other != id => {
                        self.violation_pending = Some((
                            "etcd-one-leader-per-term".into(),
                            format!("members {other} and {id} both became leader in term {term}"),
                        ));
                    }
                    _ => {
                        self.etcd.leaders_by_term.insert(term, id);
                    }
                }
                let member = self.etcd.members[i].name.clone();
                self.emit(TraceEvent::EtcdLeader { member, term });
            }
            self.etcd_quorum_update();
        }
    }

    fn etcd_handle_ready(&mut self, i: usize) {
        let from_node = self.etcd.members[i].node;
        let m = &mut self.etcd.members[i];
        let Some(raw) = m.raw.as_mut() else { return };
        if !raw.has_ready() {
            return;
        }
        let mut rd = raw.ready();
        let mut out: Vec<Message> = rd.take_messages();
        if !rd.snapshot().is_empty() {
            let _ = m.storage.wl().apply_snapshot(rd.snapshot().clone());
        }
        let _ = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            let _ = m.storage.wl().append(rd.entries());
        }
        if let Some(hs) = rd.hs() {
            m.storage.wl().set_hardstate(hs.clone());
        }
        out.extend(rd.take_persisted_messages());
        let mut light = raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            m.storage.wl().mut_hard_state().set_commit(commit);
        }
        out.extend(light.take_messages());
        let _ = light.take_committed_entries();
        raw.advance_apply();
        for msg in out {
            let Some(to) = self.etcd.members.iter().position(|x| x.id == msg.to) else {
                continue;
            };
            let to_node = self.etcd.members[to].node;
            let bytes = RAFT_MESSAGE_OVERHEAD_BYTES
                + msg
                    .entries
                    .iter()
                    .map(|e| e.data.len() as u64 + 24)
                    .sum::<u64>();
            if let Some(d) = self.net.delay(&mut self.rng, from_node, to_node, bytes) {
                let at = self.now + d;
                self.schedule(
                    at,
                    Event::EtcdDeliver {
                        to,
                        msg: Box::new(msg),
                    },
                );
            }
        }
    }

    /// Index of the member that leads with a reachable majority.
    pub(crate) fn etcd_leader_idx(&self) -> Option<usize> {
        let n = self.etcd.members.len();
        let mut best: Option<(u64, usize)> = None;
        for (i, m) in self.etcd.members.iter().enumerate() {
            let Some(raw) = m.raw.as_ref() else { continue };
            if raw.raft.state != StateRole::Leader || !self.node_powered(m.node) {
                continue;
            }
            let reach = self
                .etcd
                .members
                .iter()
                .filter(|o| {
                    o.raw.is_some()
                        && self.node_powered(o.node)
                        && self.net.reachable(m.node, o.node)
                })
                .count();
            if reach > n / 2 && best.is_none_or(|(t, _)| raw.raft.term > t) {
                best = Some((raw.raft.term, i));
            }
        }
        best.map(|(_, i)| i)
    }

    pub(crate) fn etcd_quorum_update(&mut self) {
        if self.etcd.members.is_empty() {
            return;
        }
        let q = self.etcd_leader_idx().is_some();
        if q != self.etcd.had_quorum {
            self.etcd.had_quorum = q;
            self.emit(TraceEvent::EtcdQuorum { available: q });
            self.api_update();
        }
    }

    /// etcd status for assertions.
    pub fn etcd_status(&self) -> EtcdStatus {
        let members: Vec<MemberStatus> = self
            .etcd
            .members
            .iter()
            .map(|m| {
                let (role, term, leader_id, commit) = match m.raw.as_ref() {
                    Some(r) => (
                        Some(format!("{:?}", r.raft.state)),
                        r.raft.term,
                        r.raft.leader_id,
                        r.raft.raft_log.committed,
                    ),
                    None => {
                        let hs = Storage::initial_state(&m.storage)
                            .map(|s| s.hard_state)
                            .unwrap_or_default();
                        (None, hs.term, 0, hs.commit)
                    }
                };
                MemberStatus {
                    name: m.name.clone(),
                    running: m.raw.is_some(),
                    lost: m.lost,
                    role,
                    term,
                    leader_id,
                    commit,
                }
            })
            .collect();
        let leader = self
            .etcd_leader_idx()
            .map(|i| self.etcd.members[i].name.clone());
        let term = members
            .iter()
            .filter(|m| m.running)
            .map(|m| m.term)
            .max()
            .unwrap_or(0);
        EtcdStatus {
            quorum: leader.is_some(),
            leader,
            term,
            members,
        }
    }

    /// Whether the member on `node` runs and reaches the quorum leader.
    pub(crate) fn etcd_member_serving(&self, node: usize) -> bool {
        let Some(i) = self.etcd.member_of(node) else {
            return false;
        };
        let Some(l) = self.etcd_leader_idx() else {
            return false;
        };
        self.etcd.members[i].raw.is_some() && self.net.reachable(node, self.etcd.members[l].node)
    }
}

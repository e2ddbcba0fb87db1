//! Real etcd on the `local` backend: one member (Debian `etcd-server`, `cargo xtask setup local`)
//! per control-plane node of the case's topology when its datastore is etcd (3 for
//! `mlworkbench-kvm`, 1 for a single-control-plane topology; a K3s sqlite topology has none and
//! its etcd steps are skipped with the reason the sim gives).
//!
//! - **Members** are named after their nodes and listen on free ports of 127.0.0.1 (one client
//!   and one peer port each); data dirs live in the case's temp dir; each logs through the
//!   [`Supervisor`] to `etcd-<node>.log` and is ended by PID with the session. Heartbeat and
//!   election timeouts are the simulator's (see [`HEARTBEAT_MS`]), pre-vote is on as in the
//!   simulator's Raft.
//! - **When**: the cluster is started with the session, and the session waits for a leader, only
//!   if the case touches etcd or nodes (an `etcd.quorum` assertion, a `cluster`/`node` wait,
//!   `kill_node`, `restore_node`, `etcd_member_loss`, `kill_process`/`restore_process` of
//!   `etcd`). An FL-only case on an etcd topology reads nothing from etcd: three members would
//!   cost their stand-up time and share the two cores with the FL workers whose round times the
//!   case measures.
//! - **Talking to etcd**: its HTTP/JSON gRPC gateway on the client port (`/v3/maintenance/status`,
//!   `/v3/kv/put`, `/v3/kv/range`) with the harness's tiny HTTP client; no etcd client library.
//! - **Faults**: `kill_node` SIGKILLs the node's group of processes: its etcd member (the local
//!   backend places no FL process on a topology node: the FL processes are `coordinator` and
//!   `client-N`); `restore_node` starts it again with the same flags and data dir, so it
//!   rejoins from its WAL; `kill_process`/`restore_process` with `process: etcd` do the same to
//!   the member alone; `etcd_member_loss` SIGKILLs the member and deletes its data dir: it
//!   stays out of the cluster (as on the sim, a restore does not bring it back). The scenario
//!   format has no hung-node fault, so nothing here sends SIGSTOP to etcd.
//! - **Peer network**: every member's advertised peer URL (`--initial-advertise-peer-urls`,
//!   `--initial-cluster`) is a [`Proxy`] in front of its real peer listener, all on 127.0.0.1.
//!   The proxy of member j sees the connections of every other member; it tells them apart by
//!   the first request head of each ([`rafthttp_sender`]: etcd 3.4 names the sender in
//!   `X-Server-From` on every stream dial and pipeline/snapshot post) and keys its rules by the
//!   sender's member id. A member's stream readers dial their peers and get the peer's
//!   messages back on the same connection, so the link i <-> j is exactly i's connections to
//!   j's proxy and j's to i's: `partition` cuts both (bytes held, new connections held, as
//!   with an iptables DROP), `link` sets latency/loss/bandwidth on both (per direction, as for
//!   the FL links), between node names or network groups (`group:`) of the topology, every
//!   pair of members across the two sets as the sim's `Network::partition`; nodes without a
//!   member run nothing here. `heal_partition: {}` clears every cut and link fault (the sim's
//!   heal); with `a`/`b` it uncuts those pairs only. Requests that name no sender
//!   (`/raft/probing`, `/version`) carry no Raft message and follow the proxy-wide rules,
//!   which stay clean. The harness's client requests go to the client ports directly and are
//!   never cut: `etcd.quorum` and the waits observe the cluster from outside, as the sim's
//!   quorum state does. When a partition leaves the leader without a majority, the election
//!   watch (below) polls the members cut from it.
//! - **Disk full**: a member whose node has a `disk_full` in the case gets its data dir on a
//!   tmpfs of its own ([`Tmpfs`], mode 0700 as etcd wants), mounted before it starts;
//!   `disk_full` fixes it at the bytes it holds. Observed with etcd 3.4.23: small writes still
//!   commit (its WAL segment is preallocated, 64 MB, and its bolt db has free pages); the
//!   first write that needs new space ends the member (`mvcc/backend: cannot commit tx (write
//!   .../db: no space left on device)`, a fatal log line). etcd's NOSPACE alarm is its
//!   backend quota, not a full disk, so none is raised. `etcd.quorum` reports, for each member
//!   under a fault (cut off, disk full), whether it runs (else its exit code and last log
//!   line) and whether a put + range through it commits. Without `CAP_SYS_ADMIN` the mount
//!   fails and `disk_full` of that node is skipped with the reason.
//! - **Assertions and waits**: `etcd.quorum` is a linearizable put then range of one key through
//!   a running member, bounded by [`QUORUM_PROBE_MS`] per member: true when one member commits
//!   it (the detail names it), false when none does. `wait: {node: X, condition: Ready}` holds
//!   when X's member runs, answers, knows the leader and has applied the leader's commit index
//!   (caught up); `wait: {cluster: ready}` when every member not lost does and they agree on a
//!   leader. Other node conditions, pods and workloads stay skipped (no kubelet on local).
//! - **Idle waits**: a `wait: {duration}` (or an `after`/`time` trigger) while no FL process
//!   runs lasts only until etcd is steady (the last member start is [`SETTLE_MS`] old, every
//!   running member answers and they agree on a running leader, or, without a majority
//!   running, no member believes in a leader any more), at most [`STEADY_CAP_MS`]; the rest
//!   of the duration is skipped, said in the step's detail and added to
//!   `local_idle_wait_skipped_ms`. A 15-minute wait would otherwise cost 15
//!   minutes of a CI run while three idle members only exchange heartbeats. With FL processes
//!   running the wait is real, as before.
//! - **Metrics** (the same names on the sim): when a fault kills the leader (or a partition
//!   cuts it from a majority), a thread polls `/v3/maintenance/status` of the surviving (cut
//!   off) members every [`POLL_MS`]:
//!   `etcd_dead_member_detected_ms` is the time from the SIGKILL (the cut) to the first raft term above
//!   the dead leader's (a follower started an election), `etcd_leader_election_ms` to every
//!   answering survivor naming the same new leader, itself among them. Only the first leader
//!   kill of a case is measured into them; a kill of a follower says in its detail that no
//!   election follows. `local_etcd_standup_ms` is the time from spawning the members to a
//!   leader known to all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use simulator::timings::{ETCD_ELECTION_TIMEOUT_US, ETCD_HEARTBEAT_US, MS};
use simulator::topology::{Datastore, Role, Topology};

use super::LocalSession;
use super::host::Tmpfs;
use super::http;
use super::proxy::{self, Proxy, Rules};
use super::supervisor::{self, Spec, Supervisor};
use crate::backend::{Advance, Check, Session, StopCheck};
use crate::load::Case;
use crate::scenario::{Action, Assertion, Fault, FlEndpoint, NodeCondition, Process, Step, Wait};

/// Environment variable naming the `etcd` binary (default: `etcd` on `PATH`).
pub const ETCD_BIN_ENV: &str = "HARNESS_ETCD_BIN";

/// `--heartbeat-interval`: the simulator's etcd tick (`simulator::timings::ETCD_HEARTBEAT_US`),
/// which is etcd's default of 100 ms (etcd docs, "Tuning": "By default, etcd uses a 100ms
/// heartbeat interval"). The simulator uses it for every distribution, so does this backend.
pub const HEARTBEAT_MS: u64 = ETCD_HEARTBEAT_US / MS;
/// `--election-timeout`: the simulator's (`simulator::timings::ETCD_ELECTION_TIMEOUT_US`), etcd's
/// default of 1000 ms (etcd docs, "Tuning": "By default, etcd uses a 1000ms election
/// timeout"); etcd's Raft randomizes it in [1x, 2x), as the simulator does.
pub const ELECTION_MS: u64 = ETCD_ELECTION_TIMEOUT_US / MS;
/// How often the election watch polls the surviving members.
pub const POLL_MS: u64 = 10;
/// How long one `/v3/maintenance/status` may take: a member answers on loopback in about a
/// millisecond; a killed one refuses the connection at once.
const STATUS_TIMEOUT_MS: u64 = 300;
/// Bound of one `etcd.quorum` probe through one member: two election timeouts, long enough
/// for a write to commit through a healthy leader many times over, short against etcd's own
/// request timeout (5 s + 2 election timeouts, `etcd --help`), which a write without quorum
/// would otherwise wait out.
pub const QUORUM_PROBE_MS: u64 = 2 * ELECTION_MS;
/// How long the members may take to elect a first leader after they are spawned (about a
/// second on loopback: one election timeout plus process start; the margin covers a loaded
/// 2-core machine).
const STARTUP_TIMEOUT_MS: u64 = 30_000;
/// A member is steady no sooner than this after its (re)start: etcd's
/// `--initial-election-tick-advance` (default true, `etcd --help`) fast-forwards a booting
/// member's election ticks once its peers connect, which can land after the cluster already
/// has a leader; a leader killed then is noticed a few hundred ms early (seen here: 419 ms
/// against the 1000 ms election timeout). Two election timeouts cover it; a scenario's idle
/// wait stands for a cluster up that long, so its election times are those of a settled cluster.
pub const SETTLE_MS: u64 = 2 * ELECTION_MS;
/// Longest real time an idle `wait: {duration}` waits for etcd to become steady.
pub const STEADY_CAP_MS: u64 = 5_000;
/// How often an idle wait or a node/cluster wait polls.
const WAIT_POLL_MS: u64 = 20;
/// The election watch gives up after this long (an election takes 1-2 election timeouts).
const ELECTION_WATCH_MS: u64 = 30_000;
/// How long a wait that saw a new leader gives the election watch to record it (a few polls).
const WATCH_CATCH_UP_MS: u64 = 20 * POLL_MS;
/// The key `etcd.quorum` writes and reads back.
const PROBE_KEY: &str = "fl-harness/quorum-probe";

/// The etcd binary: `HARNESS_ETCD_BIN`, else `etcd` on `PATH`.
pub fn find_etcd() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(ETCD_BIN_ENV) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{ETCD_BIN_ENV}={} does not name a file",
                path.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|c| c.is_file())
        .ok_or_else(|| {
            format!(
                "no `etcd` on PATH: install it with `cargo xtask setup local` (Debian etcd-server) or set {ETCD_BIN_ENV}"
            )
        })
}

/// What the case's topology and steps ask of etcd.
pub(super) struct Plan {
    topology: String,
    datastore: Datastore,
    /// Control-plane node names: one member each (etcd datastore only).
    members: Vec<String>,
    /// Every node of the topology with its network group (`group:`), for partitions and links.
    nodes: Vec<(String, String)>,
    /// Members the case fills the disk of: their data dir is a tmpfs of its own.
    disk_full: BTreeSet<String>,
    /// The case touches etcd or nodes: start the cluster with the session.
    wanted: bool,
}

impl Plan {
    pub(super) fn of(root: &Path, case: &Case) -> Result<Plan, String> {
        let path = root
            .join("fixtures/topologies")
            .join(format!("{}.yaml", case.topology));
        let topo = Topology::load(&path)
            .map_err(|e| format!("failed to load topology {}: {e}", path.display()))?;
        let members = match topo.datastore {
            Datastore::Etcd => topo
                .nodes
                .iter()
                .filter(|n| n.roles.contains(&Role::ControlPlane))
                .map(|n| n.name.clone())
                .collect(),
            Datastore::Sqlite => Vec::new(),
        };
        let nodes: Vec<(String, String)> = topo
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.group.clone()))
            .collect();
        let names_node = |v: &[String]| {
            v.iter()
                .any(|x| nodes.iter().any(|(n, g)| n == x || g == x))
        };
        let mut disk_full = BTreeSet::new();
        let mut peer_faults = false;
        for f in case
            .steps()
            .chain(case.finally())
            .filter_map(|s| s.fault.as_ref())
        {
            match f {
                Fault::DiskFull { node } if members.contains(node) => {
                    disk_full.insert(node.clone());
                }
                Fault::Partition { a, b }
                | Fault::HealPartition { a, b }
                | Fault::Link { a, b, .. } => peer_faults |= names_node(a) || names_node(b),
                _ => {}
            }
        }
        let wanted = !members.is_empty()
            && (peer_faults
                || !disk_full.is_empty()
                || case.steps().chain(case.finally()).any(touches_etcd));
        Ok(Plan {
            topology: topo.name.clone(),
            datastore: topo.datastore,
            members,
            nodes,
            disk_full,
            wanted,
        })
    }
}

/// Whether a step needs the etcd cluster.
fn touches_etcd(step: &Step) -> bool {
    match step.action() {
        Some(Action::Assert(list)) => list.iter().any(|a| matches!(a, Assertion::EtcdQuorum(_))),
        Some(Action::Wait(w)) => w.cluster.is_some() || w.node.is_some(),
        Some(Action::Fault(f)) => matches!(
            f,
            Fault::KillNode(_)
                | Fault::RestoreNode(_)
                | Fault::EtcdMemberLoss(_)
                | Fault::KillProcess {
                    process: Process::Etcd,
                    ..
                }
                | Fault::RestoreProcess {
                    process: Process::Etcd,
                    ..
                }
        ),
        _ => false,
    }
}

/// One member's `/v3/maintenance/status`.
#[derive(Debug, Clone)]
struct Status {
    member: u64,
    /// The leader this member knows (0: none).
    leader: u64,
    term: u64,
    /// Commit index.
    index: u64,
    applied: u64,
    errors: Vec<String>,
}

/// A uint64 of etcd's gateway JSON (a string, as proto3 JSON writes 64-bit numbers; omitted
/// when 0). The gateway of 3.4 writes camelCase names, `header` fields in snake_case.
fn u64_field(v: &serde_json::Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| v.get(*k))
        .and_then(|x| {
            x.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| x.as_u64())
        })
        .unwrap_or(0)
}

fn status(addr: SocketAddr, timeout_ms: u64) -> Result<Status, String> {
    let (code, body) = http::post_json(
        addr,
        "/v3/maintenance/status",
        b"{}",
        Duration::from_millis(timeout_ms),
    )?;
    if code != 200 {
        return Err(format!(
            "/v3/maintenance/status answered {code}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("failed to parse /v3/maintenance/status: {e}"))?;
    let header = v.get("header").cloned().unwrap_or_default();
    Ok(Status {
        member: u64_field(&header, &["member_id", "memberId"]),
        leader: u64_field(&v, &["leader"]),
        term: u64_field(&v, &["raftTerm", "raft_term"]),
        index: u64_field(&v, &["raftIndex", "raft_index"]),
        applied: u64_field(&v, &["raftAppliedIndex", "raft_applied_index"]),
        errors: v
            .get("errors")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Standard base64 (RFC 4648 with padding), for the gateway's `bytes` fields.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who sent an etcd peer request, from its head: the `X-Server-From` header rafthttp sets on
/// every stream dial, pipeline post and snapshot post (etcd 3.4 `rafthttp/stream.go`
/// `streamReader.dial`, `rafthttp/util.go` `createPostRequest`: the sender's member id as
/// `types.ID.String()`, lowercase hex), else the id at the end of a stream path
/// (`/raft/stream/message/<id>`, `/raft/stream/msgapp/<id>`). `None` for requests that name
/// no sender (`/raft/probing`, `/version`, `/members`): they carry no Raft message.
pub fn rafthttp_sender(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    let mut lines = text[..end].split("\r\n");
    let request = lines.next()?;
    let hex = |v: &str| {
        let v = v.trim();
        (!v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| v.to_ascii_lowercase())
    };
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("x-server-from")
        {
            return hex(v);
        }
    }
    let path = request.split(' ').nth(1)?;
    let rest = path.strip_prefix("/raft/stream/")?;
    hex(rest.rsplit('/').next()?)
}

/// One member.
pub(super) struct Member {
    name: String,
    client: SocketAddr,
    /// Raft member id (from its status at stand-up).
    id: u64,
    data_dir: PathBuf,
    /// Its data dir was deleted (`etcd_member_loss`).
    lost: bool,
}

impl Member {
    fn process(&self) -> String {
        process_name(&self.name)
    }
}

fn process_name(node: &str) -> String {
    format!("etcd-{node}")
}

/// What an election watch saw, in ms since the SIGKILL of the leader.
#[derive(Debug, Clone, Default)]
struct Election {
    detected_ms: Option<u64>,
    elected_ms: Option<u64>,
    leader: Option<String>,
    term: u64,
    gave_up: bool,
    /// The next etcd fault came before the survivors elected a leader.
    interrupted: bool,
}

struct Watch {
    killed: String,
    /// What happened to the leader: `killed` or `partitioned`.
    cause: &'static str,
    seen: Arc<Mutex<Election>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    fn seen(&self) -> Election {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Ends a watch that has not seen the election yet: what follows the next fault is not
    /// this kill's election.
    fn interrupt(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.end();
        let mut e = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if e.elected_ms.is_none() && !e.gave_up {
            e.interrupted = true;
        }
    }
}

/// The etcd cluster of a case.
pub(super) struct Cluster {
    sup: Supervisor,
    members: Vec<Member>,
    /// Spawn to a leader known to every member, in ms.
    standup_ms: u64,
    watches: Vec<Watch>,
    probes: u64,
    /// The last time a member was started (spawn or restart).
    last_start: Instant,
    /// One classifying fault proxy per member, in front of its peer listener: the member's
    /// advertised peer URL (module docs, "Peer network").
    peers: Vec<Proxy>,
    /// Cut member pairs (i < j), for reports and the steady check.
    cut: BTreeSet<(usize, usize)>,
    /// Degraded member pairs (i < j) and their rules, for reports.
    degraded: BTreeMap<(usize, usize), Rules>,
    /// The data volume of members with a `disk_full` in the case (by member index), or why
    /// it could not be mounted. Dropped after the processes (fields drop after `drop`).
    disks: BTreeMap<usize, Result<Tmpfs, String>>,
    /// Members whose volume `disk_full` fixed, with the size it was fixed at.
    full: BTreeMap<usize, u64>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.watches {
            w.end();
        }
        self.sup.kill_all();
    }
}

impl Cluster {
    /// Spawns one member per name and waits until they agree on a leader.
    fn start(
        program: &Path,
        names: &[String],
        data_root: &Path,
        log_dir: &Path,
        disk_full: &BTreeSet<String>,
        seed: u64,
    ) -> Result<Cluster, String> {
        let mut ports = BTreeSet::new();
        let mut next_port = || -> Result<u16, String> {
            for _ in 0..100 {
                let p = supervisor::free_port()
                    .map_err(|e| format!("failed to find a free port on 127.0.0.1: {e}"))?;
                if ports.insert(p) {
                    return Ok(p);
                }
            }
            Err("no distinct free port on 127.0.0.1 after 100 tries".into())
        };
        let mut planned = Vec::new();
        let mut peers = Vec::new();
        for (k, n) in names.iter().enumerate() {
            let client: SocketAddr = ([127, 0, 0, 1], next_port()?).into();
            let peer: SocketAddr = ([127, 0, 0, 1], next_port()?).into();
            let classify: proxy::Classifier = Arc::new(rafthttp_sender);
            let p = Proxy::start_classified(peer, seed ^ (k as u64 + 1), classify)
                .map_err(|e| format!("failed to start the peer proxy of etcd member {n}: {e}"))?;
            planned.push((n.clone(), client, peer, p.addr()));
            peers.push(p);
        }
        let initial: Vec<String> = planned
            .iter()
            .map(|(n, _, _, p)| format!("{n}=http://{p}"))
            .collect();
        let mut disks = BTreeMap::new();
        for (k, (n, ..)) in planned.iter().enumerate() {
            if disk_full.contains(n) {
                // etcd wants its data dir private (0700, `fileutil.PrivateDirMode`).
                let t = Tmpfs::mount_mode(&data_root.join(n), "0700").map_err(|e| {
                    format!(
                        "{n}'s etcd data dir could not get a volume of its own to fill ({e}; needs CAP_SYS_ADMIN)"
                    )
                });
                disks.insert(k, t);
            }
        }
        let token = format!("fl-harness-{}-{}", std::process::id(), planned[0].2.port());
        let mut sup = Supervisor::new(log_dir);
        let mut members = Vec::new();
        let t0 = Instant::now();
        for (name, client, peer, advertised) in &planned {
            let data_dir = data_root.join(name);
            let args: Vec<String> = [
                "--name",
                name,
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen-client-urls",
                &format!("http://{client}"),
                "--advertise-client-urls",
                &format!("http://{client}"),
                "--listen-peer-urls",
                &format!("http://{peer}"),
                // Peers reach this member through its fault proxy (module docs).
                "--initial-advertise-peer-urls",
                &format!("http://{advertised}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
                "--heartbeat-interval",
                &HEARTBEAT_MS.to_string(),
                "--election-timeout",
                &ELECTION_MS.to_string(),
                // etcd's default since 3.5 (3.4 defaults to false) and the simulator's Raft
                // config: a rejoining member cannot disrupt the leader with a higher term.
                "--pre-vote=true",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            sup.start(
                &process_name(name),
                Spec {
                    program: program.to_path_buf(),
                    args,
                },
            )
            .map_err(|e| e.to_string())?;
            members.push(Member {
                name: name.clone(),
                client: *client,
                id: 0,
                data_dir,
                lost: false,
            });
        }
        let mut c = Cluster {
            sup,
            members,
            standup_ms: 0,
            watches: Vec::new(),
            probes: 0,
            last_start: t0,
            peers,
            cut: BTreeSet::new(),
            degraded: BTreeMap::new(),
            disks,
            full: BTreeMap::new(),
        };
        let mut last = String::new();
        while t0.elapsed() < Duration::from_millis(STARTUP_TIMEOUT_MS) {
            for i in 0..c.members.len() {
                let p = c.members[i].process();
                if !c.sup.is_running(&p) {
                    return Err(format!(
                        "etcd member {} exited while the cluster started (code {:?}):\n{}",
                        c.members[i].name,
                        c.sup.exit_code(&p),
                        c.sup.log_tail(&p, 15)
                    ));
                }
            }
            let answers: Vec<Result<Status, String>> = c
                .members
                .iter()
                .map(|m| status(m.client, STATUS_TIMEOUT_MS))
                .collect();
            if answers
                .iter()
                .all(|a| a.as_ref().is_ok_and(|s| s.leader != 0))
            {
                let st: Vec<Status> = answers.into_iter().filter_map(Result::ok).collect();
                if st.iter().all(|s| s.leader == st[0].leader) {
                    for (m, s) in c.members.iter_mut().zip(&st) {
                        m.id = s.member;
                    }
                    c.standup_ms = t0.elapsed().as_millis() as u64;
                    return Ok(c);
                }
                last = "the members do not agree on a leader yet".into();
            } else {
                last = answers
                    .iter()
                    .zip(&c.members)
                    .map(|(a, m)| match a {
                        Ok(s) if s.leader == 0 => format!("{}: no leader yet", m.name),
                        Ok(_) => format!("{}: has a leader", m.name),
                        Err(e) => format!("{}: {e}", m.name),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_MS));
        }
        Err(format!(
            "the etcd cluster ({}) had no leader within {STARTUP_TIMEOUT_MS} ms: {last}; last log lines of {}:\n{}",
            names.join(", "),
            c.members[0].name,
            c.sup.log_tail(&c.members[0].process(), 15)
        ))
    }

    /// Gives running election watches up to `bound` to record an election the cluster already
    /// shows (a watch polls every [`POLL_MS`], a wait may see the new leader first).
    fn await_watches(&self, bound: Duration) {
        let t0 = Instant::now();
        while self.watches.iter().any(|w| {
            w.thread.as_ref().is_some_and(|t| !t.is_finished()) && w.seen().elected_ms.is_none()
        }) && t0.elapsed() < bound
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn interrupt_watches(&mut self) {
        for w in &mut self.watches {
            w.interrupt();
        }
    }

    fn member(&self, node: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == node)
    }

    fn running(&mut self, i: usize) -> bool {
        let p = self.members[i].process();
        self.sup.is_running(&p)
    }

    fn name_of(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("{id:x}"))
    }

    /// Statuses of the running members, by member index.
    fn statuses(&mut self) -> Vec<(usize, Result<Status, String>)> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.running(*i))
            .collect();
        running
            .into_iter()
            .map(|i| (i, status(self.members[i].client, STATUS_TIMEOUT_MS)))
            .collect()
    }

    /// SIGKILLs member `i`; when it led, starts the election watch. Returns the pid and what
    /// the kill means for the cluster.
    fn kill(&mut self, i: usize) -> Result<(u32, String), String> {
        self.interrupt_watches();
        let before = self.statuses();
        let view = before
            .iter()
            .find(|(j, _)| *j == i)
            .and_then(|(_, s)| s.as_ref().ok())
            .or_else(|| before.iter().find_map(|(_, s)| s.as_ref().ok()))
            .cloned();
        let killed = self.members[i].name.clone();
        let id = self.members[i].id;
        let t0 = Instant::now();
        let pid = self
            .sup
            .kill(&self.members[i].process())
            .map_err(|e| e.to_string())?;
        let survivors: Vec<(String, SocketAddr, u64)> = before
            .iter()
            .filter(|(j, _)| *j != i)
            .map(|(j, _)| {
                let m = &self.members[*j];
                (m.name.clone(), m.client, m.id)
            })
            .collect();
        let what = match view {
            None => "no member answered before the kill: no election to measure".to_string(),
            Some(s) if s.leader == 0 => format!(
                "no leader before the kill (term {}): no election to measure",
                s.term
            ),
            Some(s) if s.leader != id => format!(
                "{killed} was a follower (leader {}, term {}): no election follows",
                self.name_of(s.leader),
                s.term
            ),
            Some(_) if survivors.is_empty() => {
                format!("{killed} was the only member: no one is left to elect a leader")
            }
            Some(s) => {
                self.start_watch(i, s.term, t0, survivors, "killed")?;
                format!(
                    "{killed} was the leader (term {}): polling the survivors every {POLL_MS} ms for the election",
                    s.term
                )
            }
        };
        Ok((pid, what))
    }

    /// Starts an election watch on `voters` (name, client address, id) after what befell the
    /// leader `led` at `t0` (`cause`: `killed` or `partitioned`).
    fn start_watch(
        &mut self,
        led: usize,
        term0: u64,
        t0: Instant,
        voters: Vec<(String, SocketAddr, u64)>,
        cause: &'static str,
    ) -> Result<(), String> {
        let killed = self.members[led].name.clone();
        let id = self.members[led].id;
        let seen = Arc::new(Mutex::new(Election::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("etcd-election-after-{killed}"))
            .spawn(move || watch_election(t0, term0, id, &voters, &seen2, &stop2))
            .map_err(|e| format!("failed to start the election watch: {e}"))?;
        self.watches.push(Watch {
            killed,
            cause,
            seen,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// The source name member `i`'s peer connections carry (rafthttp's `X-Server-From`: its
    /// id in hex, `types.ID.String()`).
    fn source(&self, i: usize) -> String {
        format!("{:x}", self.members[i].id)
    }

    /// Changes the link between members `i` and `j` both ways: on `j`'s proxy for the
    /// connections `i` dials and on `i`'s proxy for those `j` dials (a member dials its peers
    /// for its stream readers, and they answer on the same connection, so every byte between
    /// the two passes one of these).
    fn update_link(&self, i: usize, j: usize, f: impl Fn(&mut Rules)) {
        self.peers[j].update_source(&self.source(i), &f);
        self.peers[i].update_source(&self.source(j), &f);
    }

    fn is_cut(&self, i: usize, j: usize) -> bool {
        self.cut.contains(&(i.min(j), i.max(j)))
    }

    fn names_of(&self, idx: impl IntoIterator<Item = usize>) -> String {
        idx.into_iter()
            .map(|i| self.members[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Members `i` reaches over uncut links, itself included.
    fn side_of(&self, i: usize) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&j| !self.is_cut(i, j))
            .collect()
    }

    /// Cuts the peer links `pairs` (i < j); when the leader is left without a majority,
    /// starts the election watch on the members it was cut from. Returns what it means.
    fn partition(&mut self, pairs: &BTreeSet<(usize, usize)>) -> Result<String, String> {
        self.interrupt_watches();
        let before = self.statuses();
        let view = before
            .iter()
            .find_map(|(_, s)| s.as_ref().ok().filter(|s| s.leader != 0))
            .cloned();
        let t0 = Instant::now();
        for &(i, j) in pairs {
            self.update_link(i, j, |r| r.blackhole = true);
            self.degraded.remove(&(i, j));
            self.cut.insert((i, j));
        }
        let n = self.members.len();
        let Some(s) = view else {
            return Ok(
                "no member knew a leader before the partition: no election to measure".into(),
            );
        };
        let Some(l) = self.members.iter().position(|m| m.id == s.leader) else {
            return Ok(format!(
                "the leader {:x} is no member of this cluster",
                s.leader
            ));
        };
        let side = self.side_of(l);
        let leader = self.members[l].name.clone();
        if side.len() * 2 > n {
            return Ok(format!(
                "the leader {leader} keeps a majority ({}, term {}): no election follows",
                self.names_of(side),
                s.term
            ));
        }
        let voters: Vec<(String, SocketAddr, u64)> = before
            .iter()
            .filter(|(j, _)| self.is_cut(l, *j))
            .map(|(j, _)| {
                let m = &self.members[*j];
                (m.name.clone(), m.client, m.id)
            })
            .collect();
        if voters.is_empty() {
            return Ok(format!(
                "the leader {leader} was cut from no running member"
            ));
        }
        let names = voters
            .iter()
            .map(|v| v.0.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        self.start_watch(l, s.term, t0, voters, "partitioned")?;
        Ok(format!(
            "the leader {leader} (term {}) is cut off from a majority (its side: {}): polling {names} every {POLL_MS} ms for the election",
            s.term,
            self.names_of(side)
        ))
    }

    /// Heals the peer links `pairs`, or every cut and degraded link (`None`, as the sim's heal).
    fn heal(&mut self, pairs: Option<&BTreeSet<(usize, usize)>>) {
        self.interrupt_watches();
        match pairs {
            None => {
                for p in &self.peers {
                    p.clear_source_rules();
                }
                self.cut.clear();
                self.degraded.clear();
            }
            Some(pairs) => {
                for &(i, j) in pairs {
                    self.update_link(i, j, |r| r.blackhole = false);
                    self.cut.remove(&(i, j));
                }
            }
        }
    }

    /// Sets latency, loss and bandwidth of the peer links `pairs` (a cut stays cut).
    fn degrade(&mut self, pairs: &BTreeSet<(usize, usize)>, set: &Rules) {
        for &(i, j) in pairs {
            self.update_link(i, j, |r| {
                r.latency_ms = set.latency_ms;
                r.loss_pct = set.loss_pct;
                r.bandwidth_bps = set.bandwidth_bps;
            });
            self.degraded.insert((i, j), set.clone());
        }
    }

    /// Fixes member `i`'s data volume at what it holds; returns the size.
    fn fill(&mut self, i: usize) -> Result<u64, String> {
        let t = match self.disks.get(&i) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(format!(
                    "{}'s etcd data dir has no volume of its own (the case plan had no disk_full for it)",
                    self.members[i].name
                ));
            }
        };
        let size = t.fill()?;
        self.full.insert(i, size);
        Ok(size)
    }

    /// What the members under a fault (cut off, disk full) do now: running or exited (with its
    /// last log line), and whether a put + range through them commits. `skip`: a member just
    /// probed.
    fn fault_notes(&mut self, skip: Option<usize>) -> Vec<String> {
        let mut notes = Vec::new();
        for i in 0..self.members.len() {
            let cut_from: Vec<usize> = (0..self.members.len())
                .filter(|&j| j != i && self.is_cut(i, j))
                .collect();
            let full = self.full.get(&i).copied();
            if cut_from.is_empty() && full.is_none() {
                continue;
            }
            let mut what = Vec::new();
            if !cut_from.is_empty() {
                what.push(format!("cut off from {}", self.names_of(cut_from)));
            }
            if let Some(size) = full {
                what.push(format!("data volume full at {size} bytes"));
            }
            let name = self.members[i].name.clone();
            let p = self.members[i].process();
            let state = if !self.running(i) {
                let tail = self.sup.log_tail(&p, 40);
                let last = tail
                    .lines()
                    .rev()
                    .find(|l| l.contains("no space left"))
                    .or_else(|| tail.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                format!(
                    "its member exited (code {:?}): {last}",
                    self.sup.exit_code(&p)
                )
            } else if Some(i) == skip {
                "a put + range through it committed".to_string()
            } else {
                match self.probe(i, Duration::from_millis(QUORUM_PROBE_MS)) {
                    Ok(t) => format!(
                        "a put + range through it still committed in {} ms",
                        t.as_millis()
                    ),
                    Err(e) => format!("a put + range through it failed: {e}"),
                }
            };
            notes.push(format!("{name} ({}): {state}", what.join(", ")));
        }
        notes
    }

    /// Starts member `i` again with the flags and data dir it last ran with.
    fn restart(&mut self, i: usize) -> Result<u32, String> {
        self.interrupt_watches();
        if self.members[i].lost {
            return Err(format!(
                "etcd member {} lost its data dir (etcd_member_loss): it cannot rejoin with the same identity",
                self.members[i].name
            ));
        }
        let pid = self
            .sup
            .restart(&self.members[i].process())
            .map_err(|e| e.to_string())?;
        self.last_start = Instant::now();
        Ok(pid)
    }

    /// A linearizable put then range of [`PROBE_KEY`] through member `i`, within `budget`.
    fn probe(&mut self, i: usize, budget: Duration) -> Result<Duration, String> {
        self.probes += 1;
        let value = format!("probe-{}", self.probes);
        let key = base64(PROBE_KEY.as_bytes());
        let addr = self.members[i].client;
        let t0 = Instant::now();
        let left = || {
            budget
                .checked_sub(t0.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("no answer within {} ms", budget.as_millis()))
        };
        let timed_out = |e: String| {
            if e.contains("timed out") || e.contains("temporarily unavailable") {
                format!("no answer within {} ms", budget.as_millis())
            } else {
                e
            }
        };
        let put = format!(
            r#"{{"key":"{key}","value":"{}"}}"#,
            base64(value.as_bytes())
        );
        let (code, body) =
            http::post_json(addr, "/v3/kv/put", put.as_bytes(), left()?).map_err(timed_out)?;
        if code != 200 {
            return Err(format!(
                "put answered {code}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        // A range without `serializable` is linearizable: it goes through the leader's ReadIndex.
        let range = format!(r#"{{"key":"{key}"}}"#);
        let (code, body) =
            http::post_json(addr, "/v3/kv/range", range.as_bytes(), left()?).map_err(timed_out)?;
        if code != 200 {
            return Err(format!(
                "range answered {code}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("failed to parse the range answer: {e}"))?;
        let got = v["kvs"][0]["value"].as_str().unwrap_or_default();
        if got != base64(value.as_bytes()) {
            return Err(format!(
                "range read back `{got}`, not the value just put (`{}`)",
                base64(value.as_bytes())
            ));
        }
        Ok(t0.elapsed())
    }

    /// `etcd.quorum`: whether a running member commits a linearizable put + range.
    fn quorum(&mut self) -> (bool, String) {
        let n = self.members.len();
        let running: Vec<usize> = (0..n).filter(|i| self.running(*i)).collect();
        if running.is_empty() {
            return (false, format!("no etcd member runs (0/{n})"));
        }
        let mut failures = Vec::new();
        for &i in &running {
            match self.probe(i, Duration::from_millis(QUORUM_PROBE_MS)) {
                Ok(took) => {
                    let st = status(self.members[i].client, STATUS_TIMEOUT_MS).ok();
                    let notes = self.fault_notes(Some(i));
                    return (
                        true,
                        format!(
                            "a linearizable put + range through {} ({}) committed in {} ms; leader {}, term {}; {}/{n} members running",
                            self.members[i].name,
                            self.members[i].client,
                            took.as_millis(),
                            st.as_ref().map_or("?".into(), |s| self.name_of(s.leader)),
                            st.as_ref().map_or(0, |s| s.term),
                            running.len()
                        ) + &under_faults(&notes),
                    );
                }
                Err(e) => failures.push(format!("{}: {e}", self.members[i].name)),
            }
        }
        let notes = self.fault_notes(None);
        (
            false,
            format!(
                "no running member committed a linearizable put + range within {QUORUM_PROBE_MS} ms ({}); {}/{n} members running",
                failures.join("; "),
                running.len()
            ) + &under_faults(&notes),
        )
    }

    /// `Ok(detail)` when member `i` runs, knows a leader and has applied the leader's commit
    /// index; `Err(state)` otherwise.
    fn caught_up(&mut self, i: usize) -> Result<String, String> {
        let name = self.members[i].name.clone();
        let p = self.members[i].process();
        let Some(pid) = self.sup.pid(&p) else {
            return Err(format!("{name}'s etcd member is not running"));
        };
        let s = status(self.members[i].client, STATUS_TIMEOUT_MS)
            .map_err(|e| format!("{name}'s etcd member (pid {pid}) does not answer yet: {e}"))?;
        if !s.errors.is_empty() {
            return Err(format!(
                "{name}'s etcd member reports errors: {}",
                s.errors.join(", ")
            ));
        }
        if s.leader == 0 {
            return Err(format!(
                "{name}'s etcd member (pid {pid}) knows no leader (term {})",
                s.term
            ));
        }
        let leader = self
            .members
            .iter()
            .position(|m| m.id == s.leader)
            .ok_or_else(|| format!("{name} names an unknown leader {:x}", s.leader))?;
        let ls = if leader == i {
            s.clone()
        } else {
            status(self.members[leader].client, STATUS_TIMEOUT_MS).map_err(|e| {
                format!(
                    "{name} follows {}, which does not answer: {e}",
                    self.members[leader].name
                )
            })?
        };
        if ls.leader != s.leader {
            return Err(format!(
                "{name} follows {}, which follows {}",
                self.members[leader].name,
                self.name_of(ls.leader)
            ));
        }
        if s.applied < ls.index {
            return Err(format!(
                "{name}'s etcd member is catching up: applied index {} < the leader's commit index {}",
                s.applied, ls.index
            ));
        }
        Ok(format!(
            "{name}'s etcd member (pid {pid}) runs, is healthy and caught up: leader {}, term {}, applied index {} >= the leader's commit index {}",
            self.members[leader].name, s.term, s.applied, ls.index
        ))
    }

    /// `wait: {cluster: ready}`: every member not lost caught up with one leader.
    fn ready(&mut self) -> Result<String, String> {
        let mut details = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].lost {
                return Err(format!(
                    "{} lost its data dir (etcd_member_loss) and cannot rejoin",
                    self.members[i].name
                ));
            }
            self.caught_up(i)?;
            details.push(self.members[i].name.clone());
        }
        let s = status(self.members[0].client, STATUS_TIMEOUT_MS)?;
        Ok(format!(
            "all {} etcd members ({}) healthy and caught up, leader {}, term {}",
            details.len(),
            details.join(", "),
            self.name_of(s.leader),
            s.term
        ))
    }

    /// Whether nothing is about to change: every running member answers and they agree on a
    /// running leader; or, without a majority running, none believes in a leader any more.
    fn steady(&mut self) -> (bool, String) {
        let up = self.last_start.elapsed().as_millis() as u64;
        if up < SETTLE_MS {
            return (
                false,
                format!(
                    "the last member started {up} ms ago, less than the {SETTLE_MS} ms a boot takes to settle"
                ),
            );
        }
        let n = self.members.len();
        let st = self.statuses();
        if st.is_empty() {
            return (true, format!("no etcd member runs (0/{n})"));
        }
        let ok: Vec<(usize, Status)> = st
            .iter()
            .filter_map(|(i, s)| s.as_ref().ok().map(|s| (*i, s.clone())))
            .collect();
        if ok.len() < st.len() {
            return (false, "a running member does not answer".into());
        }
        // Under a partition, a member whose side holds no majority steadies once it believes
        // in no leader (pre-vote keeps it from campaigning); the others must agree as below.
        type Answers = Vec<(usize, Status)>;
        let (cut_off, ok): (Answers, Answers) = ok
            .into_iter()
            .partition(|(i, _)| !self.cut.is_empty() && self.side_of(*i).len() * 2 <= n);
        if let Some((i, _)) = cut_off.iter().find(|(_, s)| s.leader != 0) {
            return (
                false,
                format!(
                    "{} is cut off from a majority and still believes in a leader",
                    self.members[*i].name
                ),
            );
        }
        if ok.is_empty() {
            return (
                true,
                "every running member is cut off from a majority and knows no leader".into(),
            );
        }
        if st.len() * 2 <= n {
            let leaderless = ok.iter().all(|(_, s)| s.leader == 0);
            return (
                leaderless,
                format!(
                    "{}/{n} members running, no majority{}",
                    st.len(),
                    if leaderless {
                        ", none believes in a leader"
                    } else {
                        ", a member still believes in the old leader"
                    }
                ),
            );
        }
        let l = ok[0].1.leader;
        let leader_runs = ok.iter().any(|(i, _)| self.members[*i].id == l);
        let agree = l != 0 && leader_runs && ok.iter().all(|(_, s)| s.leader == l);
        (
            agree,
            if agree {
                format!(
                    "leader {} known to {}/{} running members, term {}",
                    self.name_of(l),
                    ok.len(),
                    ok.len(),
                    ok[0].1.term
                )
            } else {
                "the running members do not agree on a running leader".into()
            },
        )
    }

    /// The first leader kill's (or partition's) election, measured: the leader and what befell it.
    fn first_election(&self) -> Option<(String, Election)> {
        self.watches
            .first()
            .map(|w| (format!("{} was {}", w.killed, w.cause), w.seen()))
    }
}

fn under_faults(notes: &[String]) -> String {
    if notes.is_empty() {
        String::new()
    } else {
        format!("; under faults: {}", notes.join("; "))
    }
}

/// Polls the survivors of a leader kill every [`POLL_MS`] until they name one new leader.
fn watch_election(
    t0: Instant,
    term0: u64,
    dead: u64,
    survivors: &[(String, SocketAddr, u64)],
    seen: &Mutex<Election>,
    stop: &AtomicBool,
) {
    let rounds = ELECTION_WATCH_MS / POLL_MS;
    for _ in 0..rounds {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let answers: Vec<(&str, u64, Status)> = survivors
            .iter()
            .filter_map(|(n, a, id)| {
                status(*a, STATUS_TIMEOUT_MS)
                    .ok()
                    .map(|s| (n.as_str(), *id, s))
            })
            .collect();
        let at = t0.elapsed().as_millis() as u64;
        {
            let mut e = seen.lock().unwrap_or_else(|e| e.into_inner());
            if e.detected_ms.is_none() && answers.iter().any(|(_, _, s)| s.term > term0) {
                e.detected_ms = Some(at);
            }
            if let Some((_, _, first)) = answers.first() {
                let l = first.leader;
                let known = l != 0
                    && l != dead
                    && answers
                        .iter()
                        .all(|(_, _, s)| s.leader == l && s.term > term0);
                if let Some((name, _, s)) = answers.iter().find(|(_, id, _)| *id == l)
                    && known
                {
                    e.elected_ms = Some(at);
                    e.leader = Some(name.to_string());
                    e.term = s.term;
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    seen.lock().unwrap_or_else(|e| e.into_inner()).gave_up = true;
}

impl LocalSession {
    /// Starts the case's etcd cluster if its plan wants one; waits for a leader.
    pub(super) fn etcd_start(&mut self) -> Result<(), String> {
        if !self.etcd_plan.wanted {
            return Ok(());
        }
        let program = find_etcd()?;
        let data = self.dir.path().join("etcd");
        let c = Cluster::start(
            &program,
            &self.etcd_plan.members,
            &data,
            self.sup.log_dir(),
            &self.etcd_plan.disk_full,
            self.seed,
        )?;
        let names: Vec<String> = c.members.iter().map(Member::process).collect();
        self.etcd = Some(c);
        for n in names {
            self.track(&n, "running");
        }
        Ok(())
    }

    /// PIDs of the running etcd members, by process name.
    pub(super) fn etcd_pids(&mut self) -> Vec<(String, u32)> {
        self.etcd
            .as_mut()
            .map(|c| c.sup.pids().into_iter().collect())
            .unwrap_or_default()
    }

    /// Log files of the etcd members.
    pub(super) fn etcd_logs(&self) -> Vec<(String, PathBuf, u32)> {
        self.etcd.as_ref().map(|c| c.sup.logs()).unwrap_or_default()
    }

    fn sqlite_reason(&self) -> Option<String> {
        (self.etcd_plan.datastore == Datastore::Sqlite).then(|| {
            format!(
                "topology {} keeps its state in sqlite (K3s)",
                self.etcd_plan.topology
            )
        })
    }

    fn no_member(&self, node: &str) -> Option<String> {
        if self.etcd_plan.members.iter().any(|m| m == node) {
            return None;
        }
        Some(match self.sqlite_reason() {
            Some(r) => format!(
                "{r}: the local backend runs no process of node `{node}` (no kubelet or K3s server on local)"
            ),
            None => format!(
                "the local backend runs no process of node `{node}`: it runs the etcd members of the control-plane nodes ({}) only, no kubelet",
                self.etcd_plan.members.join(", ")
            ),
        })
    }

    /// Why an etcd or node step cannot run on this case; `None` for other steps.
    pub(super) fn etcd_unsupported(&self, step: &Step) -> Option<String> {
        if let Some(w) = &step.wait {
            if w.cluster.is_some() {
                return self
                    .sqlite_reason()
                    .map(|r| format!("{r}: no etcd to wait for, and no kubelet runs on local"));
            }
            if let Some(node) = &w.node {
                if let Some(r) = self.no_member(node) {
                    return Some(r);
                }
                let c = w.condition.unwrap_or(NodeCondition::Ready);
                if c != NodeCondition::Ready {
                    return Some(format!(
                        "no kubelet runs on local, so a node's {c:?} condition is not observable; only `Ready` (its etcd member healthy and caught up) is"
                    ));
                }
            }
            return None;
        }
        match step.fault.as_ref()? {
            Fault::KillNode(n) | Fault::RestoreNode(n) => self.no_member(n),
            Fault::EtcdMemberLoss(n) => match self.sqlite_reason() {
                Some(_) => Some(format!(
                    "topology {} keeps its state in sqlite (K3s), it has no etcd member to lose",
                    self.etcd_plan.topology
                )),
                None => self.no_member(n),
            },
            Fault::KillProcess {
                node,
                process: Process::Etcd,
            }
            | Fault::RestoreProcess {
                node,
                process: Process::Etcd,
            } => self.no_member(node),
            _ => None,
        }
    }

    /// Why an etcd assertion cannot be checked on this case.
    pub(super) fn etcd_unsupported_assertion(&self, a: &Assertion) -> Option<String> {
        match a {
            Assertion::EtcdQuorum(_) => self
                .sqlite_reason()
                .map(|r| format!("{r}: there is no etcd quorum to check")),
            _ => None,
        }
    }

    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.etcd
            .as_mut()
            .ok_or_else(|| "the etcd cluster of this case was not started".to_string())
    }

    fn member_index(&mut self, node: &str) -> Result<usize, String> {
        let c = self.cluster()?;
        c.member(node).ok_or_else(|| {
            format!(
                "node `{node}` has no etcd member (members: {})",
                c.members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    fn etcd_kill(&mut self, node: &str, kind: &str) -> Result<String, String> {
        let i = self.member_index(node)?;
        let c = self.cluster()?;
        if !c.running(i) {
            return Err(format!("{node}'s etcd member is not running"));
        }
        let (pid, what) = c.kill(i)?;
        let p = c.members[i].process();
        self.track(&p, "killed");
        Ok(format!("{kind}: SIGKILL {p} (pid {pid}); {what}"))
    }

    fn etcd_restore(&mut self, node: &str, kind: &str) -> Result<String, String> {
        let i = self.member_index(node)?;
        let c = self.cluster()?;
        if c.members[i].lost {
            return Ok(format!(
                "{kind}: {node}'s etcd member lost its data dir (etcd_member_loss) and stays out of the cluster, as on the sim; nothing else of {node} runs on local"
            ));
        }
        let pid = c.restart(i)?;
        let p = c.members[i].process();
        self.track(&p, "running");
        Ok(format!(
            "{kind}: {p} started again with the same flags and data dir (pid {pid}); it rejoins from its WAL"
        ))
    }

    /// Injects an etcd or node fault; `None` for faults that are not.
    pub(super) fn etcd_inject(&mut self, fault: &Fault) -> Option<Result<String, String>> {
        let r = match fault {
            Fault::KillNode(n) => self.etcd_kill(n, "kill_node"),
            Fault::RestoreNode(n) => self.etcd_restore(n, "restore_node"),
            Fault::KillProcess {
                node,
                process: Process::Etcd,
            } => self.etcd_kill(node, "kill_process"),
            Fault::RestoreProcess {
                node,
                process: Process::Etcd,
            } => self.etcd_restore(node, "restore_process"),
            Fault::EtcdMemberLoss(n) => self.etcd_member_loss(n),
            _ => return None,
        };
        if let Ok(text) = &r {
            self.mark(text.clone());
        }
        Some(r)
    }

    fn etcd_member_loss(&mut self, node: &str) -> Result<String, String> {
        let i = self.member_index(node)?;
        let c = self.cluster()?;
        let what = if c.running(i) {
            let (pid, what) = c.kill(i)?;
            format!("SIGKILL (pid {pid}); {what}; ")
        } else {
            String::new()
        };
        let dir = c.members[i].data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                format!("failed to delete {node}'s data dir {}: {e}", dir.display())
            })?;
        }
        c.members[i].lost = true;
        let p = c.members[i].process();
        self.track(&p, "lost");
        Ok(format!(
            "etcd_member_loss: {p} {what}its data dir deleted; it stays out of the cluster"
        ))
    }

    /// Whether a name is a node or a network group of the case's topology.
    fn topology_name(&self, n: &str) -> bool {
        self.etcd_plan.nodes.iter().any(|(x, g)| x == n || g == n)
    }

    /// Member indices of the nodes and groups named (nodes without a member run nothing here).
    fn members_of(&self, names: &[String]) -> BTreeSet<usize> {
        let nodes: BTreeSet<&str> = self
            .etcd_plan
            .nodes
            .iter()
            .filter(|(x, g)| names.iter().any(|n| n == x || n == g))
            .map(|(x, _)| x.as_str())
            .collect();
        self.etcd_plan
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| nodes.contains(m.as_str()))
            .map(|(i, _)| i)
            .collect()
    }

    /// The member pairs (i < j) between the sets `a` and `b`, as the sim cuts every link
    /// from a node of `a` to a node of `b`.
    fn member_pairs(&self, a: &[String], b: &[String]) -> BTreeSet<(usize, usize)> {
        let (ma, mb) = (self.members_of(a), self.members_of(b));
        let mut out = BTreeSet::new();
        for &i in &ma {
            for &j in &mb {
                if i != j {
                    out.insert((i.min(j), i.max(j)));
                }
            }
        }
        out
    }

    /// Where a `partition`, `heal_partition` or `link` acts on local; `None` for other faults.
    pub(super) fn net_target(&self, fault: &Fault) -> Option<NetTarget> {
        let (a, b) = match fault {
            Fault::Partition { a, b }
            | Fault::HealPartition { a, b }
            | Fault::Link { a, b, .. } => (a, b),
            _ => return None,
        };
        if a.is_empty() && b.is_empty() {
            return Some(NetTarget::All);
        }
        let (mut fl, mut topo) = (false, false);
        for n in a.iter().chain(b) {
            if FlEndpoint::parse(n).is_some() {
                fl = true;
            } else if self.topology_name(n) {
                topo = true;
            } else {
                return Some(NetTarget::Unsupported(format!(
                    "`{n}` is neither an FL endpoint (`coordinator`, `fl-clients`, `client-N`) nor a node or network group of topology {}",
                    self.etcd_plan.topology
                )));
            }
        }
        Some(match (fl, topo) {
            (true, false) => NetTarget::Fl,
            (true, true) => NetTarget::Unsupported(format!(
                "[{}] <-> [{}] mixes FL endpoints and topology nodes: on local the FL processes run on no topology node, so no link joins the two",
                a.join(", "),
                b.join(", ")
            )),
            _ => match self.sqlite_reason() {
                Some(r) => NetTarget::Unsupported(format!(
                    "{r}: the local backend runs no process of its nodes, so there is no link between them to cut or degrade"
                )),
                None if self.member_pairs(a, b).is_empty() => NetTarget::Unsupported(format!(
                    "[{}] <-> [{}] holds no link between two etcd members (members: {}); the local backend runs no other process of a node",
                    a.join(", "),
                    b.join(", "),
                    self.etcd_plan.members.join(", ")
                )),
                None => NetTarget::Peers,
            },
        })
    }

    /// A `partition`, `heal_partition` or `link` on the etcd peer links (module docs).
    pub(super) fn etcd_net(&mut self, fault: &Fault) -> Result<String, String> {
        let all = matches!(fault, Fault::HealPartition { a, b } if a.is_empty() && b.is_empty());
        let pairs = match fault {
            Fault::Partition { a, b }
            | Fault::HealPartition { a, b }
            | Fault::Link { a, b, .. } => self.member_pairs(a, b),
            other => return Err(format!("`{}` is not a network fault", other.kind())),
        };
        let c = self.cluster()?;
        let names = |c: &Cluster, pairs: &BTreeSet<(usize, usize)>| {
            pairs
                .iter()
                .map(|&(i, j)| format!("{} <-> {}", c.members[i].name, c.members[j].name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = match fault {
            Fault::Partition { .. } => {
                let what = c.partition(&pairs)?;
                format!(
                    "partition: the peer proxies drop every byte of etcd peer traffic on {} and hold new connections; {what}",
                    names(c, &pairs)
                )
            }
            Fault::HealPartition { .. } if all => {
                let was = names(c, &c.cut.clone());
                c.heal(None);
                if was.is_empty() {
                    "heal_partition: no etcd peer link was cut; link faults between members cleared"
                        .into()
                } else {
                    format!(
                        "heal_partition: etcd peer traffic on {was} flows again (held bytes too); link faults between members cleared"
                    )
                }
            }
            Fault::HealPartition { .. } => {
                c.heal(Some(&pairs));
                format!(
                    "heal_partition: etcd peer traffic on {} flows again",
                    names(c, &pairs)
                )
            }
            Fault::Link {
                latency,
                loss_pct,
                bandwidth_mbps,
                ..
            } => {
                let rules = link_rules(*latency, *loss_pct, *bandwidth_mbps)?;
                c.degrade(&pairs, &rules);
                format!(
                    "link: {} each way on etcd peer traffic {}, by the peer proxies",
                    rules.describe(),
                    names(c, &pairs)
                )
            }
            _ => unreachable!("matched above"),
        };
        let mut states = Vec::new();
        for i in 0..c.members.len() {
            let cut: Vec<usize> = (0..c.members.len())
                .filter(|&j| j != i && c.is_cut(i, j))
                .collect();
            let deg = c
                .degraded
                .iter()
                .filter(|((x, y), _)| *x == i || *y == i)
                .map(|(_, r)| r.describe())
                .next();
            let state = match (cut.is_empty(), deg) {
                (true, None) => "clean".to_string(),
                (false, _) => format!("cut from {}", c.names_of(cut)),
                (true, Some(d)) => d,
            };
            states.push((format!("peer link {}", c.members[i].name), state));
        }
        for (k, v) in states {
            self.track(&k, &v);
        }
        self.mark(text.clone());
        Ok(format!(
            "{text} at {}",
            crate::duration::Duration::from_ms(self.now_ms())
        ))
    }

    /// Why `disk_full` of node `node` cannot run; `None` when it can (or is no member's).
    pub(super) fn etcd_disk_unsupported(&self, node: &str) -> Option<String> {
        if !self.etcd_plan.members.iter().any(|m| m == node) {
            return Some(match self.sqlite_reason() {
                Some(r) => format!(
                    "{r}: the local backend runs no process of node `{node}` to fill the disk of"
                ),
                None => format!(
                    "the local backend fills the coordinator's store or an etcd member's data dir (members: {}); `{node}` is neither",
                    self.etcd_plan.members.join(", ")
                ),
            });
        }
        let c = self.etcd.as_ref()?;
        let i = c.member(node)?;
        match c.disks.get(&i) {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// `disk_full` of a member's node: its data volume is fixed at what it holds.
    pub(super) fn etcd_disk_full(&mut self, node: &str) -> Result<String, String> {
        let i = self.member_index(node)?;
        let c = self.cluster()?;
        let size = c.fill(i)?;
        let p = c.members[i].process();
        let text = format!(
            "disk_full: {node}'s etcd data dir volume is fixed at the {size} bytes it holds; etcd 3.4 writes on into its preallocated WAL segment (64 MB, `wal.SegmentSizeBytes`) and free pages of its bolt db, and exits (`mvcc/backend: cannot commit tx ... no space left on device`) on the first write that needs new space"
        );
        self.track(&p, "disk full");
        self.mark(text.clone());
        Ok(text)
    }

    /// A linearizable put + range through `node`'s member, bounded by [`QUORUM_PROBE_MS`]
    /// (for tests: whether that member can write).
    pub fn etcd_put_through(&mut self, node: &str) -> Result<Duration, String> {
        let i = self.member_index(node)?;
        self.cluster()?
            .probe(i, Duration::from_millis(QUORUM_PROBE_MS))
    }

    /// `etcd.quorum`; `None` for other assertions.
    pub(super) fn etcd_check(&mut self, a: &Assertion) -> Option<Check> {
        let Assertion::EtcdQuorum(want) = a else {
            return None;
        };
        let c = match self.cluster() {
            Ok(c) => c,
            Err(e) => return Some(Check::Fail(e)),
        };
        let (held, detail) = c.quorum();
        if held {
            c.await_watches(Duration::from_millis(WATCH_CATCH_UP_MS));
        }
        let mut d = format!(
            "etcd quorum {}: {detail}",
            if held { "held" } else { "lost" }
        );
        if let Some((killed, e)) = c.first_election() {
            d.push_str(&format!(
                "; after the leader {killed}: {}",
                election_text(&e)
            ));
        }
        Some(Check::verdict(held == *want, d))
    }

    /// `wait: {cluster: ready}` and `wait: {node: X, condition: Ready}`; `None` for other waits.
    pub(super) fn etcd_wait(
        &mut self,
        w: &Wait,
        deadline_ms: u64,
        stop: StopCheck<'_>,
    ) -> Option<Advance> {
        if w.cluster.is_none() && w.node.is_none() {
            return None;
        }
        let node = w.node.clone();
        let i = match &node {
            Some(n) => match self.member_index(n) {
                Ok(i) => Some(i),
                Err(e) => return Some(Advance::Halted(e)),
            },
            None => None,
        };
        if self.etcd.is_none() {
            return Some(Advance::Halted(
                "the etcd cluster of this case was not started".into(),
            ));
        }
        let budget = deadline_ms.saturating_sub(self.now_ms());
        let mut state = String::new();
        for _ in 0..budget / WAIT_POLL_MS + 2 {
            if stop() {
                return Some(Advance::Stopped);
            }
            let c = self.etcd.as_mut()?;
            let r = match i {
                Some(i) => c.caught_up(i),
                None => c.ready(),
            };
            match r {
                Ok(d) => {
                    c.await_watches(Duration::from_millis(WATCH_CATCH_UP_MS));
                    self.wait_note = Some(d);
                    return Some(Advance::Reached);
                }
                Err(s) => state = s,
            }
            if self.now_ms() >= deadline_ms {
                break;
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_MS));
        }
        Some(Advance::DeadlinePassed(state))
    }

    /// An idle `wait: {duration}` or time trigger while etcd runs and no FL process does: waits
    /// only until etcd is steady, at most [`STEADY_CAP_MS`], and skips the rest (module docs).
    /// `None` when it does not apply (no etcd, or FL processes run).
    pub(super) fn etcd_idle_wait(&mut self, until_ms: u64, stop: StopCheck<'_>) -> Option<Advance> {
        self.etcd.as_ref()?;
        if !self.sup.pids().is_empty() {
            return None;
        }
        let remaining = until_ms.saturating_sub(self.now_ms());
        let cap = remaining.min(STEADY_CAP_MS);
        let t0 = Instant::now();
        let (mut steady, mut what) = (false, String::new());
        // Each round sleeps WAIT_POLL_MS at most; the bound is the rounds of `cap` and more.
        for _ in 0..2 * (cap / WAIT_POLL_MS) + 10 {
            if stop() {
                return Some(Advance::Stopped);
            }
            (steady, what) = self.etcd.as_mut()?.steady();
            let real = t0.elapsed().as_millis() as u64;
            if steady || real >= cap {
                break;
            }
            std::thread::sleep(Duration::from_millis(WAIT_POLL_MS.min(cap - real)));
        }
        if steady && let Some(c) = self.etcd.as_ref() {
            c.await_watches(Duration::from_millis(WATCH_CATCH_UP_MS));
        }
        let real = t0.elapsed().as_millis() as u64;
        // Lands the session clock on `until_ms` (the real part already counts in it).
        let skipped = until_ms.saturating_sub(self.now_ms());
        self.idle_skipped_ms += skipped;
        self.wait_note = Some(format!(
            "on local: {real} ms of real time, {} ({what}); the other {skipped} ms skipped (local_idle_wait_skipped_ms)",
            if steady {
                "until etcd was steady"
            } else if cap == remaining {
                "the whole wait"
            } else {
                "the cap for an idle wait, etcd not steady"
            }
        ));
        Some(Advance::Reached)
    }

    /// etcd metrics (names end with their unit; the election ones as on the sim backend).
    pub(super) fn etcd_metrics(&self, m: &mut std::collections::BTreeMap<String, f64>) {
        let Some(c) = self.etcd.as_ref() else {
            return;
        };
        m.insert("local_etcd_standup_ms".into(), c.standup_ms as f64);
        if let Some((_, e)) = c.first_election() {
            if let Some(d) = e.detected_ms {
                m.insert("etcd_dead_member_detected_ms".into(), d as f64);
            }
            if let Some(d) = e.elected_ms {
                m.insert("etcd_leader_election_ms".into(), d as f64);
            }
        }
    }

    /// The node whose etcd member leads now, as the running members see it (for tests).
    pub fn etcd_leader(&mut self) -> Option<String> {
        let c = self.etcd.as_mut()?;
        let st = c.statuses();
        let l = st
            .iter()
            .find_map(|(_, s)| s.as_ref().ok().map(|s| s.leader))?;
        (l != 0).then(|| c.name_of(l))
    }

    /// PIDs of the etcd members by node, running or not (`None` when not running; for tests).
    pub fn etcd_members(&mut self) -> Vec<(String, Option<u32>)> {
        let Some(c) = self.etcd.as_mut() else {
            return Vec::new();
        };
        (0..c.members.len())
            .map(|i| {
                let p = c.members[i].process();
                (c.members[i].name.clone(), c.sup.pid(&p))
            })
            .collect()
    }
}

/// Where a network fault acts on local.
pub(super) enum NetTarget {
    /// Coordinator <-> worker links (FL endpoints only).
    Fl,
    /// etcd peer links (topology nodes and groups only).
    Peers,
    /// `heal_partition: {}`: every link of both kinds.
    All,
    Unsupported(String),
}

/// The proxy rules of a `link` fault, checked.
pub(super) fn link_rules(
    latency: Option<crate::duration::Duration>,
    loss_pct: Option<f64>,
    bandwidth_mbps: Option<u64>,
) -> Result<Rules, String> {
    if let Some(l) = loss_pct
        && !(l.is_finite() && (0.0..=100.0).contains(&l))
    {
        return Err(format!("link loss_pct {l} must be between 0 and 100"));
    }
    if bandwidth_mbps == Some(0) {
        return Err("link bandwidth_mbps must be at least 1 (a cut link is a `partition`)".into());
    }
    Ok(Rules {
        latency_ms: latency.map_or(0, |d| d.as_ms()),
        loss_pct: loss_pct.unwrap_or(0.0),
        bandwidth_bps: bandwidth_mbps.map(|m| m * 1_000_000 / 8),
        blackhole: false,
    })
}

fn election_text(e: &Election) -> String {
    match (e.detected_ms, e.elected_ms, &e.leader) {
        (_, Some(el), Some(l)) => format!(
            "term rose after {} ms, {l} led (term {}) after {el} ms",
            e.detected_ms.unwrap_or(el),
            e.term
        ),
        (Some(d), None, _) if e.interrupted => {
            format!("term rose after {d} ms; the next etcd fault came before a new leader")
        }
        (Some(d), None, _) => format!(
            "term rose after {d} ms, no new leader {}",
            if e.gave_up {
                format!("within {ELECTION_WATCH_MS} ms")
            } else {
                "yet".into()
            }
        ),
        _ if e.interrupted => "the next etcd fault came before any term change".into(),
        _ => format!(
            "no term change {}",
            if e.gave_up {
                format!("within {ELECTION_WATCH_MS} ms (no majority left to elect?)")
            } else {
                "yet".into()
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{base64, rafthttp_sender};

    #[test]
    fn rafthttp_sender_reads_the_header_or_the_stream_path() {
        let post = b"POST /raft HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-Server-From: 8E9E05C52164694D\r\nContent-Type: application/protobuf\r\n\r\n\x01\x02";
        assert_eq!(rafthttp_sender(post).as_deref(), Some("8e9e05c52164694d"));
        let stream = b"GET /raft/stream/msgapp/91bc3c398fb3c146 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(rafthttp_sender(stream).as_deref(), Some("91bc3c398fb3c146"));
        assert_eq!(
            rafthttp_sender(b"GET /raft/probing HTTP/1.1\r\nHost: x\r\n\r\n"),
            None
        );
        assert_eq!(rafthttp_sender(b"GET /version HTTP/1.1\r\n\r\n"), None);
        // A header after the head's end is body, not a header.
        assert_eq!(
            rafthttp_sender(b"GET /members HTTP/1.1\r\n\r\nX-Server-From: 1\r\n"),
            None
        );
        assert_eq!(
            rafthttp_sender(b"POST /raft HTTP/1.1\r\nX-Server-From: zz\r\n\r\n"),
            None
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }
}

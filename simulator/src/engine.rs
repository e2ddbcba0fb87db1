//! The engine: one seed -> one ChaCha stream -> one event queue on a virtual clock.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::Cluster;
use crate::etcd::Etcd;
use crate::fault::{Fault, ScheduledFault};
use crate::net::Network;
use crate::topology::Topology;
use crate::trace::{Trace, TraceEvent};
use crate::{SimOptions, Time};

/// Most events that may be pending at once; scheduling past it is a violation
/// (`queue-bounded`), not an allocation storm.
pub const MAX_PENDING_EVENTS: usize = 4_000_000;

/// Index of a registered extension [`Model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(pub usize);

/// An extension model: FL rounds, GitOps controllers, anything that lives on the event queue
/// without editing the engine. Register it with [`Sim::add_model`].
///
/// A model gets its own events ([`World::wake`] with a `u64` tag, or [`World::send_to_model`]
/// with any payload), sees every core trace event ([`Model::observe`]), may emit its own trace
/// events ([`World::trace_ext`]) and contributes invariants ([`Model::check`]) that the engine
/// runs after every event that touched it or changed the cluster.
pub trait Model: Any {
    /// Short name, used in trace events and violations.
    fn name(&self) -> &'static str;
    /// Called once when registered: schedule the first events here.
    fn start(&mut self, _world: &mut World, _me: ModelId) {}
    /// A [`World::wake`] for this model fired.
    fn on_wake(&mut self, _world: &mut World, _me: ModelId, _tag: u64) {}
    /// A [`World::send_to_model`] payload arrived.
    fn on_message(&mut self, _world: &mut World, _me: ModelId, _payload: Box<dyn Any>) {}
    /// A core trace event happened (node died, pod became ready, leader changed...).
    fn observe(&mut self, _world: &mut World, _me: ModelId, _event: &TraceEvent) {}
    /// Invariants; `Err((invariant, message))` stops the run.
    fn check(&self, _world: &World) -> Result<(), (String, String)> {
        Ok(())
    }
    /// Lines for the run summary.
    fn summary(&self, _world: &World) -> Vec<String> {
        Vec::new()
    }
    /// For [`Sim::model`] downcasts.
    fn as_any(&self) -> &dyn Any;
    /// For [`Sim::model_mut`] downcasts.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A core event on the queue.
pub(crate) enum Event {
    /// A VM finished booting.
    BootDone { node: usize, epoch: u64 },
    /// A kubelet lease renewal attempt.
    LeaseRenew { node: usize, epoch: u64 },
    /// A restarted server process (K3s) finished starting.
    ServerStarted { node: usize, restart: u64 },
    /// The node lifecycle controller's periodic pass.
    NodeMonitor,
    /// One Raft tick for every running etcd member.
    EtcdTick,
    /// A Raft message arrives.
    EtcdDeliver {
        to: usize,
        msg: Box<raft::eraftpb::Message>,
    },
    /// Controllers + scheduler pass.
    Reconcile,
    /// A pod's containers started.
    PodStarted { uid: u64, incarnation: u64 },
    /// A pod's readiness probe passed.
    PodReady { uid: u64, incarnation: u64 },
    /// A terminating pod's grace period ended.
    PodGone { uid: u64 },
    /// A fault.
    Fault(Fault),
    /// An extension model's timer.
    Wake { model: usize, tag: u64 },
    /// An extension model's message.
    Message { model: usize, payload: Box<dyn Any> },
}

/// A copyable summary of an event, formatted only when a violation names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EventTag {
    BootDone(usize),
    LeaseRenew(usize),
    ServerStarted(usize),
    NodeMonitor,
    EtcdTick,
    EtcdDeliver { msg_type: i32, from: u64, to: usize },
    Reconcile,
    PodStarted(u64),
    PodReady(u64),
    PodGone(u64),
    Fault,
    Wake { model: usize, tag: u64 },
    Message(usize),
    Inject,
}

impl Event {
    fn tag(&self) -> EventTag {
        match self {
            Event::BootDone { node, .. } => EventTag::BootDone(*node),
            Event::LeaseRenew { node, .. } => EventTag::LeaseRenew(*node),
            Event::ServerStarted { node, .. } => EventTag::ServerStarted(*node),
            Event::NodeMonitor => EventTag::NodeMonitor,
            Event::EtcdTick => EventTag::EtcdTick,
            Event::EtcdDeliver { to, msg } => EventTag::EtcdDeliver {
                msg_type: msg.get_msg_type() as i32,
                from: msg.from,
                to: *to,
            },
            Event::Reconcile => EventTag::Reconcile,
            Event::PodStarted { uid, .. } => EventTag::PodStarted(*uid),
            Event::PodReady { uid, .. } => EventTag::PodReady(*uid),
            Event::PodGone { uid } => EventTag::PodGone(*uid),
            Event::Fault(_) => EventTag::Fault,
            Event::Wake { model, tag } => EventTag::Wake {
                model: *model,
                tag: *tag,
            },
            Event::Message { model, .. } => EventTag::Message(*model),
        }
    }
}

impl std::fmt::Display for EventTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventTag::BootDone(n) => write!(f, "boot-done node#{n}"),
            EventTag::LeaseRenew(n) => write!(f, "lease-renew node#{n}"),
            EventTag::ServerStarted(n) => write!(f, "server-started node#{n}"),
            EventTag::NodeMonitor => write!(f, "node-monitor"),
            EventTag::EtcdTick => write!(f, "etcd-tick"),
            EventTag::EtcdDeliver { msg_type, from, to } => {
                write!(
                    f,
                    "etcd-deliver type {msg_type} member {from} -> member {}",
                    to + 1
                )
            }
            EventTag::Reconcile => write!(f, "reconcile"),
            EventTag::PodStarted(u) => write!(f, "pod-started uid {u}"),
            EventTag::PodReady(u) => write!(f, "pod-ready uid {u}"),
            EventTag::PodGone(u) => write!(f, "pod-gone uid {u}"),
            EventTag::Fault => write!(f, "fault"),
            EventTag::Wake { model, tag } => write!(f, "wake model#{model} tag {tag}"),
            EventTag::Message(m) => write!(f, "message model#{m}"),
            EventTag::Inject => write!(f, "inject"),
        }
    }
}

struct Queued {
    at: Time,
    seq: u64,
    event: Event,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An invariant violation: the run stopped here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Invariant name (`etcd-one-leader-per-term`, `node-capacity`, ...).
    pub invariant: String,
    /// What broke, with names.
    pub message: String,
    /// Virtual time.
    pub at: Time,
    /// The event after which it was found.
    pub event: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invariant {} violated at {} after event `{}`: {}",
            self.invariant,
            crate::fmt_time(self.at),
            self.event,
            self.message
        )
    }
}

/// Everything the models share: clock, random stream, queue, trace and the cluster state.
pub struct World {
    pub(crate) now: Time,
    pub(crate) rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    pub(crate) trace: Trace,
    pub(crate) topology: Topology,
    /// Cluster state (nodes, pods, workloads, PVCs, services).
    pub(crate) cluster: Cluster,
    /// etcd members (Raft).
    pub(crate) etcd: Etcd,
    /// Network links and partitions.
    pub(crate) net: Network,
    /// Bumped whenever cluster state changes: invariants re-run only then.
    pub(crate) generation: u64,
    pub(crate) reconcile_pending: bool,
    pub(crate) overflow: bool,
    pub(crate) seed: u64,
    pub(crate) violation_pending: Option<(String, String)>,
    /// Controller passes run at the current instant (livelock guard).
    pub(crate) passes_now: (Time, u32),
    events_processed: u64,
}

impl World {
    /// Current virtual time (microseconds since the start).
    pub fn now(&self) -> Time {
        self.now
    }
    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The topology the world was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    /// The simulation's random stream (the only randomness a model may use).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
    /// A uniform draw in `[lo, hi)` from the simulation's stream (`lo` when empty).
    pub fn random_range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }
    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }
    /// Events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }
    /// Events waiting in the queue.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn schedule(&mut self, at: Time, event: Event) {
        if self.queue.len() >= MAX_PENDING_EVENTS {
            self.overflow = true;
            return;
        }
        let at = at.max(self.now);
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Wake model `model` at `at` with `tag` (cheap: no allocation).
    pub fn wake(&mut self, at: Time, model: ModelId, tag: u64) {
        self.schedule(
            at,
            Event::Wake {
                model: model.0,
                tag,
            },
        );
    }
    /// Deliver `payload` to model `model` at `at`.
    pub fn send_to_model(&mut self, at: Time, model: ModelId, payload: Box<dyn Any>) {
        self.schedule(
            at,
            Event::Message {
                model: model.0,
                payload,
            },
        );
    }
    /// Schedule a fault at `at`.
    pub fn schedule_fault(&mut self, at: Time, fault: Fault) {
        self.schedule(at, Event::Fault(fault));
    }
    /// Record a core trace event.
    pub(crate) fn emit(&mut self, event: TraceEvent) {
        self.trace.push(self.now, event);
    }
    /// Record an extension model's trace event.
    pub fn trace_ext(&mut self, model: &str, kind: &str, detail: String) {
        self.trace.push(
            self.now,
            TraceEvent::Ext {
                model: model.to_string(),
                kind: kind.to_string(),
                detail,
            },
        );
    }
    pub(crate) fn take_violation(&mut self) -> Option<(String, String)> {
        self.violation_pending.take()
    }
    /// Note that cluster state changed: re-run invariants, and a controller pass soon.
    pub(crate) fn changed(&mut self) {
        self.generation += 1;
        if !self.reconcile_pending {
            self.reconcile_pending = true;
            let now = self.now;
            self.schedule(now, Event::Reconcile);
        }
    }
}

/// A simulation: a [`World`] plus the extension models, run event by event.
pub struct Sim {
    world: World,
    models: Vec<Option<Box<dyn Model>>>,
    violation: Option<Violation>,
    checked_generation: u64,
    checked_pods_generation: u64,
    topology_name: String,
    options: SimOptions,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The virtual deadline was reached.
    Deadline,
    /// The predicate held.
    Predicate,
    /// Nothing left to do.
    Idle,
    /// An invariant was violated (see [`Sim::violation`]).
    Violation,
    /// The event budget ran out.
    EventBudget,
}

impl Sim {
    /// Build a world from a topology and a seed. Nothing runs until `run_*` is called; at time 0
    /// every VM powers on and the scheduled faults of `options` are queued.
    pub fn new(topology: Topology, seed: u64, options: SimOptions) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let net = Network::new(&topology);
        let cluster = Cluster::new(&topology, &options);
        let etcd = Etcd::new(&topology);
        let topology_name = topology.name.clone();
        let mut world = World {
            now: 0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            trace: Trace::default(),
            topology,
            cluster,
            etcd,
            net,
            generation: 1,
            reconcile_pending: false,
            overflow: false,
            seed,
            violation_pending: None,
            passes_now: (0, 0),
            events_processed: 0,
        };
        world.power_on_all();
        for f in &options.faults {
            world.schedule_fault(f.at, f.fault.clone());
        }
        Sim {
            world,
            models: Vec::new(),
            violation: None,
            checked_generation: 0,
            checked_pods_generation: u64::MAX,
            topology_name,
            options,
        }
    }

    /// Register an extension model; its `start` runs now.
    pub fn add_model(&mut self, model: Box<dyn Model>) -> ModelId {
        let id = ModelId(self.models.len());
        self.models.push(Some(model));
        self.with_model(id.0, |m, w| m.start(w, id));
        id
    }

    fn with_model(&mut self, idx: usize, f: impl FnOnce(&mut dyn Model, &mut World)) {
        if let Some(mut m) = self.models.get_mut(idx).and_then(Option::take) {
            f(m.as_mut(), &mut self.world);
            self.models[idx] = Some(m);
        }
    }

    /// A registered model, downcast.
    pub fn model<T: Model>(&self, id: ModelId) -> Option<&T> {
        self.models
            .get(id.0)?
            .as_ref()?
            .as_any()
            .downcast_ref::<T>()
    }
    /// A registered model, downcast, mutably.
    pub fn model_mut<T: Model>(&mut self, id: ModelId) -> Option<&mut T> {
        self.models
            .get_mut(id.0)?
            .as_mut()?
            .as_any_mut()
            .downcast_mut::<T>()
    }

    /// The world (state queries).
    pub fn world(&self) -> &World {
        &self.world
    }
    /// The world, mutably (apply objects, schedule model events).
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }
    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.world.now
    }
    /// The violation that stopped the run, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }
    /// Hex trace hash.
    pub fn trace_hash(&self) -> String {
        self.world.trace.hash_hex()
    }
    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.world.trace
    }
    /// The options the run was built with.
    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// One line that rebuilds exactly this run.
    pub fn repro(&self) -> String {
        let mut s = self.repro_cluster();
        if self.world.topology.gitops.is_some() {
            // `cargo xtask sim` deploys such a topology's GitOps tree unless told not to;
            // this run did not.
            s.push_str(" --no-gitops");
        }
        s
    }

    /// The repro line's cluster part (topology, seed, faults, overrides), for a shell that
    /// adds what it ran on top (`cargo xtask sim`: its GitOps controller, FL job and run length).
    pub fn repro_cluster(&self) -> String {
        let mut s = format!(
            "repro: cargo xtask sim --topology {} --seed {}",
            self.topology_name, self.world.seed
        );
        if !self.options.faults.is_empty() {
            let faults = crate::fault::faults_json(&self.options.faults);
            s.push_str(&format!(" --faults-json '{faults}'"));
        }
        for (name, o) in &self.options.overrides {
            s.push_str(&format!(" --override {name}={}", o.to_arg()));
        }
        s
    }

    /// Apply a fault now (it is traced and takes effect before the next event).
    pub fn inject(&mut self, fault: Fault) {
        self.inject_tagged(fault);
    }
    /// Schedule a fault at virtual time `at`.
    pub fn schedule_fault(&mut self, at: Time, fault: Fault) {
        self.world.schedule_fault(at, fault);
    }
    /// Schedule several faults.
    pub fn schedule_faults(&mut self, faults: &[ScheduledFault]) {
        for f in faults {
            self.world.schedule_fault(f.at, f.fault.clone());
        }
    }

    /// Run until virtual time `deadline` (events at `deadline` included).
    pub fn run_until(&mut self, deadline: Time) -> Stop {
        self.run_until_pred(deadline, u64::MAX, |_| false)
    }

    /// Run until `pred` holds (checked after every event), virtual time passes `deadline`, or
    /// `max_events` events ran. On `Deadline` the clock stands at `deadline`.
    pub fn run_until_pred(
        &mut self,
        deadline: Time,
        max_events: u64,
        mut pred: impl FnMut(&World) -> bool,
    ) -> Stop {
        if self.violation.is_some() {
            return Stop::Violation;
        }
        if pred(&self.world) {
            return Stop::Predicate;
        }
        let mut budget = max_events;
        loop {
            if budget == 0 {
                return Stop::EventBudget;
            }
            budget -= 1;
            let next_at = match self.world.queue.peek() {
                Some(Reverse(q)) => q.at,
                None => {
                    self.world.now = self.world.now.max(deadline);
                    return Stop::Idle;
                }
            };
            if next_at > deadline {
                self.world.now = deadline;
                return Stop::Deadline;
            }
            let Some(Reverse(q)) = self.world.queue.pop() else {
                return Stop::Idle;
            };
            self.world.now = q.at;
            self.world.events_processed += 1;
            let tag = q.event.tag();
            let trace_before = self.world.trace.total();
            let touched = self.dispatch(q.event);
            self.after_event(tag, trace_before, touched);
            if self.violation.is_some() {
                return Stop::Violation;
            }
            if pred(&self.world) {
                return Stop::Predicate;
            }
        }
    }
}

// The dispatch loop and invariant plumbing.
impl Sim {
    fn dispatch(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Wake { model, tag } => {
                self.with_model(model, |m, w| m.on_wake(w, ModelId(model), tag));
                Some(model)
            }
            Event::Message { model, payload } => {
                self.with_model(model, |m, w| m.on_message(w, ModelId(model), payload));
                Some(model)
            }
            other => {
                self.world.handle(other);
                None
            }
        }
    }

    fn after_event(&mut self, tag: EventTag, trace_before: u64, touched: Option<usize>) {
        // feed new core trace events to the models (bounded: a model's own reactions are
        // observed in the next round, at most 8 rounds per event).
        let mut seen = trace_before;
        let mut rounds = 0;
        while !self.models.is_empty() && self.world.trace.total() > seen && rounds < 8 {
            rounds += 1;
            let total = self.world.trace.total();
            let stored = self.world.trace.entries().len() as u64;
            let new: Vec<TraceEvent> = if total == stored {
                self.world.trace.entries()[seen as usize..]
                    .iter()
                    .map(|e| e.event.clone())
                    .collect()
            } else {
                Vec::new()
            };
            seen = total;
            for ev in &new {
                if matches!(ev, TraceEvent::Ext { .. }) {
                    continue;
                }
                for idx in 0..self.models.len() {
                    self.with_model(idx, |m, w| m.observe(w, ModelId(idx), ev));
                }
            }
        }
        let mut found: Option<(String, String)> = self.world.take_violation();
        if found.is_none() && self.world.overflow {
            found = Some((
                "queue-bounded".into(),
                format!("more than {MAX_PENDING_EVENTS} events pending at once"),
            ));
        }
        let full = self.world.generation != self.checked_generation
            || self.world.trace.total() != trace_before;
        if found.is_none() && self.world.generation != self.checked_generation {
            self.checked_generation = self.world.generation;
            let pods_changed = self.world.cluster.pods_generation != self.checked_pods_generation;
            self.checked_pods_generation = self.world.cluster.pods_generation;
            found = crate::invariants::check(&self.world, pods_changed).err();
        }
        if found.is_none() {
            for (idx, m) in self.models.iter().enumerate() {
                if !(full || touched == Some(idx)) {
                    continue;
                }
                if let Some(m) = m
                    && let Err((inv, msg)) = m.check(&self.world)
                {
                    found = Some((format!("{}:{inv}", m.name()), msg));
                    break;
                }
            }
        }
        if let Some((invariant, message)) = found {
            self.world.emit(TraceEvent::Violation {
                invariant: invariant.clone(),
                message: message.clone(),
            });
            self.violation = Some(Violation {
                invariant,
                message,
                at: self.world.now,
                event: tag.to_string(),
            });
        }
    }

    /// Apply a fault now, as [`Sim::inject`] does, from inside the run loop.
    fn inject_tagged(&mut self, fault: Fault) {
        let before = self.world.trace.total();
        self.world.apply_fault(fault);
        self.after_event(EventTag::Inject, before, None);
    }

    /// Summary lines of the extension models.
    pub fn model_summaries(&self) -> Vec<String> {
        self.models
            .iter()
            .flatten()
            .flat_map(|m| m.summary(&self.world))
            .collect()
    }
}

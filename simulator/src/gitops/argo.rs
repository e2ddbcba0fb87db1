//! ArgoCD's application controller as a simulator [`Model`]: it reconciles the Applications of a
//! [`Tree`] against the simulated cluster.
//!
//! # Using it
//! ```no_run
//! use simulator::gitops::{argo::ArgoCd, loader::read_repo};
//! # fn f(sim: &mut simulator::Sim) {
//! let repo = read_repo(std::path::Path::new("fixtures/gitops/mlworkbench")).unwrap();
//! let id = ArgoCd::start(sim, repo.clone());          // the root app is applied by hand now
//! sim.run_until(sim.now() + 30 * simulator::timings::MIN);
//! let argo = sim.model::<ArgoCd>(id).unwrap();
//! let st = argo.status("airflow").unwrap();           // sync, health, synced_healthy_at, blocked
//! # let _ = (st, repo);
//! # }
//! ```
//! A Git commit is [`ArgoCd::commit`] (`sim.model_mut::<ArgoCd>(id)`): a new [`Repo`] snapshot
//! visible from a virtual time on, picked up by each Application on its next reconcile. A hand
//! edit (drift) is a plain `sim.world_mut().apply(..)` of a changed live object.
//!
//! # What is modelled
//! - Applications from the tree: bootstrap Applications are applied by hand at start; a parent's
//!   sync that applies a child Application object creates it (app-of-apps recursion); removing
//!   it from Git prunes it, cascading to its resources (the `resources-finalizer`).
//! - Reconcile every [`RECONCILIATION_TIMEOUT`] plus a jitter in `[0, RECONCILIATION_JITTER]`
//!   drawn from the sim rng. Each reconcile reads the newest commit, renders, compares desired
//!   to live: OutOfSync on a Git change or live drift; automated sync (selfHeal for live drift,
//!   prune for removed objects). Health is re-assessed whenever the cluster changes.
//! - Sync operation: CreateNamespace, then PreSync hooks, then Sync-phase waves ascending (in
//!   ArgoCD's kind order within a wave), then PostSync hooks. A wave starts only when every
//!   resource of the previous one is Healthy, and [`SYNC_WAVE_DELAY`] after it.
//! - Hooks are `Job`s: run as one pod with the Job's requests (real scheduling and readiness),
//!   complete when that pod is ready, then deleted (the cluster model has no Job kind).
//! - Health per kind from [`World::health`]: Deployment/StatefulSet/DaemonSet ready replicas,
//!   PVC Bound, Service endpoints; a child Application's health is the child's (the
//!   `resource.customizations.health.argoproj.io_Application` the fixtures configure); kinds the
//!   cluster does not model (ConfigMap, Secret, CRDs, Ingress...) are Healthy once applied.
//! - Helm-chart Applications (charts cannot be fetched) are one Deployment named after the
//!   release with the `gitops.fl-sim.dev/resource-estimate` pods and requests.
//! - A failed apply retries with `syncPolicy.retry` backoff; when the retries are spent the
//!   automated sync does not retry the same revision (ArgoCD's rule), the app stays OutOfSync
//!   with the error. A manifest that does not render is a ComparisonError (sync Unknown).
//!
//! Not modelled: manual sync, sync windows, ignoreDifferences, Replace/ServerSideApply options,
//! hook failure (a hook pod that never gets ready blocks its phase, like a wave).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::object::{Object, pod_requests, pod_spec_location, quantity_value, replicas};
use super::repo::Repo;
use super::tree::{HOOK, Tree, Unit, UnitKind, wave_of};
use crate::cluster::{Health, Object as KObject, ObjectKind};
use crate::engine::{Model, ModelId, Sim, World};
use crate::timings::{MIN, MS, SEC};
use crate::topology::{
    Bytes, Cpu, NamespaceSpec, PodManagementPolicy, PriorityClassSpec, Provisioner, QuotaSpec,
    StorageClassSpec, VolumeSpec, WorkloadKind, WorkloadSpec,
};
use crate::{Time, fmt_time};

/// `timeout.reconciliation` default 120s: how often every Application is refreshed from Git
/// (argocd-cm, ArgoCD operator manual "Reconciliation timeout").
pub const RECONCILIATION_TIMEOUT: Time = 120 * SEC;
/// `timeout.reconciliation.jitter` default 60s: maximum jitter added to the reconciliation
/// timeout (argocd-cm, ArgoCD operator manual).
pub const RECONCILIATION_JITTER: Time = 60 * SEC;
/// `syncPolicy.retry.backoff.duration` default 5s (ArgoCD Application spec reference).
pub const RETRY_BACKOFF_DURATION: Time = 5 * SEC;
/// `syncPolicy.retry.backoff.factor` default 2 (ArgoCD Application spec reference).
pub const RETRY_BACKOFF_FACTOR: u64 = 2;
/// `syncPolicy.retry.backoff.maxDuration` default 3m (ArgoCD Application spec reference).
pub const RETRY_BACKOFF_MAX_DURATION: Time = 3 * MIN;
/// `--self-heal-timeout-seconds` default 5 (argocd-application-controller command reference,
/// ArgoCD 2.x; the fixtures' argo-cd chart 7.7 ships 2.13): a self-heal sync starts no sooner
/// than this after the previous sync operation finished (`appcontroller.go` `shouldSelfHeal`).
/// The live change itself is seen at once: the controller watches the resources it manages and
/// a change requests a refresh of the owning Application (`handleObjectUpdated`).
pub const SELF_HEAL_TIMEOUT: Time = 5 * SEC;
/// `ARGOCD_SYNC_WAVE_DELAY` default 2s: pause between sync waves (ArgoCD sync-waves docs).
pub const SYNC_WAVE_DELAY: Time = 2 * SEC;
/// Batching delay of health re-assessment after a cluster change (the informer's event
/// handling; a modelling choice, not an ArgoCD setting).
const HEALTH_REFRESH_DELAY: Time = 100 * MS;
/// Bound on Applications (the largest platform has about 50 with ApplicationSets).
const MAX_APPS: usize = 1000;
/// Bound on recorded wave events.
const MAX_WAVE_EVENTS: usize = 100_000;

const TAG_RECONCILE: u64 = 0;
const TAG_OP: u64 = 1;
const TAG_HEALTH: u64 = 2;
const TAG_SELF_HEAL: u64 = 3;

/// Sync status of an Application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Synced,
    OutOfSync,
    /// The manifests could not be rendered (ComparisonError).
    Unknown,
}

/// Health of an Application, worst of its resources (ArgoCD's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AppHealth {
    Healthy,
    Progressing,
    Missing,
    Degraded,
}

/// Sync phase of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    PreSync,
    Sync,
    PostSync,
}

/// A wave held back by a resource that is not Healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub phase: Phase,
    pub wave: i64,
    /// `Kind namespace/name`.
    pub object: String,
    /// Its health and reason (`Degraded: pod ... unschedulable: ...`).
    pub reason: String,
    /// Since when.
    pub since: Time,
}

/// One wave (or hook phase) of one sync that completed: all its resources Healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveEvent {
    pub app: String,
    pub phase: Phase,
    pub wave: i64,
    pub started: Time,
    pub healthy_at: Time,
}

/// What a scenario reads about one Application.
#[derive(Debug, Clone, PartialEq)]
pub struct AppStatus {
    pub name: String,
    pub sync: SyncStatus,
    pub health: AppHealth,
    /// Reason of a non-Healthy health (the worst resource).
    pub health_message: String,
    /// ComparisonError / SyncFailed message.
    pub condition: Option<String>,
    /// Virtual time it last became Synced and Healthy (None while it is not).
    pub synced_healthy_at: Option<Time>,
    /// Git revision last synced successfully.
    pub synced_revision: Option<u64>,
    /// The wave a running sync waits on, and why.
    pub blocked: Option<Blocked>,
    /// Whether a sync operation is running.
    pub operation_running: bool,
    /// Sync operations started (each retry counts).
    pub sync_attempts: u32,
}

/// How a desired resource lands in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// A cluster-model object.
    Cluster(Box<KObject>, ObjectKind, String, String),
    /// A child Application (by name).
    ChildApp(String),
    /// A kind the cluster does not model: Healthy once applied.
    Opaque,
}

#[derive(Debug, Clone)]
struct Desired {
    id: String,
    wave: i64,
    hook: Option<Phase>,
    kind_order: usize,
    /// Shared between a revision's [`Derived`] and what was applied from it: the Git-diff
    /// check of every refresh is then a pointer comparison.
    manifest: Arc<Value>,
    target: Target,
    /// The file the manifest came from (ApplicationSets: the Applications generated from it).
    file: String,
}

#[derive(Debug, Clone)]
struct Step {
    phase: Phase,
    wave: i64,
    /// Shared: a running sync re-reads its step on every health refresh.
    items: Arc<[Desired]>,
}

/// What one Application of the current tree derives to: its desired resources and the sync
/// policy read from its definition. Pure in (Application, Git revision), so it is computed once
/// per revision ([`ArgoCd::derived`]) instead of on every refresh; a refresh runs for every
/// Application on every cluster change, and deriving renders every manifest into cluster
/// objects.
#[derive(Debug)]
struct Derived {
    /// The render error of the app's manifests (ComparisonError), if any.
    comparison_error: Option<String>,
    desired: Vec<Desired>,
    /// Ids of `desired` (prune and "extra" checks).
    ids: BTreeSet<String>,
    automated: bool,
    self_heal: bool,
    prune: bool,
    /// `spec.syncPolicy.retry`.
    retry: Option<Value>,
    create_namespace: bool,
    namespace: String,
}

#[derive(Debug, Clone)]
struct Operation {
    revision: u64,
    steps: Vec<Step>,
    idx: usize,
    applied: bool,
    step_started: Time,
    /// Earliest time the current step may be applied (wave delay).
    not_before: Time,
}

#[derive(Debug, Clone)]
struct App {
    name: String,
    deleted: bool,
    sync: SyncStatus,
    health: AppHealth,
    health_message: String,
    condition: Option<String>,
    synced_healthy_at: Option<Time>,
    synced_revision: Option<u64>,
    failed_revision: Option<u64>,
    op: Option<Operation>,
    retries: u32,
    sync_attempts: u32,
    blocked: Option<Blocked>,
    /// Last applied manifests by id, with where they went (for prune and Git diffs).
    applied: BTreeMap<String, (Arc<Value>, Target)>,
    next_reconcile: Time,
    next_op: Option<Time>,
    /// Whether the first sync completed (a child's health is Progressing before).
    synced_once: bool,
    /// When the last sync operation finished (self-heal waits [`SELF_HEAL_TIMEOUT`] after it).
    last_op_finished: Option<Time>,
    /// A self-heal sync waiting for [`SELF_HEAL_TIMEOUT`] to pass.
    self_heal_at: Option<Time>,
}

/// The ArgoCD application controller model.
pub struct ArgoCd {
    /// Commits: (visible from, repository snapshot), time-ordered.
    commits: Vec<(Time, Repo)>,
    /// Index in `commits` of the tree below.
    tree_commit: usize,
    tree: Tree,
    /// [`Derived`] per Application name for `tree_commit`'s revision; emptied when the tree
    /// changes (a new commit fetched) and on [`ArgoCd::commit`].
    derived: BTreeMap<String, Arc<Derived>>,
    apps: Vec<App>,
    by_name: BTreeMap<String, usize>,
    waves: Vec<WaveEvent>,
    health_pending: bool,
    /// First time each Application was Synced and Healthy.
    first_synced_healthy: BTreeMap<String, Time>,
}

impl ArgoCd {
    /// A controller for `repo` (revision visible from time 0).
    pub fn new(repo: Repo) -> Self {
        let tree = Tree::build(&repo);
        Self {
            commits: vec![(0, repo)],
            tree_commit: 0,
            tree,
            derived: BTreeMap::new(),
            apps: Vec::new(),
            by_name: BTreeMap::new(),
            waves: Vec::new(),
            health_pending: false,
            first_synced_healthy: BTreeMap::new(),
        }
    }

    /// Registers a controller for `repo` on `sim`; its bootstrap Applications are applied now.
    pub fn start(sim: &mut Sim, repo: Repo) -> ModelId {
        sim.add_model(Box::new(Self::new(repo)))
    }

    /// A Git commit: `repo` becomes the repository's content at virtual time `at` (picked up by
    /// each Application on its next reconcile). Commits must come in time order.
    pub fn commit(&mut self, at: Time, repo: Repo) {
        let last = self.commits.last().map_or(0, |c| c.0);
        self.commits.push((at.max(last), repo));
        self.derived.clear();
    }

    /// Application names, in creation order.
    pub fn apps(&self) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| !a.deleted)
            .map(|a| a.name.clone())
            .collect()
    }

    /// The status of one Application (None when it does not exist).
    pub fn status(&self, app: &str) -> Option<AppStatus> {
        let a = &self.apps[*self.by_name.get(app)?];
        if a.deleted {
            return None;
        }
        Some(AppStatus {
            name: a.name.clone(),
            sync: a.sync,
            health: a.health,
            health_message: a.health_message.clone(),
            condition: a.condition.clone(),
            synced_healthy_at: a.synced_healthy_at,
            synced_revision: a.synced_revision,
            blocked: a.blocked.clone(),
            operation_running: a.op.is_some(),
            sync_attempts: a.sync_attempts,
        })
    }

    /// The first time an Application was Synced and Healthy (None: never yet).
    pub fn first_synced_healthy(&self, app: &str) -> Option<Time> {
        self.first_synced_healthy.get(app).copied()
    }

    /// Every completed wave, in the order observed.
    pub fn wave_events(&self) -> &[WaveEvent] {
        &self.waves
    }

    /// Whether every Application of the current tree exists and is Synced and Healthy.
    pub fn converged(&self) -> bool {
        self.tree.units.iter().all(|u| {
            self.status(&u.name)
                .is_some_and(|s| s.sync == SyncStatus::Synced && s.health == AppHealth::Healthy)
        })
    }

    /// Every Application whose sync waits on an unhealthy resource.
    pub fn blocked(&self) -> Vec<(String, Blocked)> {
        self.apps
            .iter()
            .filter(|a| !a.deleted)
            .filter_map(|a| a.blocked.clone().map(|b| (a.name.clone(), b)))
            .collect()
    }

    fn head(&self, now: Time) -> usize {
        self.commits.iter().rposition(|c| c.0 <= now).unwrap_or(0)
    }

    fn revision(&self) -> u64 {
        self.commits[self.tree_commit].1.revision
    }

    fn ensure_app(&mut self, world: &mut World, me: ModelId, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            if self.apps[i].deleted {
                self.apps[i].deleted = false;
                self.apps[i].next_reconcile = world.now();
                world.wake(world.now(), me, tag(i, TAG_RECONCILE));
            }
            return;
        }
        if self.apps.len() >= MAX_APPS {
            return;
        }
        let i = self.apps.len();
        self.apps.push(App {
            name: name.to_string(),
            deleted: false,
            sync: SyncStatus::OutOfSync,
            health: AppHealth::Missing,
            health_message: String::new(),
            condition: None,
            synced_healthy_at: None,
            synced_revision: None,
            failed_revision: None,
            op: None,
            retries: 0,
            sync_attempts: 0,
            blocked: None,
            applied: BTreeMap::new(),
            next_reconcile: world.now(),
            next_op: None,
            synced_once: false,
            last_op_finished: None,
            self_heal_at: None,
        });
        self.by_name.insert(name.to_string(), i);
        world.trace_ext("argocd", "app-created", name.to_string());
        world.wake(world.now(), me, tag(i, TAG_RECONCILE));
    }

    /// What app `name` derives to at the tree's revision (None: not in the tree), cached.
    fn derived(&mut self, name: &str) -> Option<Arc<Derived>> {
        if let Some(d) = self.derived.get(name) {
            return Some(d.clone());
        }
        let unit = &self.tree.units[self.tree.find(name)?];
        let id = unit.definition.id();
        let comparison_error = self
            .tree
            .findings
            .iter()
            .find(|f| f.object == id)
            .map(|f| format!("ComparisonError: {f}"));
        let policy = unit.definition.value.pointer("/spec/syncPolicy");
        let auto = policy.and_then(|p| p.get("automated"));
        let flag = |k: &str| auto.and_then(|a| a.get(k)).and_then(Value::as_bool) == Some(true);
        let desired = desired_of(unit);
        let d = Arc::new(Derived {
            comparison_error,
            ids: desired.iter().map(|d| d.id.clone()).collect(),
            desired,
            automated: auto.is_some(),
            self_heal: flag("selfHeal"),
            prune: flag("prune"),
            retry: policy.and_then(|p| p.get("retry")).cloned(),
            create_namespace: unit.create_namespace,
            namespace: unit.namespace.clone(),
        });
        self.derived.insert(name.to_string(), d.clone());
        Some(d)
    }

    fn reconcile(&mut self, world: &mut World, me: ModelId, i: usize) {
        let now = world.now();
        let head = self.head(now);
        if head != self.tree_commit {
            self.tree_commit = head;
            self.tree = Tree::build(&self.commits[head].1);
            self.derived.clear();
            world.trace_ext(
                "argocd",
                "git-fetch",
                format!("revision {}", self.revision()),
            );
        }
        let jitter = world.random_range(0, RECONCILIATION_JITTER + 1);
        let next = now + RECONCILIATION_TIMEOUT + jitter;
        self.apps[i].next_reconcile = next;
        world.wake(next, me, tag(i, TAG_RECONCILE));
        self.refresh(world, me, i, true);
    }

    /// Compares desired to live, updates status, starts an automated sync when due.
    fn refresh(&mut self, world: &mut World, me: ModelId, i: usize, may_sync: bool) {
        let name = self.apps[i].name.clone();
        let Some(derived) = self.derived(&name) else {
            return;
        };
        if let Some(err) = &derived.comparison_error {
            let a = &mut self.apps[i];
            if a.sync != SyncStatus::Unknown {
                world.trace_ext("argocd", "comparison-error", format!("{name}: {err}"));
            }
            a.sync = SyncStatus::Unknown;
            a.condition = Some(err.clone());
            a.synced_healthy_at = None;
            return;
        }
        let desired = &derived.desired;
        let rev = self.revision();
        let mut git_diff = false;
        let mut live_drift = false;
        for d in desired.iter().filter(|d| d.hook.is_none()) {
            match self.apps[i].applied.get_mut(&d.id) {
                Some((m, _)) if Arc::ptr_eq(m, &d.manifest) => {}
                Some((m, _)) if **m == *d.manifest => {
                    // The same manifest from a new revision: share it, so the next refresh
                    // compares pointers again.
                    *m = d.manifest.clone();
                }
                _ => git_diff = true,
            }
            if self.live_differs(world, d) {
                live_drift = true;
            }
        }
        let extra = self.apps[i]
            .applied
            .keys()
            .any(|k| !derived.ids.contains(k));
        let out_of_sync = git_diff || live_drift || extra;
        let (health, message) = self.assess(world, desired);
        let self_heal = derived.self_heal;
        let a = &mut self.apps[i];
        let was = (a.sync, a.health);
        a.sync = if out_of_sync {
            SyncStatus::OutOfSync
        } else {
            SyncStatus::Synced
        };
        if !out_of_sync && a.op.is_none() {
            a.condition = None;
        }
        a.health = health;
        a.health_message = message;
        if a.sync == SyncStatus::Synced && a.health == AppHealth::Healthy && a.op.is_none() {
            if a.synced_healthy_at.is_none() {
                a.synced_healthy_at = Some(world.now());
                self.first_synced_healthy
                    .entry(name.clone())
                    .or_insert(world.now());
                world.trace_ext("argocd", "synced-healthy", name.clone());
            }
        } else {
            a.synced_healthy_at = None;
        }
        if was != (a.sync, a.health) {
            // A parent's wave may wait on this app's health.
            if !self.health_pending {
                self.health_pending = true;
                world.wake(world.now() + HEALTH_REFRESH_DELAY, me, TAG_HEALTH);
            }
            let a = &self.apps[i];
            world.trace_ext(
                "argocd",
                "status",
                format!("{name}: {:?} {:?}", a.sync, a.health),
            );
        }
        // Automated sync: Git changes always; live drift only with selfHeal; not again for a
        // revision whose sync failed with its retries spent.
        let a = &self.apps[i];
        let wants = derived.automated
            && out_of_sync
            && (git_diff || extra || self_heal || !a.synced_once)
            && a.failed_revision != Some(rev);
        if may_sync && wants && a.op.is_none() {
            self.start_sync(world, me, i, &derived);
            return;
        }
        // A watch-triggered refresh (a live change of a managed resource): selfHeal syncs the
        // drift back without waiting for the periodic reconcile, but no sooner than
        // SELF_HEAL_TIMEOUT after the previous operation finished; not after a failed sync of
        // this revision (`alreadyAttempted && !Successful`).
        let drift_only = live_drift && !git_diff && !extra && a.synced_once;
        if !may_sync && wants && drift_only && self_heal && a.op.is_none() {
            let now = world.now();
            let at = a
                .last_op_finished
                .map_or(now, |t| t.saturating_add(SELF_HEAL_TIMEOUT))
                .max(now);
            if at <= now {
                world.trace_ext("argocd", "self-heal", name.clone());
                self.start_sync(world, me, i, &derived);
            } else if self.apps[i].self_heal_at != Some(at) {
                self.apps[i].self_heal_at = Some(at);
                world.wake(at, me, tag(i, TAG_SELF_HEAL));
            }
        }
    }

    fn live_differs(&self, world: &World, d: &Desired) -> bool {
        match &d.target {
            Target::Cluster(obj, _, _, _) if let KObject::Workload(spec) = obj.as_ref() => world
                .workload(spec.kind, &spec.namespace, &spec.name)
                .is_none_or(|w| w.spec != *spec),
            Target::Cluster(_, kind, ns, name) => world.health(*kind, ns, name) == Health::Missing,
            Target::ChildApp(n) => self.by_name.get(n).is_none_or(|&j| self.apps[j].deleted),
            Target::Opaque => false,
        }
    }

    /// The Applications an ApplicationSet manifest of app `owner` generates (none for other
    /// kinds): the tree's units expanded from that set's file under the owner. An
    /// ApplicationSet itself has no health check in ArgoCD, so the owner does not wait on them.
    fn generated_apps(&self, owner: &str, d: &Desired) -> Vec<String> {
        if d.manifest.get("kind").and_then(Value::as_str) != Some("ApplicationSet") {
            return Vec::new();
        }
        let Some(parent) = self.tree.find(owner) else {
            return Vec::new();
        };
        self.tree
            .units
            .iter()
            .filter(|u| {
                u.parent == Some(parent)
                    && u.definition.file == d.file
                    && matches!(u.kind, UnitKind::ArgoApp | UnitKind::ArgoHelm)
            })
            .map(|u| u.name.clone())
            .collect()
    }

    /// The live objects an Application manages (`Kind namespace/name`), as last applied.
    pub fn resources(&self, app: &str) -> Vec<String> {
        self.by_name
            .get(app)
            .map(|&i| self.apps[i].applied.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn health_of(&self, world: &World, d: &Desired) -> (AppHealth, String) {
        match &d.target {
            Target::Cluster(_, kind, ns, name) => match world.health(*kind, ns, name) {
                Health::Healthy => (AppHealth::Healthy, String::new()),
                Health::Progressing(m) => (AppHealth::Progressing, m),
                Health::Degraded(m) => (AppHealth::Degraded, m),
                Health::Missing => (AppHealth::Missing, "missing".into()),
            },
            Target::ChildApp(n) => match self.by_name.get(n).map(|&j| &self.apps[j]) {
                Some(c) if !c.deleted && (c.synced_once || c.health == AppHealth::Degraded) => {
                    (c.health, format!("{}: {}", c.name, c.health_message))
                }
                Some(c) if !c.deleted => (
                    AppHealth::Progressing,
                    format!("{}: first sync running ({})", c.name, c.health_message),
                ),
                _ => (AppHealth::Missing, "missing".into()),
            },
            Target::Opaque => (AppHealth::Healthy, String::new()),
        }
    }

    fn assess(&self, world: &World, desired: &[Desired]) -> (AppHealth, String) {
        let mut worst = (AppHealth::Healthy, String::new());
        for d in desired.iter().filter(|d| d.hook.is_none()) {
            let (h, m) = self.health_of(world, d);
            if h > worst.0 {
                worst = (h, format!("{}: {m}", d.id));
            }
        }
        worst
    }

    fn start_sync(&mut self, world: &mut World, me: ModelId, i: usize, derived: &Derived) {
        let mut steps: BTreeMap<(Phase, i64), Vec<Desired>> = BTreeMap::new();
        if derived.create_namespace && !derived.namespace.is_empty() {
            let ns = &derived.namespace;
            steps
                .entry((Phase::PreSync, i64::MIN))
                .or_default()
                .push(Desired {
                    id: format!("Namespace {ns}"),
                    wave: i64::MIN,
                    hook: Some(Phase::PreSync),
                    kind_order: 0,
                    manifest: Arc::new(Value::Null),
                    file: String::new(),
                    target: Target::Cluster(
                        Box::new(KObject::Namespace(NamespaceSpec {
                            name: ns.clone(),
                            quota: None,
                        })),
                        ObjectKind::Namespace,
                        ns.clone(),
                        ns.clone(),
                    ),
                });
        }
        for d in &derived.desired {
            let phase = d.hook.unwrap_or(Phase::Sync);
            steps.entry((phase, d.wave)).or_default().push(d.clone());
        }
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|((phase, wave), mut items)| {
                items.sort_by(|a, b| (a.kind_order, &a.id).cmp(&(b.kind_order, &b.id)));
                Step {
                    phase,
                    wave,
                    items: items.into(),
                }
            })
            .collect();
        let now = world.now();
        let a = &mut self.apps[i];
        a.sync_attempts += 1;
        a.op = Some(Operation {
            revision: self.commits[self.tree_commit].1.revision,
            steps,
            idx: 0,
            applied: false,
            step_started: now,
            not_before: now,
        });
        world.trace_ext(
            "argocd",
            "sync-start",
            format!(
                "{} revision {}",
                a.name, self.commits[self.tree_commit].1.revision
            ),
        );
        a.next_op = Some(now);
        world.wake(now, me, tag(i, TAG_OP));
    }

    /// Advances a running sync as far as it can go now.
    fn run_op(&mut self, world: &mut World, me: ModelId, i: usize) {
        let now = world.now();
        let mut guard = 0;
        loop {
            guard += 1;
            if guard > 10_000 {
                return;
            }
            let Some(op) = self.apps[i].op.as_ref() else {
                return;
            };
            if op.idx >= op.steps.len() {
                return self.finish_op(world, me, i, None);
            }
            if now < op.not_before {
                self.schedule_op(world, me, i, op.not_before);
                return;
            }
            let step = op.steps[op.idx].clone();
            let applied = op.applied;
            if !applied {
                for d in step.items.iter() {
                    if let Err(e) = self.apply_one(world, me, i, d) {
                        return self.finish_op(world, me, i, Some(e));
                    }
                }
                let op = self.apps[i].op.as_mut().expect("op");
                op.applied = true;
                op.step_started = now;
                // Health is assessed once the cluster has acted on the apply (a fresh
                // Deployment's status lags its spec: ArgoCD reads it as Progressing until the
                // controller observed it), not in the instant of the apply.
                self.schedule_op(world, me, i, now + HEALTH_REFRESH_DELAY);
                return;
            }
            // Wait for every resource of the step to be Healthy.
            // Name the worst one (a Degraded pod explains a PVC waiting for its consumer).
            let mut unhealthy: Option<(AppHealth, String, String)> = None;
            for d in step.items.iter() {
                let (h, m) = self.health_of(world, d);
                if h != AppHealth::Healthy && unhealthy.as_ref().is_none_or(|u| h > u.0) {
                    unhealthy = Some((h, d.id.clone(), format!("{h:?}: {m}")));
                }
            }
            if let Some((_, object, reason)) = unhealthy {
                let a = &mut self.apps[i];
                let since = a
                    .blocked
                    .as_ref()
                    .filter(|b| b.object == object && b.wave == step.wave && b.phase == step.phase)
                    .map_or(now, |b| b.since);
                if since == now {
                    world.trace_ext(
                        "argocd",
                        "wave-blocked",
                        format!(
                            "{} {:?} wave {}: {object} {reason}",
                            a.name, step.phase, step.wave
                        ),
                    );
                }
                a.blocked = Some(Blocked {
                    phase: step.phase,
                    wave: step.wave,
                    object,
                    reason,
                    since,
                });
                // Re-checked on the next cluster change (health refresh).
                return;
            }
            // Hooks done: delete their Jobs (HookSucceeded / BeforeHookCreation).
            for d in step
                .items
                .iter()
                .filter(|d| d.hook.is_some() && *d.manifest != Value::Null)
            {
                if let Target::Cluster(_, kind, ns, name) = &d.target {
                    let _ = world.delete(*kind, ns, name);
                }
            }
            let a = &mut self.apps[i];
            a.blocked = None;
            let op = a.op.as_mut().expect("op");
            if self.waves.len() < MAX_WAVE_EVENTS {
                self.waves.push(WaveEvent {
                    app: a.name.clone(),
                    phase: step.phase,
                    wave: step.wave,
                    started: op.step_started,
                    healthy_at: now,
                });
            }
            world.trace_ext(
                "argocd",
                "wave-healthy",
                format!(
                    "{} {:?} wave {} at {}",
                    a.name,
                    step.phase,
                    step.wave,
                    fmt_time(now)
                ),
            );
            op.idx += 1;
            op.applied = false;
            op.not_before = now + SYNC_WAVE_DELAY;
        }
    }

    fn schedule_op(&mut self, world: &mut World, me: ModelId, i: usize, at: Time) {
        if self.apps[i].next_op != Some(at) {
            self.apps[i].next_op = Some(at);
            world.wake(at, me, tag(i, TAG_OP));
        }
    }

    fn apply_one(
        &mut self,
        world: &mut World,
        me: ModelId,
        i: usize,
        d: &Desired,
    ) -> Result<(), String> {
        match &d.target {
            Target::Cluster(obj, ObjectKind::Namespace, ns, _) => {
                // Re-applying a Namespace keeps its quota: only create it.
                if world.health(ObjectKind::Namespace, ns, ns) == Health::Missing {
                    world.apply((**obj).clone()).map_err(|e| e.to_string())?;
                }
            }
            Target::Cluster(obj, _, _, _) => {
                world.apply((**obj).clone()).map_err(|e| e.to_string())?
            }
            Target::ChildApp(n) => self.ensure_app(world, me, n),
            // The applicationset-controller creates the generated Applications at once.
            Target::Opaque => {
                let name = self.apps[i].name.clone();
                for n in self.generated_apps(&name, d) {
                    self.ensure_app(world, me, &n);
                }
            }
        }
        if d.hook.is_none() {
            self.apps[i]
                .applied
                .insert(d.id.clone(), (d.manifest.clone(), d.target.clone()));
        }
        Ok(())
    }

    fn finish_op(&mut self, world: &mut World, me: ModelId, i: usize, err: Option<String>) {
        let Some(op) = self.apps[i].op.take() else {
            return;
        };
        self.apps[i].last_op_finished = Some(world.now());
        let name = self.apps[i].name.clone();
        self.apps[i].next_op = None;
        match err {
            None => {
                // Prune what the revision no longer has.
                if let Some(d) = self.derived(&name).filter(|d| d.prune) {
                    let extra: Vec<String> = self.apps[i]
                        .applied
                        .keys()
                        .filter(|k| !d.ids.contains(*k))
                        .cloned()
                        .collect();
                    for id in extra {
                        if let Some((_, t)) = self.apps[i].applied.remove(&id) {
                            world.trace_ext("argocd", "prune", format!("{name}: {id}"));
                            self.remove_target(world, &t);
                        }
                    }
                }
                let a = &mut self.apps[i];
                a.retries = 0;
                a.synced_once = true;
                a.synced_revision = Some(op.revision);
                a.failed_revision = None;
                a.condition = None;
                a.blocked = None;
                world.trace_ext(
                    "argocd",
                    "sync-succeeded",
                    format!("{name} revision {}", op.revision),
                );
                self.refresh(world, me, i, false);
            }
            Some(e) => {
                let retry = self.derived(&name).and_then(|d| d.retry.clone());
                let limit = retry
                    .as_ref()
                    .and_then(|r| r.get("limit"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let a = &mut self.apps[i];
                a.condition = Some(format!("SyncFailed: {e}"));
                a.sync = SyncStatus::OutOfSync;
                a.synced_healthy_at = None;
                world.trace_ext("argocd", "sync-failed", format!("{name}: {e}"));
                let unlimited = retry.is_some() && limit < 0;
                if unlimited || i64::from(a.retries) < limit {
                    let b = retry.as_ref().and_then(|r| r.get("backoff"));
                    let base = b
                        .and_then(|b| b.get("duration"))
                        .and_then(Value::as_str)
                        .and_then(parse_duration)
                        .unwrap_or(RETRY_BACKOFF_DURATION);
                    let factor = b
                        .and_then(|b| b.get("factor"))
                        .and_then(Value::as_u64)
                        .unwrap_or(RETRY_BACKOFF_FACTOR);
                    let max = b
                        .and_then(|b| b.get("maxDuration"))
                        .and_then(Value::as_str)
                        .and_then(parse_duration)
                        .unwrap_or(RETRY_BACKOFF_MAX_DURATION);
                    let delay = base
                        .saturating_mul(factor.saturating_pow(a.retries.min(40)))
                        .min(max);
                    a.retries += 1;
                    let at = world.now() + delay;
                    // The retry is a new sync of the same revision.
                    a.failed_revision = None;
                    a.next_op = None;
                    world.trace_ext(
                        "argocd",
                        "sync-retry",
                        format!("{name} attempt {} in {}", a.retries, fmt_time(delay)),
                    );
                    world.wake(at, me, tag(i, TAG_RECONCILE));
                    a.next_reconcile = at;
                } else {
                    a.failed_revision = Some(op.revision);
                    a.retries = 0;
                }
            }
        }
    }

    fn remove_target(&mut self, world: &mut World, t: &Target) {
        match t {
            Target::Cluster(_, kind, ns, name) => {
                let _ = world.delete(*kind, ns, name);
            }
            Target::ChildApp(n) => {
                if let Some(&j) = self.by_name.get(n) {
                    // resources-finalizer: cascade to the child's resources.
                    let owned: Vec<Target> = std::mem::take(&mut self.apps[j].applied)
                        .into_values()
                        .map(|(_, t)| t)
                        .collect();
                    self.apps[j].deleted = true;
                    self.apps[j].op = None;
                    self.apps[j].blocked = None;
                    world.trace_ext("argocd", "app-deleted", n.clone());
                    for t in owned {
                        self.remove_target(world, &t);
                    }
                }
            }
            Target::Opaque => {}
        }
    }
}

fn tag(i: usize, kind: u64) -> u64 {
    ((i as u64) << 2) | kind
}

/// `5s`, `3m`, `1h`, `1m30s`, or a bare number of seconds (ArgoCD's duration format).
pub fn parse_duration(s: &str) -> Option<Time> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n * SEC);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600 * SEC,
            'm' => MIN,
            's' => SEC,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

/// ArgoCD's apply order of kinds within a wave (gitops-engine `sync_tasks.go` kindOrder).
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

fn kind_order(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

fn hook_phase(o: &Object) -> Option<Phase> {
    let h = o.annotation(HOOK)?;
    // `PreSync,PostSync` style lists: the first phase is used.
    match h.split(',').next().map(str::trim) {
        Some("PreSync") => Some(Phase::PreSync),
        Some("Sync") => Some(Phase::Sync),
        Some("PostSync") => Some(Phase::PostSync),
        _ => None,
    }
}

/// The desired resources of an Application.
fn desired_of(unit: &Unit) -> Vec<Desired> {
    let mut out = Vec::new();
    if unit.kind == UnitKind::ArgoHelm {
        if let Some((req, pods)) = unit.estimate {
            let pods = pods.max(1);
            let spec = WorkloadSpec {
                kind: WorkloadKind::Deployment,
                name: unit.name.clone(),
                namespace: unit.namespace.clone(),
                replicas: u32::try_from(pods).unwrap_or(u32::MAX),
                cpu: Cpu(req.cpu_millis / pods),
                memory: Bytes(req.memory_bytes / pods),
                priority_class: None,
                volumes: Vec::new(),
                tolerations: Vec::new(),
                node_selector: BTreeMap::new(),
                service: false,
                pod_management_policy: Default::default(),
                source: Some(format!("helm estimate of {}", unit.definition.file)),
            };
            out.push(Desired {
                id: format!("HelmRelease {}/{}", unit.namespace, unit.name),
                wave: 0,
                hook: None,
                kind_order: kind_order("Deployment"),
                file: unit.definition.file.clone(),
                manifest: Arc::new(
                    unit.definition
                        .value
                        .get("spec")
                        .cloned()
                        .unwrap_or(Value::Null),
                ),
                target: Target::Cluster(
                    Box::new(KObject::Workload(spec)),
                    ObjectKind::Deployment,
                    unit.namespace.clone(),
                    unit.name.clone(),
                ),
            });
        }
        return out;
    }
    for o in &unit.objects {
        let mut f = Vec::new();
        let hook = hook_phase(o);
        out.push(Desired {
            id: o.id(),
            wave: wave_of(o, &mut f),
            hook,
            kind_order: kind_order(o.kind()),
            file: o.file.clone(),
            manifest: Arc::new(o.value.clone()),
            target: target_of(o, &unit.objects, hook.is_some()),
        });
    }
    out
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// Converts a manifest to the cluster model's object.
pub(crate) fn target_of(o: &Object, siblings: &[Object], hook: bool) -> Target {
    let ns = o.namespace().unwrap_or("").to_string();
    let name = o.name().to_string();
    let v = &o.value;
    let cluster =
        |k: KObject, kind: ObjectKind| Target::Cluster(Box::new(k), kind, ns.clone(), name.clone());
    match (o.group(), o.kind()) {
        ("argoproj.io", "Application") => Target::ChildApp(name.clone()),
        // Cluster-scoped: the namespace's own name is its key.
        ("", "Namespace") => Target::Cluster(
            Box::new(KObject::Namespace(NamespaceSpec {
                name: name.clone(),
                quota: None,
            })),
            ObjectKind::Namespace,
            name.clone(),
            name.clone(),
        ),
        ("", "ResourceQuota") => {
            let hard = v.pointer("/spec/hard");
            let q = |k: &str, scale| {
                hard.and_then(|h| h.get(k))
                    .and_then(|x| quantity_value(x, scale))
            };
            cluster(
                KObject::ResourceQuota {
                    namespace: ns.clone(),
                    quota: QuotaSpec {
                        cpu: q("requests.cpu", 1000).or_else(|| q("cpu", 1000)).map(Cpu),
                        memory: q("requests.memory", 1)
                            .or_else(|| q("memory", 1))
                            .map(Bytes),
                        pods: q("pods", 1).and_then(|p| u32::try_from(p).ok()),
                    },
                },
                ObjectKind::ResourceQuota,
            )
        }
        ("scheduling.k8s.io", "PriorityClass") => cluster(
            KObject::PriorityClass(PriorityClassSpec {
                name: name.clone(),
                value: v
                    .get("value")
                    .and_then(Value::as_i64)
                    .and_then(|x| i32::try_from(x).ok())
                    .unwrap_or(0),
            }),
            ObjectKind::PriorityClass,
        ),
        ("storage.k8s.io", "StorageClass") => {
            let provisioner = match v.get("provisioner").and_then(Value::as_str) {
                Some("rancher.io/local-path") => Provisioner::LocalPath,
                Some("driver.longhorn.io") => Provisioner::Longhorn,
                _ => return Target::Opaque,
            };
            cluster(
                KObject::StorageClass(StorageClassSpec {
                    name: name.clone(),
                    provisioner,
                    default: o.annotation("storageclass.kubernetes.io/is-default-class")
                        == Some("true"),
                    replicas: str_at(v, "/parameters/numberOfReplicas")
                        .and_then(|r| r.parse().ok()),
                }),
                ObjectKind::StorageClass,
            )
        }
        ("", "PersistentVolumeClaim") => cluster(
            KObject::Pvc {
                namespace: ns.clone(),
                name: name.clone(),
                size: Bytes(
                    v.pointer("/spec/resources/requests/storage")
                        .and_then(|x| quantity_value(x, 1))
                        .unwrap_or(0),
                ),
                storage_class: str_at(v, "/spec/storageClassName").map(str::to_string),
            },
            ObjectKind::Pvc,
        ),
        ("", "Service") => {
            let Some(sel) = v.pointer("/spec/selector").and_then(Value::as_object) else {
                return Target::Opaque;
            };
            let wl = siblings.iter().find(|s| {
                matches!(s.kind(), "Deployment" | "StatefulSet" | "DaemonSet")
                    && s.namespace() == o.namespace()
                    && !sel.is_empty()
                    && sel.iter().all(|(k, val)| {
                        s.value
                            .pointer("/spec/template/metadata/labels")
                            .and_then(|l| l.get(k))
                            == Some(val)
                    })
            });
            match wl {
                Some(w) => cluster(
                    KObject::Service {
                        namespace: ns.clone(),
                        name: name.clone(),
                        workload: w.name().to_string(),
                    },
                    ObjectKind::Service,
                ),
                None => Target::Opaque,
            }
        }
        ("apps", k @ ("Deployment" | "StatefulSet" | "DaemonSet")) => {
            let kind = match k {
                "Deployment" => WorkloadKind::Deployment,
                "StatefulSet" => WorkloadKind::StatefulSet,
                _ => WorkloadKind::DaemonSet,
            };
            let spec = workload_spec(o, kind, 1, siblings);
            cluster(KObject::Workload(spec), kind.into())
        }
        ("batch", "Job") if hook => {
            // A hook Job: one pod, complete when ready.
            let spec = workload_spec(o, WorkloadKind::Deployment, 1, siblings);
            cluster(KObject::Workload(spec), ObjectKind::Deployment)
        }
        _ => Target::Opaque,
    }
}

pub(crate) fn workload_spec(
    o: &Object,
    kind: WorkloadKind,
    default_replicas: u64,
    siblings: &[Object],
) -> WorkloadSpec {
    let v = &o.value;
    let pod = pod_spec_location(o.kind())
        .and_then(|(p, _)| v.pointer(p))
        .cloned()
        .unwrap_or(Value::Null);
    let (req, _) = pod_requests(&pod, "");
    let ns = o.namespace().unwrap_or("").to_string();
    let mut volumes = Vec::new();
    for t in v
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        volumes.push(VolumeSpec {
            name: str_at(t, "/metadata/name").unwrap_or("data").to_string(),
            size: Bytes(
                t.pointer("/spec/resources/requests/storage")
                    .and_then(|x| quantity_value(x, 1))
                    .unwrap_or(0),
            ),
            storage_class: str_at(t, "/spec/storageClassName").map(str::to_string),
        });
    }
    for vol in pod
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(claim) = str_at(vol, "/persistentVolumeClaim/claimName") {
            let pvc = siblings
                .iter()
                .find(|s| s.kind() == "PersistentVolumeClaim" && s.name() == claim);
            volumes.push(VolumeSpec {
                name: claim.to_string(),
                size: Bytes(
                    pvc.and_then(|p| p.value.pointer("/spec/resources/requests/storage"))
                        .and_then(|x| quantity_value(x, 1))
                        .unwrap_or(0),
                ),
                storage_class: pvc
                    .and_then(|p| str_at(&p.value, "/spec/storageClassName"))
                    .map(str::to_string),
            });
        }
    }
    let mut tolerations = Vec::new();
    for t in pod
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match t.get("key").and_then(Value::as_str) {
            Some(k) => tolerations.push(k.to_string()),
            None if t.get("operator").and_then(Value::as_str) == Some("Exists") => {
                tolerations.push("*".into())
            }
            None => {}
        }
    }
    let node_selector = pod
        .get("nodeSelector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let reps = if v.pointer("/spec/replicas").is_some() {
        replicas(v)
    } else {
        default_replicas
    };
    WorkloadSpec {
        kind,
        name: o.name().to_string(),
        namespace: ns,
        replicas: u32::try_from(reps).unwrap_or(u32::MAX),
        cpu: Cpu(req.cpu_millis),
        memory: Bytes(req.memory_bytes),
        priority_class: str_at(&pod, "/priorityClassName").map(str::to_string),
        volumes,
        tolerations,
        node_selector,
        service: false,
        pod_management_policy: match str_at(v, "/spec/podManagementPolicy") {
            Some("Parallel") => PodManagementPolicy::Parallel,
            _ => PodManagementPolicy::OrderedReady,
        },
        source: Some(o.file.clone()),
    }
}

impl Model for ArgoCd {
    fn name(&self) -> &'static str {
        "argocd"
    }

    fn start(&mut self, world: &mut World, me: ModelId) {
        for r in self.tree.root_names() {
            self.ensure_app(world, me, &r);
        }
    }

    fn on_wake(&mut self, world: &mut World, me: ModelId, tag: u64) {
        if tag == TAG_HEALTH {
            self.health_pending = false;
            // Children (created later) first, so parents see their fresh health.
            for i in (0..self.apps.len()).rev() {
                if self.apps[i].deleted {
                    continue;
                }
                if self.apps[i].op.is_some() {
                    self.run_op(world, me, i);
                } else {
                    self.refresh(world, me, i, false);
                }
            }
            return;
        }
        let i = (tag >> 2) as usize;
        if i >= self.apps.len() || self.apps[i].deleted {
            return;
        }
        match tag & 3 {
            TAG_RECONCILE if self.apps[i].next_reconcile == world.now() => {
                self.reconcile(world, me, i)
            }
            TAG_OP if self.apps[i].next_op == Some(world.now()) => {
                self.apps[i].next_op = None;
                self.run_op(world, me, i);
            }
            TAG_SELF_HEAL if self.apps[i].self_heal_at == Some(world.now()) => {
                self.apps[i].self_heal_at = None;
                if self.apps[i].op.is_none() {
                    self.refresh(world, me, i, false);
                }
            }
            _ => {}
        }
    }

    fn observe(&mut self, world: &mut World, me: ModelId, _event: &crate::TraceEvent) {
        if !self.health_pending {
            self.health_pending = true;
            world.wake(world.now() + HEALTH_REFRESH_DELAY, me, TAG_HEALTH);
        }
    }

    fn summary(&self, _world: &World) -> Vec<String> {
        let mut out = Vec::new();
        for a in self.apps.iter().filter(|a| !a.deleted) {
            out.push(format!(
                "argocd app {}: {:?} {:?}{}{}",
                a.name,
                a.sync,
                a.health,
                a.synced_healthy_at
                    .map(|t| format!(" since {}", fmt_time(t)))
                    .unwrap_or_default(),
                a.blocked
                    .as_ref()
                    .map(|b| format!(
                        " blocked at {:?} wave {} by {} ({})",
                        b.phase, b.wave, b.object, b.reason
                    ))
                    .unwrap_or_default()
            ));
        }
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(5 * SEC));
        assert_eq!(parse_duration("3m"), Some(3 * MIN));
        assert_eq!(parse_duration("1m30s"), Some(90 * SEC));
        assert_eq!(parse_duration("7"), Some(7 * SEC));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("5s3"), None);
    }
}

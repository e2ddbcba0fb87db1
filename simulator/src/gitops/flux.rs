//! Flux's source-, kustomize- and helm-controller as a simulator [`Model`] over a [`Tree`].
//!
//! ```no_run
//! # fn f(sim: &mut simulator::Sim, repo: simulator::gitops::repo::Repo) {
//! use simulator::gitops::flux::Flux;
//! let id = Flux::start(sim, repo);
//! sim.run_until(sim.now() + 30 * simulator::timings::MIN);
//! let flux = sim.model::<Flux>(id).unwrap();
//! let _ = (flux.ready("orchestration"), flux.ready_order());
//! # }
//! ```
//! Modelled: the bootstrap Kustomizations start at once; a Kustomization whose rendering holds
//! Kustomizations / HelmReleases creates them. Each object waits for its `dependsOn` to be Ready
//! (requeued every [`REQUEUE_DEPENDENCY`]), applies its objects (prune removes what left Git),
//! and with `wait` (always for HelmReleases) is Ready once every applied resource is Healthy,
//! or fails after `timeout` and retries after `retryInterval` (HelmRelease: up to
//! `install.remediation.retries` / `upgrade.remediation.retries`, then stalled). Charts are not
//! fetchable: a HelmRelease is one Deployment with its resource-estimate annotation's pods and
//! requests. Ready objects re-reconcile every `interval`; Git is read on each.
//! Not modelled: GitRepository fetch failures, health checks of custom resources, suspend,
//! Helm test/rollback actions, drift detection of HelmReleases.

use std::any::Any;
use std::collections::BTreeMap;

use serde_json::Value;

use super::argo::{Target, parse_duration, target_of};
use super::repo::Repo;
use super::tree::{Tree, Unit, UnitKind};
use crate::cluster::{Health, Object as KObject, ObjectKind};
use crate::engine::{Model, ModelId, Sim, World};
use crate::timings::{MIN, SEC};
use crate::topology::{Bytes, Cpu, WorkloadKind, WorkloadSpec};
use crate::{Time, fmt_time};

/// kustomize-controller `--requeue-dependency` default 30s: retry interval while a dependency
/// is not ready (Flux kustomize-controller options).
pub const REQUEUE_DEPENDENCY: Time = 30 * SEC;
/// HelmRelease `spec.timeout` default 5m0s (Flux HelmRelease API reference).
pub const HELM_TIMEOUT: Time = 5 * MIN;
/// Interval when a manifest gives none or an unparsable one (Flux requires the field; 10m is
/// the value the Flux docs' examples use).
pub const FALLBACK_INTERVAL: Time = 10 * MIN;
/// Health polling while waiting (kstatus polling; a modelling choice).
const POLL: Time = 2 * SEC;
const MAX_UNITS: usize = 1000;

#[derive(Debug, Clone)]
struct Obj {
    name: String,
    ready: Option<bool>,
    message: String,
    ready_at: Option<Time>,
    first_applied: Option<Time>,
    waiting_since: Option<Time>,
    failures: u32,
    stalled: bool,
    applied: BTreeMap<String, Target>,
    next: Time,
}

/// The Flux controllers model.
pub struct Flux {
    commits: Vec<(Time, Repo)>,
    tree: Tree,
    head: usize,
    objs: Vec<Obj>,
    by_name: BTreeMap<String, usize>,
    order: Vec<(String, Time)>,
}

fn dur(u: &Unit, field: &str) -> Option<Time> {
    u.definition
        .value
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
        .and_then(parse_duration)
}

impl Flux {
    pub fn new(repo: Repo) -> Self {
        Self {
            tree: Tree::build(&repo),
            commits: vec![(0, repo)],
            head: 0,
            objs: Vec::new(),
            by_name: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    /// Registers the controllers for `repo` on `sim`; the bootstrap objects are applied now.
    pub fn start(sim: &mut Sim, repo: Repo) -> ModelId {
        sim.add_model(Box::new(Self::new(repo)))
    }

    /// A Git commit visible from `at`, read by each object's next reconcile.
    pub fn commit(&mut self, at: Time, repo: Repo) {
        let last = self.commits.last().map_or(0, |c| c.0);
        self.commits.push((at.max(last), repo));
    }

    /// Ready condition of a Kustomization / HelmRelease: None while unknown, with its message.
    pub fn ready(&self, name: &str) -> Option<(Option<bool>, String)> {
        let o = &self.objs[*self.by_name.get(name)?];
        Some((o.ready, o.message.clone()))
    }

    /// (name, time) each object first became Ready, in order.
    pub fn ready_order(&self) -> &[(String, Time)] {
        &self.order
    }

    /// First time each object applied its resources.
    pub fn first_applied(&self, name: &str) -> Option<Time> {
        self.objs[*self.by_name.get(name)?].first_applied
    }

    /// Every object of the tree exists and is Ready.
    pub fn converged(&self) -> bool {
        self.tree.units.iter().all(|u| {
            self.by_name
                .get(&u.name)
                .is_some_and(|&i| self.objs[i].ready == Some(true))
        })
    }

    fn ensure(&mut self, world: &mut World, me: ModelId, name: &str) {
        if self.by_name.contains_key(name) || self.objs.len() >= MAX_UNITS {
            return;
        }
        let i = self.objs.len();
        self.objs.push(Obj {
            name: name.to_string(),
            ready: None,
            message: "reconciliation in progress".into(),
            ready_at: None,
            first_applied: None,
            waiting_since: None,
            failures: 0,
            stalled: false,
            applied: BTreeMap::new(),
            next: world.now(),
        });
        self.by_name.insert(name.to_string(), i);
        world.wake(world.now(), me, i as u64);
    }

    fn requeue(&mut self, world: &mut World, me: ModelId, i: usize, after: Time) {
        let at = world.now() + after;
        self.objs[i].next = at;
        world.wake(at, me, i as u64);
    }

    fn desired(unit: &Unit) -> Vec<(String, Target)> {
        if unit.kind == UnitKind::FluxHelmRelease {
            let Some((req, pods)) = unit.estimate else {
                return Vec::new();
            };
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
            return vec![(
                format!("HelmRelease {}/{}", unit.namespace, unit.name),
                Target::Cluster(
                    Box::new(KObject::Workload(spec)),
                    ObjectKind::Deployment,
                    unit.namespace.clone(),
                    unit.name.clone(),
                ),
            )];
        }
        let mut out: Vec<(String, Target)> = unit
            .objects
            .iter()
            .map(|o| {
                let t = match (o.group(), o.kind()) {
                    ("kustomize.toolkit.fluxcd.io", "Kustomization")
                    | ("helm.toolkit.fluxcd.io", "HelmRelease") => {
                        Target::ChildApp(o.name().to_string())
                    }
                    _ => target_of(o, &unit.objects, false),
                };
                (o.id(), t)
            })
            .collect();
        // Namespaces first, as Flux applies them (and CRDs) before other objects.
        out.sort_by_key(|(id, _)| !id.starts_with("Namespace "));
        out
    }

    fn healthy(&self, world: &World, t: &Target) -> Result<(), String> {
        match t {
            Target::Cluster(_, kind, ns, name) => match world.health(*kind, ns, name) {
                Health::Healthy => Ok(()),
                h => Err(format!("{kind:?} {ns}/{name}: {h:?}")),
            },
            Target::ChildApp(n) => match self.by_name.get(n).map(|&i| &self.objs[i]) {
                Some(o) if o.ready == Some(true) => Ok(()),
                _ => Err(format!("{n} not ready")),
            },
            Target::Opaque => Ok(()),
        }
    }

    fn reconcile(&mut self, world: &mut World, me: ModelId, i: usize) {
        let now = world.now();
        let head = self.commits.iter().rposition(|c| c.0 <= now).unwrap_or(0);
        if head != self.head {
            self.head = head;
            self.tree = Tree::build(&self.commits[head].1);
        }
        let name = self.objs[i].name.clone();
        let Some(unit) = self.tree.find(&name).map(|u| self.tree.units[u].clone()) else {
            return;
        };
        let interval = dur(&unit, "interval").unwrap_or(FALLBACK_INTERVAL);
        let retry = dur(&unit, "retryInterval").unwrap_or(interval);
        let is_helm = unit.kind == UnitKind::FluxHelmRelease;
        let timeout =
            dur(&unit, "timeout").unwrap_or(if is_helm { HELM_TIMEOUT } else { interval });
        let wait = is_helm
            || unit
                .definition
                .value
                .pointer("/spec/wait")
                .and_then(Value::as_bool)
                == Some(true);
        if self.objs[i].stalled {
            return;
        }
        // Waiting on an earlier apply.
        if let Some(since) = self.objs[i].waiting_since {
            let pending: Vec<String> = self.objs[i]
                .applied
                .values()
                .filter_map(|t| self.healthy(world, t).err())
                .collect();
            if pending.is_empty() {
                return self.mark_ready(world, me, i, interval);
            }
            if now >= since + timeout {
                return self.fail(
                    world,
                    me,
                    i,
                    &unit,
                    retry,
                    format!("timeout waiting for: {}", pending.join(", ")),
                );
            }
            self.objs[i].message = format!("waiting for: {}", pending[0]);
            return self.requeue(world, me, i, POLL);
        }
        for d in &unit.depends_on {
            let ok = self
                .by_name
                .get(d)
                .is_some_and(|&j| self.objs[j].ready == Some(true));
            if !ok {
                self.objs[i].message = format!("dependency '{d}' is not ready");
                self.objs[i].ready = Some(false);
                return self.requeue(world, me, i, REQUEUE_DEPENDENCY);
            }
        }
        // A path that does not build (YAML that does not parse, a missing file): Ready=False,
        // BuildFailed, retried at retryInterval; what was applied before stays.
        let unit_id = unit.definition.id();
        if let Some(f) = self.tree.findings.iter().find(|f| f.object == unit_id) {
            let msg = format!("BuildFailed: {f}");
            return self.fail(world, me, i, &unit, retry, msg);
        }
        let desired = Self::desired(&unit);
        for (_, t) in &desired {
            let r = match t {
                Target::Cluster(obj, ObjectKind::Namespace, ns, _) => {
                    if world.health(ObjectKind::Namespace, ns, ns) == Health::Missing {
                        world.apply((**obj).clone()).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    }
                }
                Target::Cluster(obj, _, _, _) => {
                    world.apply((**obj).clone()).map_err(|e| e.to_string())
                }
                Target::ChildApp(n) => {
                    self.ensure(world, me, n);
                    Ok(())
                }
                Target::Opaque => Ok(()),
            };
            if let Err(e) = r {
                return self.fail(world, me, i, &unit, retry, e);
            }
        }
        let prune = unit
            .definition
            .value
            .pointer("/spec/prune")
            .and_then(Value::as_bool)
            == Some(true);
        let ids: Vec<&String> = desired.iter().map(|(id, _)| id).collect();
        let gone: Vec<String> = self.objs[i]
            .applied
            .keys()
            .filter(|k| !ids.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(Target::Cluster(_, kind, ns, n)) = self.objs[i].applied.remove(&k)
                && prune
            {
                let _ = world.delete(kind, &ns, &n);
            }
        }
        let o = &mut self.objs[i];
        o.applied = desired.into_iter().collect();
        o.first_applied.get_or_insert(now);
        world.trace_ext("flux", "applied", format!("{name} at {}", fmt_time(now)));
        if wait {
            o.waiting_since = Some(now);
            self.reconcile(world, me, i);
        } else {
            self.mark_ready(world, me, i, interval);
        }
    }

    fn mark_ready(&mut self, world: &mut World, me: ModelId, i: usize, interval: Time) {
        let now = world.now();
        let o = &mut self.objs[i];
        o.waiting_since = None;
        o.failures = 0;
        o.message = "applied revision".into();
        if o.ready != Some(true) {
            o.ready = Some(true);
            o.ready_at = Some(now);
            self.order.push((o.name.clone(), now));
            world.trace_ext("flux", "ready", o.name.clone());
        }
        self.requeue(world, me, i, interval);
    }

    fn fail(
        &mut self,
        world: &mut World,
        me: ModelId,
        i: usize,
        unit: &Unit,
        retry: Time,
        msg: String,
    ) {
        let o = &mut self.objs[i];
        o.waiting_since = None;
        o.ready = Some(false);
        o.failures += 1;
        o.message = msg.clone();
        world.trace_ext("flux", "failed", format!("{}: {msg}", o.name));
        if unit.kind == UnitKind::FluxHelmRelease {
            let action = if o.ready_at.is_some() {
                "upgrade"
            } else {
                "install"
            };
            let retries = unit
                .definition
                .value
                .pointer(&format!("/spec/{action}/remediation/retries"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if retries >= 0 && i64::from(o.failures) > retries {
                o.stalled = true;
                o.message = format!("{action} retries exhausted: {msg}");
                return;
            }
        }
        self.requeue(world, me, i, retry);
    }
}

impl Model for Flux {
    fn name(&self) -> &'static str {
        "flux"
    }

    fn start(&mut self, world: &mut World, me: ModelId) {
        for r in self.tree.root_names() {
            self.ensure(world, me, &r);
        }
    }

    fn on_wake(&mut self, world: &mut World, me: ModelId, tag: u64) {
        let i = tag as usize;
        if i < self.objs.len() && self.objs[i].next == world.now() {
            self.reconcile(world, me, i);
        }
    }

    fn summary(&self, _world: &World) -> Vec<String> {
        self.objs
            .iter()
            .map(|o| format!("flux {}: ready={:?} {}", o.name, o.ready, o.message))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

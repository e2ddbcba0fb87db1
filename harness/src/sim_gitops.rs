//! GitOps in the `sim` backend: the simulator's ArgoCD and Flux models reconciling a platform's
//! repository under `fixtures/gitops/<repo>/` (the scenario's `workload.gitops`).
//!
//! - The controller is the topology's (`gitops: argocd | flux`). Its bootstrap objects
//!   (`bootstrap/`) are applied when every node is first Ready, as an operator does after
//!   installing the controller; the platform's workloads then come from the tree, not from the
//!   topology's documented list.
//! - `argocd_drift` edits a live object the way `kubectl scale`/`kubectl delete` does, then the
//!   controller's watch sees it (self-heal follows, see `simulator::gitops::argo`).
//! - `git_commit` commits an edited copy of the repository; each Application / Kustomization
//!   reads it on its next reconcile.
//! - Waits and assertions on Applications and Kustomizations read the models' status.
//!
//! A child module of `sim` so it can drive the session's bounded run loop.

use std::any::Any;
use std::path::Path;

use simulator::gitops::argo::{AppHealth, ArgoCd, SyncStatus as ArgoSync};
use simulator::gitops::flux::Flux;
use simulator::gitops::loader::read_repo;
use simulator::gitops::repo::Repo;
use simulator::gitops::tree::{Tree, UnitKind};
use simulator::{Model, ModelId, Object as KObject, ObjectKind, Sim, TraceEvent, World};

use super::{SimSession, track, us_to_ms};
use crate::backend::{Advance, Check, Probe, Session, StopCheck};
use crate::outcome::{Marker, Track};
use crate::scenario::{Assertion, Fault, GitopsWorkload, HealthStatus, SyncStatus, TextEdit, Wait};

/// Fault kinds this module performs.
pub(super) const FAULTS: &[&str] = &["argocd_drift", "git_commit"];
/// Assertion kinds this module checks.
pub(super) const ASSERTIONS: &[&str] = &[
    "app.status",
    "flux.ready_order",
    "argocd.sync_order",
    "flux.status",
    "app.blocked",
];
/// Wait conditions this module waits for.
pub(super) const WAITS: &[&str] = &["app", "kustomization"];

/// Most times one wait may stop on a GitOps status change before it gives up (each stop is one
/// traced status change; a converging mlworkbench tree traces a few thousand).
const MAX_STATUS_STOPS: u32 = 1_000_000;

/// Trace model names of the GitOps controllers.
const TRACE_MODELS: &[&str] = &["argocd", "flux", "gitops"];

/// Which controller reconciles the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Controller {
    Argo,
    Flux,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Argo => "ArgoCD",
            Controller::Flux => "Flux",
        }
    }
}

/// The case's GitOps state in the session.
pub(super) struct Gitops {
    id: ModelId,
    controller: Controller,
    repo_name: String,
    /// The repository as last committed (the next commit edits this).
    head: Repo,
}

enum Inner {
    Argo(Box<ArgoCd>),
    Flux(Box<Flux>),
}

/// The controller as a simulator model, bootstrapped when every node is first Ready.
pub struct Bootstrap {
    inner: Inner,
    started_at: Option<u64>,
}

/// A hand edit happened outside the event loop: the controller's watch sees it now.
struct Watched {
    object: String,
}

impl Bootstrap {
    fn inner(&self) -> &dyn Model {
        match &self.inner {
            Inner::Argo(a) => a.as_ref(),
            Inner::Flux(f) => f.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Model {
        match &mut self.inner {
            Inner::Argo(a) => a.as_mut(),
            Inner::Flux(f) => f.as_mut(),
        }
    }

    fn argo(&self) -> Option<&ArgoCd> {
        match &self.inner {
            Inner::Argo(a) if self.started_at.is_some() => Some(a),
            _ => None,
        }
    }

    fn flux(&self) -> Option<&Flux> {
        match &self.inner {
            Inner::Flux(f) if self.started_at.is_some() => Some(f),
            _ => None,
        }
    }

    fn maybe_start(&mut self, world: &mut World, me: ModelId) {
        if self.started_at.is_some() || !world.nodes_ready() {
            return;
        }
        self.started_at = Some(world.now());
        world.trace_ext(
            "gitops",
            "bootstrap",
            "every node Ready: bootstrap/ applied".to_string(),
        );
        self.inner_mut().start(world, me);
    }
}

impl Model for Bootstrap {
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    fn start(&mut self, world: &mut World, me: ModelId) {
        self.maybe_start(world, me);
    }

    fn on_wake(&mut self, world: &mut World, me: ModelId, tag: u64) {
        if self.started_at.is_some() {
            self.inner_mut().on_wake(world, me, tag);
        }
    }

    fn on_message(&mut self, world: &mut World, me: ModelId, payload: Box<dyn Any>) {
        if let Ok(w) = payload.downcast::<Watched>()
            && self.started_at.is_some()
        {
            let ev = TraceEvent::Applied {
                object: w.object,
                action: "hand-edit".into(),
            };
            self.inner_mut().observe(world, me, &ev);
        }
    }

    fn observe(&mut self, world: &mut World, me: ModelId, event: &TraceEvent) {
        if self.started_at.is_some() {
            self.inner_mut().observe(world, me, event);
        } else {
            self.maybe_start(world, me);
        }
    }

    fn check(&self, world: &World) -> Result<(), (String, String)> {
        self.inner().check(world)
    }

    fn summary(&self, world: &World) -> Vec<String> {
        self.inner().summary(world)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Loads `fixtures/gitops/<repo>` and registers its controller on `sim`.
pub(super) fn start(root: &Path, sim: &mut Sim, g: &GitopsWorkload) -> Result<Gitops, String> {
    let dir = root.join("fixtures/gitops").join(&g.repo);
    let repo = read_repo(&dir)
        .map_err(|e| format!("failed to read GitOps repo fixtures/gitops/{}: {e}", g.repo))?;
    let tree = Tree::build(&repo);
    let flux_tree = tree.units.iter().any(|u| {
        matches!(
            u.kind,
            UnitKind::FluxKustomization | UnitKind::FluxHelmRelease
        )
    });
    let topo = sim.world().topology();
    let controller = match topo.gitops.as_deref() {
        Some("argocd") => Controller::Argo,
        Some("flux") => Controller::Flux,
        Some(other) => {
            return Err(format!(
                "topology {} names GitOps controller `{other}` (the simulator models argocd and flux)",
                topo.name
            ));
        }
        None if flux_tree => Controller::Flux,
        None => Controller::Argo,
    };
    if (controller == Controller::Flux) != flux_tree {
        return Err(format!(
            "topology {} runs {} but fixtures/gitops/{} is {} tree",
            topo.name,
            controller.name(),
            g.repo,
            if flux_tree { "a Flux" } else { "an ArgoCD" }
        ));
    }
    if let Some(r) = &g.root {
        let roots: Vec<&str> = tree
            .units
            .iter()
            .filter(|u| u.parent.is_none())
            .map(|u| u.name.as_str())
            .collect();
        if !roots.contains(&r.as_str()) {
            return Err(format!(
                "`workload.gitops.root` is `{r}` but fixtures/gitops/{}/bootstrap/ applies: {}",
                g.repo,
                roots.join(", ")
            ));
        }
    }
    let inner = match controller {
        Controller::Argo => Inner::Argo(Box::new(ArgoCd::new(repo.clone()))),
        Controller::Flux => Inner::Flux(Box::new(Flux::new(repo.clone()))),
    };
    let id = sim.add_model(Box::new(Bootstrap {
        inner,
        started_at: None,
    }));
    Ok(Gitops {
        id,
        controller,
        repo_name: g.repo.clone(),
        head: repo,
    })
}

/// A GitOps condition to advance to.
#[derive(Debug, Clone)]
enum Goal {
    App {
        app: String,
        sync: Option<SyncStatus>,
        health: Option<HealthStatus>,
    },
    Kustomization(String),
    Assertion(Assertion),
}

fn sync_of(s: ArgoSync) -> SyncStatus {
    match s {
        ArgoSync::Synced => SyncStatus::Synced,
        ArgoSync::OutOfSync => SyncStatus::OutOfSync,
        ArgoSync::Unknown => SyncStatus::Unknown,
    }
}

fn health_of(h: AppHealth) -> HealthStatus {
    match h {
        AppHealth::Healthy => HealthStatus::Healthy,
        AppHealth::Progressing => HealthStatus::Progressing,
        AppHealth::Missing => HealthStatus::Missing,
        AppHealth::Degraded => HealthStatus::Degraded,
    }
}

/// `Kind/namespace/name` or `Kind/name` (cluster-scoped) to the model's `Kind namespace/name`.
fn object_id(object: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = object.split('/').collect();
    match parts.as_slice() {
        [kind, ns, name] => Ok((kind.to_string(), ns.to_string(), name.to_string())),
        [kind, name] => Ok((kind.to_string(), String::new(), name.to_string())),
        _ => Err(format!(
            "object `{object}` is not `Kind/namespace/name` (e.g. `Deployment/minio/minio`)"
        )),
    }
}

fn object_kind(kind: &str) -> Option<ObjectKind> {
    Some(match kind {
        "Namespace" => ObjectKind::Namespace,
        "ResourceQuota" => ObjectKind::ResourceQuota,
        "PriorityClass" => ObjectKind::PriorityClass,
        "Deployment" => ObjectKind::Deployment,
        "StatefulSet" => ObjectKind::StatefulSet,
        "DaemonSet" => ObjectKind::DaemonSet,
        "Service" => ObjectKind::Service,
        "PersistentVolumeClaim" => ObjectKind::Pvc,
        "StorageClass" => ObjectKind::StorageClass,
        _ => return None,
    })
}

/// The repository with `path` changed as the commit says; the text says what changed.
fn edited(
    head: &Repo,
    path: &str,
    breaks: bool,
    replace: Option<&TextEdit>,
    remove: bool,
) -> Result<(Repo, String), String> {
    let path = simulator::gitops::repo::normalize(path);
    let mut files = head.files.clone();
    let Some(text) = files.get(&path).cloned() else {
        let known: Vec<String> = files.keys().cloned().collect();
        let hint = crate::load::did_you_mean(&path, &known)
            .map(|b| format!(", did you mean `{b}`?"))
            .unwrap_or_default();
        return Err(format!(
            "the repository has no file `{path}`{hint} ({} files)",
            files.len()
        ));
    };
    let what = match (breaks, replace, remove) {
        (true, None, false) => {
            // A typo that stops the YAML from parsing: an unclosed flow sequence on the first
            // `kind:` line (or an appended one when the file has none).
            let (new, line) = match text.lines().position(|l| l.starts_with("kind:")) {
                Some(i) => {
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    lines[i] = lines[i].replacen("kind: ", "kind: [", 1);
                    (lines.join("\n") + "\n", i + 1)
                }
                None => (format!("{text}\nkind: [\n"), text.lines().count() + 2),
            };
            files.insert(path.clone(), new);
            format!("{path}:{line} made unparseable (an unclosed `[`)")
        }
        (false, Some(e), false) => {
            if !text.contains(&e.from) {
                return Err(format!(
                    "file `{path}` does not contain `{}` (the text `replace.from` must match)",
                    e.from
                ));
            }
            let line = text[..text.find(&e.from).unwrap_or(0)]
                .lines()
                .count()
                .max(1);
            files.insert(path.clone(), text.replacen(&e.from, &e.to, 1));
            format!("{path}:{line}: `{}` -> `{}`", e.from, e.to)
        }
        (false, None, true) => {
            files.remove(&path);
            format!("{path} removed")
        }
        _ => {
            return Err(
                "a `git_commit` takes exactly one of `breaks: true`, `replace: {from, to}`, `remove: true`"
                    .into(),
            );
        }
    };
    Ok((Repo::new(head.revision + 1, files), what))
}

impl SimSession {
    fn bootstrap(&self) -> Option<&Bootstrap> {
        let g = self.gitops.as_ref()?;
        self.sim.model::<Bootstrap>(g.id)
    }

    /// Why the controller cannot answer yet (not in the case, or not bootstrapped).
    fn not_running(&self, want: Controller) -> String {
        match &self.gitops {
            None => format!(
                "the scenario has no `workload.gitops`: no {} runs",
                want.name()
            ),
            Some(g) if g.controller != want => format!(
                "fixtures/gitops/{} is reconciled by {}, not {}",
                g.repo_name,
                g.controller.name(),
                want.name()
            ),
            Some(g) => {
                let not_ready: Vec<&str> = self
                    .world()
                    .nodes()
                    .iter()
                    .filter(|n| !n.ready)
                    .map(|n| n.name.as_str())
                    .collect();
                format!(
                    "{} is not bootstrapped yet: bootstrap/ of fixtures/gitops/{} is applied once every node is Ready (not Ready: {})",
                    g.controller.name(),
                    g.repo_name,
                    not_ready.join(", ")
                )
            }
        }
    }

    fn argo(&self) -> Result<&ArgoCd, String> {
        self.bootstrap()
            .and_then(Bootstrap::argo)
            .ok_or_else(|| self.not_running(Controller::Argo))
    }

    fn flux(&self) -> Result<&Flux, String> {
        self.bootstrap()
            .and_then(Bootstrap::flux)
            .ok_or_else(|| self.not_running(Controller::Flux))
    }

    /// One line on an Application: sync, health, why, where its sync waits.
    fn app_line(&self, app: &str) -> Result<(ArgoSync, AppHealth, String), String> {
        let argo = self.argo()?;
        let Some(s) = argo.status(app) else {
            let apps = argo.apps();
            let hint = crate::load::did_you_mean(app, &apps)
                .map(|b| format!(", did you mean `{b}`?"))
                .unwrap_or_default();
            return Err(format!(
                "application `{app}` does not exist (yet){hint} (existing: {})",
                apps.join(", ")
            ));
        };
        let mut d = format!("app {app} is {:?} {:?}", s.sync, s.health);
        if let Some(t) = s.synced_healthy_at {
            d.push_str(&format!(" since {}", simulator::fmt_time(t)));
        }
        if s.health != AppHealth::Healthy && !s.health_message.is_empty() {
            d.push_str(&format!(" ({})", s.health_message));
        }
        if let Some(c) = &s.condition {
            d.push_str(&format!("; {c}"));
        }
        if let Some(b) = &s.blocked {
            d.push_str(&format!(
                "; sync held at {:?} wave {} by {} ({}) since {}",
                b.phase,
                b.wave,
                b.object,
                b.reason,
                simulator::fmt_time(b.since)
            ));
        }
        if let Some(r) = s.synced_revision {
            d.push_str(&format!("; synced revision {r}"));
        }
        d.push_str(&format!("; {} sync attempt(s)", s.sync_attempts));
        Ok((s.sync, s.health, d))
    }

    fn goal_holds(&self, goal: &Goal) -> bool {
        match goal {
            Goal::App { app, sync, health } => self.app_line(app).is_ok_and(|(s, h, _)| {
                sync.unwrap_or(SyncStatus::Synced) == sync_of(s)
                    && health.unwrap_or(HealthStatus::Healthy) == health_of(h)
            }),
            Goal::Kustomization(k) => self
                .flux()
                .ok()
                .and_then(|f| f.ready(k))
                .is_some_and(|(r, _)| r == Some(true)),
            Goal::Assertion(a) => matches!(self.check_gitops(a), Check::Pass(_)),
        }
    }

    fn goal_state(&self, goal: &Goal) -> String {
        match goal {
            Goal::App { app, .. } => match self.app_line(app) {
                Ok((_, _, d)) => d,
                Err(e) => e,
            },
            Goal::Kustomization(k) => match self.flux() {
                Err(e) => e,
                Ok(f) => match f.ready(k) {
                    None => format!("kustomization {k} does not exist (yet)"),
                    Some((r, m)) => format!(
                        "kustomization {k} is {}: {m}",
                        match r {
                            Some(true) => "Ready",
                            Some(false) => "not Ready",
                            None => "Unknown",
                        }
                    ),
                },
            },
            Goal::Assertion(a) => match self.check_gitops(a) {
                Check::Pass(d) | Check::Fail(d) | Check::Skip(d) => d,
            },
        }
    }

    fn goal_of(probe: Probe<'_>) -> Option<Goal> {
        match probe {
            Probe::Wait(Wait {
                app: Some(app),
                sync,
                health,
                ..
            }) => Some(Goal::App {
                app: app.clone(),
                sync: *sync,
                health: *health,
            }),
            Probe::Wait(Wait {
                kustomization: Some(k),
                ..
            }) => Some(Goal::Kustomization(k.clone())),
            Probe::Assertion(a) if ASSERTIONS.contains(&a.kind()) => {
                Some(Goal::Assertion(a.clone()))
            }
            _ => None,
        }
    }

    /// Advances a GitOps wait or `within` assertion: `None` when the probe is not one.
    pub(super) fn advance_gitops(
        &mut self,
        probe: Probe<'_>,
        deadline_us: u64,
        stop: StopCheck<'_>,
    ) -> Option<Advance> {
        let goal = Self::goal_of(probe)?;
        let mut out = Advance::DeadlinePassed(String::new());
        for _ in 0..MAX_STATUS_STOPS {
            if self.goal_holds(&goal) {
                out = Advance::Reached;
                break;
            }
            if self.sim.now() >= deadline_us {
                break;
            }
            // Run to the next GitOps status change (or the deadline).
            let mut seen_total = self.sim.trace().total();
            let mut seen = self.sim.trace().entries().len();
            let r = self.run(deadline_us, stop, move |w| {
                let tr = w.trace();
                if tr.total() == seen_total {
                    return false;
                }
                seen_total = tr.total();
                let entries = tr.entries();
                let capped = entries.len() as u64 != tr.total();
                let new = entries.get(seen..).unwrap_or_default();
                seen = entries.len();
                capped
                    || new.iter().any(|e| {
                        matches!(&e.event, TraceEvent::Ext { model, .. }
                            if TRACE_MODELS.contains(&model.as_str()))
                    })
            });
            match r {
                Ok(true) => {}
                Ok(false) => {
                    if self.goal_holds(&goal) {
                        out = Advance::Reached;
                    }
                    break;
                }
                Err(a) => {
                    out = a;
                    break;
                }
            }
        }
        self.last_step_end_us = self.sim.now();
        if let Advance::DeadlinePassed(_) = out {
            out = Advance::DeadlinePassed(self.goal_state(&goal));
        }
        Some(out)
    }

    /// Checks a GitOps assertion now.
    pub(super) fn check_gitops(&self, a: &Assertion) -> Check {
        match a {
            Assertion::AppStatus {
                app, sync, health, ..
            } => match self.app_line(app) {
                Err(e) => Check::Fail(e),
                Ok((s, h, d)) => Check::verdict(
                    sync.is_none_or(|w| w == sync_of(s))
                        && health.is_none_or(|w| w == health_of(h)),
                    d,
                ),
            },
            Assertion::AppBlocked { app, wave, by } => match self.argo() {
                Err(e) => Check::Fail(e),
                Ok(argo) => match argo.status(app).map(|s| s.blocked) {
                    None => Check::Fail(format!("application `{app}` does not exist (yet)")),
                    Some(None) => Check::Fail(match self.app_line(app) {
                        Ok((_, _, d)) => format!("no wave of {app} is held: {d}"),
                        Err(e) => e,
                    }),
                    Some(Some(b)) => {
                        let d = format!(
                            "app {app}: {:?} wave {} held since {} by {} ({})",
                            b.phase,
                            b.wave,
                            simulator::fmt_time(b.since),
                            b.object,
                            b.reason
                        );
                        Check::verdict(
                            wave.is_none_or(|w| w == b.wave)
                                && by.as_ref().is_none_or(|o| b.object.contains(o.as_str())),
                            d,
                        )
                    }
                },
            },
            Assertion::ArgocdSyncOrder(apps) => match self.argo() {
                Err(e) => Check::Fail(e),
                Ok(argo) => {
                    let times: Vec<(String, Option<u64>)> = apps
                        .iter()
                        .map(|a| (a.clone(), argo.first_synced_healthy(a)))
                        .collect();
                    order_verdict(&times, "first Synced and Healthy")
                }
            },
            Assertion::FluxStatus {
                kustomization,
                ready,
            } => match self.flux() {
                Err(e) => Check::Fail(e),
                Ok(flux) => match flux.ready(kustomization) {
                    None => Check::verdict(
                        !*ready,
                        format!("kustomization {kustomization} does not exist (yet)"),
                    ),
                    Some((r, m)) => Check::verdict(
                        r == Some(true) && *ready || r != Some(true) && !*ready,
                        format!(
                            "kustomization {kustomization} is {}: {m}",
                            match r {
                                Some(true) => "Ready",
                                Some(false) => "not Ready",
                                None => "Unknown",
                            }
                        ),
                    ),
                },
            },
            Assertion::FluxReadyOrder(names) => match self.flux() {
                Err(e) => Check::Fail(e),
                Ok(flux) => {
                    let times: Vec<(String, Option<u64>)> = names
                        .iter()
                        .map(|n| {
                            let t = flux
                                .ready_order()
                                .iter()
                                .find(|(m, _)| m == n)
                                .map(|(_, t)| *t);
                            (n.clone(), t)
                        })
                        .collect();
                    order_verdict(&times, "Ready")
                }
            },
            other => Check::Skip(format!("`{}` is not a GitOps assertion", other.kind())),
        }
    }

    /// Performs a GitOps fault: `None` when the fault is not one.
    pub(super) fn inject_gitops(&mut self, fault: &Fault) -> Option<Result<String, String>> {
        let r = match fault {
            Fault::ArgocdDrift {
                app,
                object,
                replicas,
                delete,
            } => self.drift(app, object, *replicas, *delete),
            Fault::GitCommit {
                path,
                breaks,
                replace,
                remove,
            } => self.commit(path, *breaks, replace.as_ref(), *remove),
            _ => return None,
        };
        Some(r.map(|text| {
            self.markers.push(Marker {
                at_ms: self.now_ms(),
                label: text.clone(),
            });
            self.last_step_end_us = self.sim.now();
            format!("{text} at {}", simulator::fmt_time(self.sim.now()))
        }))
    }

    fn drift(
        &mut self,
        app: &str,
        object: &str,
        replicas: Option<u32>,
        delete: bool,
    ) -> Result<String, String> {
        let argo = self.argo()?;
        let (kind, ns, name) = object_id(object)?;
        let id = if ns.is_empty() {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        let managed = argo.resources(app);
        if argo.status(app).is_none() {
            return Err(format!("application `{app}` does not exist (yet)"));
        }
        if !managed.contains(&id) {
            return Err(format!(
                "application {app} manages no `{id}` (it manages: {})",
                managed.join(", ")
            ));
        }
        let ok = object_kind(&kind).ok_or_else(|| {
            format!("the simulator keeps no live `{kind}` objects to edit (it models Deployment, StatefulSet, DaemonSet, Service, PersistentVolumeClaim, Namespace, ResourceQuota, PriorityClass, StorageClass)")
        })?;
        let key_ns = if ns.is_empty() {
            name.clone()
        } else {
            ns.clone()
        };
        let text = if delete {
            let existed = self
                .sim
                .world_mut()
                .delete(ok, &key_ns, &name)
                .map_err(|e| e.to_string())?;
            if !existed {
                return Err(format!("live object {id} does not exist"));
            }
            format!("hand edit: kubectl delete {id} (app {app})")
        } else {
            let wk = match ok {
                ObjectKind::Deployment => simulator::topology::WorkloadKind::Deployment,
                ObjectKind::StatefulSet => simulator::topology::WorkloadKind::StatefulSet,
                ObjectKind::DaemonSet => simulator::topology::WorkloadKind::DaemonSet,
                _ => {
                    return Err(format!(
                        "only workloads can be scaled by hand; write `delete: true` to delete {id}"
                    ));
                }
            };
            let mut spec = self
                .world()
                .workload(wk, &ns, &name)
                .ok_or_else(|| format!("live object {id} does not exist"))?
                .spec
                .clone();
            let to = replicas.unwrap_or(0);
            if spec.replicas == to {
                return Err(format!(
                    "{id} already runs {to} replica(s): scaling to it changes nothing"
                ));
            }
            let from = spec.replicas;
            spec.replicas = to;
            self.sim
                .world_mut()
                .apply(KObject::Workload(spec))
                .map_err(|e| e.to_string())?;
            format!("hand edit: kubectl scale {id} --replicas={to} (was {from}; app {app})")
        };
        // The controller's watch sees the change now.
        let id_model = self.gitops.as_ref().map(|g| g.id).ok_or("no GitOps")?;
        let now = self.sim.now();
        self.sim
            .world_mut()
            .send_to_model(now, id_model, Box::new(Watched { object: id }));
        Ok(text)
    }

    fn commit(
        &mut self,
        path: &str,
        breaks: bool,
        replace: Option<&TextEdit>,
        remove: bool,
    ) -> Result<String, String> {
        let Some(g) = self.gitops.as_ref() else {
            return Err("`git_commit` needs a `workload.gitops` in the scenario".into());
        };
        let (repo, what) = edited(&g.head, path, breaks, replace, remove)?;
        let (id, controller, rev) = (g.id, g.controller, repo.revision);
        let now = self.sim.now();
        let b = self
            .sim
            .model_mut::<Bootstrap>(id)
            .ok_or("the GitOps model is not registered")?;
        match &mut b.inner {
            Inner::Argo(a) => a.commit(now, repo.clone()),
            Inner::Flux(f) => f.commit(now, repo.clone()),
        }
        if let Some(g) = self.gitops.as_mut() {
            g.head = repo;
        }
        Ok(format!(
            "git commit revision {rev}: {what} ({} reads it on its next reconcile)",
            controller.name()
        ))
    }

    /// App and Kustomization tracks and GitOps metrics for the reports.
    pub(super) fn observe_gitops(
        &self,
        apps: &mut std::collections::BTreeMap<String, Track>,
        metrics: &mut std::collections::BTreeMap<String, f64>,
    ) {
        let Some(b) = self.bootstrap() else {
            return;
        };
        for e in self.sim.trace().entries() {
            let TraceEvent::Ext {
                model,
                kind,
                detail,
            } = &e.event
            else {
                continue;
            };
            let t = us_to_ms(e.at);
            match (model.as_str(), kind.as_str()) {
                ("argocd", "status") => {
                    if let Some((name, state)) = detail.split_once(": ") {
                        track(apps, &format!("app {name}"), t, state);
                    }
                }
                ("flux", "applied") => {
                    if let Some((name, _)) = detail.split_once(" at ") {
                        track(apps, &format!("ks {name}"), t, "Applied");
                    }
                }
                ("flux", "ready") => track(apps, &format!("ks {detail}"), t, "Ready"),
                ("flux", "failed") => {
                    if let Some((name, _)) = detail.split_once(": ") {
                        track(apps, &format!("ks {name}"), t, "Failed");
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = b.started_at {
            metrics.insert("gitops_bootstrap_ms".into(), us_to_ms(t) as f64);
        }
        if let Some(a) = b.argo() {
            let names = a.apps();
            metrics.insert("argocd_apps".into(), names.len() as f64);
            let healthy = names
                .iter()
                .filter_map(|n| a.status(n))
                .filter(|s| s.sync == ArgoSync::Synced && s.health == AppHealth::Healthy)
                .count();
            metrics.insert("argocd_apps_synced_healthy".into(), healthy as f64);
            if a.converged()
                && let Some(t) = names.iter().filter_map(|n| a.first_synced_healthy(n)).max()
            {
                metrics.insert("argocd_converged_ms".into(), us_to_ms(t) as f64);
            }
        }
        if let Some(f) = b.flux() {
            if f.converged()
                && let Some((_, t)) = f.ready_order().iter().max_by_key(|(_, t)| *t)
            {
                metrics.insert("flux_converged_ms".into(), us_to_ms(*t) as f64);
            }
            metrics.insert("flux_ready".into(), f.ready_order().len() as f64);
        }
    }
}

/// Passes when every name has a time and the times follow the listed order.
fn order_verdict(times: &[(String, Option<u64>)], what: &str) -> Check {
    let listed: Vec<String> = times
        .iter()
        .map(|(n, t)| match t {
            Some(t) => format!("{n} at {}", simulator::fmt_time(*t)),
            None => format!("{n} never"),
        })
        .collect();
    let missing: Vec<&str> = times
        .iter()
        .filter(|(_, t)| t.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let ordered = times.windows(2).all(|w| match (w[0].1, w[1].1) {
        (Some(a), Some(b)) => a <= b,
        _ => false,
    });
    let d = format!("{what}: {}", listed.join(", "));
    if !missing.is_empty() {
        return Check::Fail(format!("not yet {what}: {}; {d}", missing.join(", ")));
    }
    Check::verdict(ordered, d)
}

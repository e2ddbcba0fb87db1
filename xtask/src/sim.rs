//! `cargo xtask sim`: run one topology in the simulator and print a summary that ends with
//! `trace-hash: <hex>`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use simulator::fault::{faults_json, parse_faults_json};
use simulator::gitops::argo::ArgoCd;
use simulator::gitops::flux::Flux;
use simulator::gitops::loader::read_repo;
use simulator::shrink::{random_faults, shrink_recovery};
use simulator::timings::{MIN, SEC};
use simulator::{Sim, SimOptions, Stop, Topology, WorkloadOverride};

const USAGE: &str = "usage: cargo xtask sim --topology NAME|PATH [--seed N] [--until 30m]
       [--override WORKLOAD=replicas:R,cpu:C,memory:M]... [--faults-json JSON] [--random-faults K]
       [--shrink] [--check-determinism] [--trace] [--schema] [--gitops [REPO] | --no-gitops]
       [--fl CLIENTS[xROUNDS]]

  --topology        fixtures/topologies/NAME.yaml or a path
  --until           virtual time to run (s, m, h suffix; default 30m)
  --random-faults   K random faults drawn from the seed, spread over the run
  --shrink          if the run does not recover (API, quorum, nodes Ready) within 15m after the
                    last fault, shrink the fault schedule to a minimal failing one
  --check-determinism  run twice and compare trace hashes
  --trace           print every trace entry
  --fl              run an FL job (FedAvg, default 5 rounds, every client awaited) on the cluster:
                    its coordinator Deployment and client StatefulSet (the topology's fl-coordinator
                    and fl-worker when it documents them, with --override applied) are scheduled
                    like any pod; the summary says which pods run and why the others are Pending
  --gitops [REPO]   deploy the platform by GitOps instead of the topology's documented workloads:
                    once every node is Ready, the topology's controller (`gitops: argocd|flux`)
                    applies fixtures/gitops/REPO/bootstrap/ (REPO defaults to the topology name
                    up to its first `-`: mlworkbench-kvm -> mlworkbench; with a `/`, REPO is a
                    repository folder); the summary lists each sync wave (ArgoCD) or Ready
                    Kustomization (Flux) with its times, and every wave held by an unhealthy
                    resource. On by default for a topology that names a controller and has
                    a repository under fixtures/gitops/ (mlworkbench, fluodata, k3s, mlops)
  --no-gitops       run the topology's documented workloads only, without its GitOps tree
  --schema          write fixtures/topologies/topology.schema.json and exit";

fn parse_duration(s: &str) -> Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], SEC),
        Some('m') => (&s[..s.len() - 1], MIN),
        Some('h') => (&s[..s.len() - 1], 60 * MIN),
        _ => (s, SEC),
    };
    let v: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?} (expected e.g. 90s, 30m, 24h)"))?;
    Ok(v * mult)
}

pub fn run(args: Vec<String>) -> Result<()> {
    let mut topology = None;
    let mut seed = 0u64;
    let mut until = 30 * MIN;
    let mut options = SimOptions::default();
    let (mut do_shrink, mut determinism, mut trace, mut random) = (false, false, false, 0usize);
    let mut fl: Option<(usize, u64)> = None;
    let mut gitops: Option<Option<String>> = None;
    let mut no_gitops = false;
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if a == "--no-gitops" {
            no_gitops = true;
            continue;
        }
        if a == "--gitops" {
            let repo = it.next_if(|v| !v.starts_with('-'));
            gitops = Some(repo);
            continue;
        }
        let mut val = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--topology" => topology = Some(val()?),
            "--seed" => {
                seed = val()?
                    .parse()
                    .context("--seed must be an unsigned integer")?
            }
            "--until" => until = parse_duration(&val()?)?,
            "--override" => {
                let v = val()?;
                let (name, spec) = v
                    .split_once('=')
                    .with_context(|| format!("--override {v:?}: expected NAME=key:value,..."))?;
                let o = WorkloadOverride::parse(spec)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--override {v:?}"))?;
                options.overrides.insert(name.to_string(), o);
            }
            "--faults-json" => {
                options.faults = parse_faults_json(&val()?).map_err(anyhow::Error::msg)?
            }
            "--random-faults" => {
                random = val()?.parse().context("--random-faults must be a count")?
            }
            "--shrink" => do_shrink = true,
            "--fl" => {
                let v = val()?;
                let (c, r) = v.split_once('x').unwrap_or((v.as_str(), "5"));
                let parse = |x: &str, what: &str| {
                    x.parse::<u64>().ok().filter(|n| *n > 0).with_context(|| {
                        format!("--fl {v:?}: {what} must be a positive integer (CLIENTS[xROUNDS])")
                    })
                };
                fl = Some((parse(c, "clients")? as usize, parse(r, "rounds")?));
            }
            "--check-determinism" => determinism = true,
            "--trace" => trace = true,
            "--schema" => {
                let path = crate::workspace_root().join("fixtures/topologies/topology.schema.json");
                std::fs::write(&path, simulator::topology::schema_json())
                    .with_context(|| format!("failed to write {}", path.display()))?;
                println!("wrote {}", path.display());
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let Some(topology) = topology else {
        bail!("--topology is required\n{USAGE}")
    };
    let path = if topology.ends_with(".yaml") || topology.contains('/') {
        PathBuf::from(&topology)
    } else {
        crate::workspace_root()
            .join("fixtures/topologies")
            .join(format!("{topology}.yaml"))
    };
    let topo = Topology::load(&path)?;
    if no_gitops && gitops.is_some() {
        bail!("--gitops and --no-gitops exclude each other\n{USAGE}");
    }
    // The platform's tree is deployed by default when there is one: that is how the
    // platforms run. --shrink works on the cluster's own fault schedule, without it.
    if gitops.is_none() && !no_gitops && !do_shrink && GitopsRun::default_repo(&topo).is_some() {
        gitops = Some(None);
    }
    let gitops = match gitops {
        Some(repo) => {
            if do_shrink {
                bail!("--shrink does not take --gitops (it shrinks the cluster's fault schedule)");
            }
            // The tree deploys the platform, not the topology's documented list.
            options.apply_topology_workloads = false;
            Some(GitopsRun::load(&topo, repo)?)
        }
        None => None,
    };
    if random > 0 {
        options.faults.extend(random_faults(
            &topo,
            seed,
            random,
            until.saturating_sub(15 * MIN).max(MIN),
        ));
        options.faults.sort_by_key(|f| f.at);
    }

    if do_shrink {
        let settle = 15 * MIN;
        let Some(sh) = shrink_recovery(&topo, seed, &options, settle) else {
            println!(
                "seed {seed}: the cluster recovers from all {} faults; nothing to shrink",
                options.faults.len()
            );
            return Ok(());
        };
        println!(
            "seed {seed}: {} faults, failure: {}",
            options.faults.len(),
            sh.original
        );
        println!(
            "shrunk to {} fault(s) in {} runs, keeping only schedules that fail with [{}]:",
            sh.faults.len(),
            sh.runs,
            sh.original.kind
        );
        for f in &sh.faults {
            println!("  {f}");
        }
        println!("failure: {}", sh.failure);
        println!(
            "repro: cargo xtask sim --topology {} --seed {seed} --faults-json '{}'",
            topo.name,
            faults_json(&sh.faults)
        );
        return Ok(());
    }

    let build = || -> Result<Sim> {
        let mut sim = Sim::new(topo.clone(), seed, options.clone());
        if let Some((clients, rounds)) = fl {
            let mut cfg = simulator::fl::FlConfig {
                clients,
                ..Default::default()
            };
            cfg.round.num_rounds = rounds;
            cfg.round.min_available_clients = clients;
            cfg.round.min_fit_clients = clients;
            let model = simulator::fl::FlModel::new(cfg, seed).map_err(anyhow::Error::msg)?;
            sim.add_model(Box::new(model));
        }
        Ok(sim)
    };
    let mut sim = build()?;
    let (stop, controller) = match &gitops {
        Some(g) => g.run(&mut sim, until),
        None => (sim.run_until(until), None),
    };
    let w = sim.world();
    println!("topology: {} ({})", topo.name, topo.description);
    println!(
        "seed: {seed}  virtual time: {}  events: {}  stop: {stop:?}",
        simulator::fmt_time(w.now()),
        w.events_processed()
    );
    println!(
        "api: {}",
        if w.api_available() {
            "available"
        } else {
            "UNAVAILABLE"
        }
    );
    for n in w.nodes() {
        let taints: Vec<&str> = n.taints.keys().map(String::as_str).collect();
        println!(
            "node {:<14} {:>5} cpu {:>6} mem  {:<8} {}",
            n.name,
            n.cpu.to_string(),
            n.memory.to_string(),
            if n.ready {
                "Ready"
            } else if n.exists {
                "NotReady"
            } else {
                "absent"
            },
            if taints.is_empty() {
                String::new()
            } else {
                format!("taints: {}", taints.join(","))
            }
        );
    }
    let e = w.etcd_status();
    if !e.members.is_empty() {
        println!(
            "etcd: leader {} term {} quorum {} ({} of {} members running)",
            e.leader.as_deref().unwrap_or("none"),
            e.term,
            e.quorum,
            e.members.iter().filter(|m| m.running).count(),
            e.members.len()
        );
    }
    for wl in w.workloads() {
        println!(
            "{:?} {}/{}: {}/{} ready",
            wl.spec.kind, wl.spec.namespace, wl.spec.name, wl.ready_replicas, wl.desired
        );
    }
    for (pod, reason) in w.unschedulable() {
        println!("unschedulable {pod}: {reason}");
    }
    for (wl, msg) in w.quota_errors() {
        println!("quota {wl}: {msg}");
    }
    for line in sim.model_summaries() {
        println!("{line}");
    }
    if let (Some(g), Some(c)) = (&gitops, controller) {
        g.report(&sim, c);
    }
    if trace {
        for e in sim.trace().entries() {
            println!("  {e}");
        }
    }
    println!("trace entries: {}", sim.trace().total());
    if let Some(v) = sim.violation() {
        println!("VIOLATION: {v}");
    }
    let fl_arg = fl
        .map(|(c, r)| format!(" --fl {c}x{r}"))
        .unwrap_or_default();
    // The engine's repro line carries the seed, faults and overrides; the run length, the
    // GitOps controller started here and the FL job are added.
    match &gitops {
        Some(g) => println!(
            "{} --until {}s --gitops {}{fl_arg}",
            sim.repro_cluster(),
            until / SEC,
            g.repo_name
        ),
        None => println!("{} --until {}s{fl_arg}", sim.repro(), until / SEC),
    }
    if determinism {
        let mut again = build()?;
        match &gitops {
            Some(g) => {
                g.run(&mut again, until);
            }
            None => {
                again.run_until(until);
            }
        }
        if again.trace_hash() != sim.trace_hash() {
            bail!(
                "determinism check failed: {} != {}",
                again.trace_hash(),
                sim.trace_hash()
            );
        }
        println!("determinism: same trace hash on a second run");
    }
    println!("trace-hash: {}", sim.trace_hash());
    if stop == Stop::Violation {
        bail!("invariant violated");
    }
    Ok(())
}

/// `--gitops`: the platform's repository and the controller that reconciles it.
struct GitopsRun {
    repo_name: String,
    repo: simulator::gitops::repo::Repo,
    flux: bool,
}

/// Bound on the virtual time to wait for every node to be Ready before bootstrapping.
const BOOT_LIMIT: u64 = 30 * MIN;

impl GitopsRun {
    /// The topology's default repository name (its name up to the first `-`).
    fn default_repo_name(topo: &Topology) -> String {
        topo.name
            .split('-')
            .next()
            .unwrap_or(&topo.name)
            .to_string()
    }

    /// The default repository when the topology names a controller and the fixture exists.
    fn default_repo(topo: &Topology) -> Option<String> {
        topo.gitops.as_ref()?;
        let name = Self::default_repo_name(topo);
        crate::workspace_root()
            .join("fixtures/gitops")
            .join(&name)
            .join(simulator::gitops::tree::BOOTSTRAP_DIR)
            .is_dir()
            .then_some(name)
    }

    fn load(topo: &Topology, repo: Option<String>) -> Result<Self> {
        let repo_name = repo.unwrap_or_else(|| Self::default_repo_name(topo));
        // A name is a fixture; anything with a `/` a repository folder (a planted copy).
        let dir = if repo_name.contains('/') {
            PathBuf::from(&repo_name)
        } else {
            crate::workspace_root()
                .join("fixtures/gitops")
                .join(&repo_name)
        };
        if !dir.join(simulator::gitops::tree::BOOTSTRAP_DIR).is_dir() {
            bail!(
                "--gitops: {} is no GitOps repository (no bootstrap/ folder) for topology {} (name one: --gitops REPO or --gitops DIR)",
                dir.display(),
                topo.name
            );
        }
        let repo = read_repo(&dir).with_context(|| format!("--gitops {repo_name}"))?;
        let flux = match topo.gitops.as_deref() {
            Some("flux") => true,
            Some("argocd") => false,
            Some(other) => bail!(
                "topology {} names GitOps controller `{other}` (the simulator models argocd and flux)",
                topo.name
            ),
            None => bail!(
                "topology {} names no GitOps controller (`gitops: argocd|flux`)",
                topo.name
            ),
        };
        let flux_tree = simulator::gitops::tree::Tree::build(&repo)
            .units
            .iter()
            .any(|u| {
                matches!(
                    u.kind,
                    simulator::gitops::tree::UnitKind::FluxKustomization
                        | simulator::gitops::tree::UnitKind::FluxHelmRelease
                )
            });
        if flux != flux_tree {
            bail!(
                "--gitops {repo_name}: topology {} runs {} but the tree is {}",
                topo.name,
                if flux { "Flux" } else { "ArgoCD" },
                if flux_tree {
                    "a Flux tree"
                } else {
                    "an ArgoCD tree"
                }
            );
        }
        Ok(Self {
            repo_name,
            repo,
            flux,
        })
    }

    /// Boots the cluster to every node Ready, bootstraps the controller, runs to `until`.
    fn run(&self, sim: &mut Sim, until: u64) -> (Stop, Option<simulator::ModelId>) {
        let stop = sim.run_until_pred(until.min(BOOT_LIMIT), u64::MAX, |w| w.nodes_ready());
        if stop != Stop::Predicate {
            return (
                if stop == Stop::Violation {
                    stop
                } else {
                    sim.run_until(until)
                },
                None,
            );
        }
        let id = if self.flux {
            Flux::start(sim, self.repo.clone())
        } else {
            ArgoCd::start(sim, self.repo.clone())
        };
        (sim.run_until(until), Some(id))
    }

    fn report(&self, sim: &Sim, id: simulator::ModelId) {
        let fmt = simulator::fmt_time;
        if let Some(f) = sim.model::<Flux>(id) {
            println!(
                "gitops: Flux, {}: {}",
                self.repo_name,
                if f.converged() {
                    "every Kustomization and HelmRelease Ready"
                } else {
                    "NOT converged"
                }
            );
            let tree = simulator::gitops::tree::Tree::build(&self.repo);
            for (name, at) in f.ready_order() {
                let after = tree
                    .find(name)
                    .map(|u| tree.units[u].depends_on.join(", "))
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" (dependsOn: {d})"))
                    .unwrap_or_default();
                println!("  ready at {:>9}  {name}{after}", fmt(*at));
            }
            return;
        }
        let Some(a) = sim.model::<ArgoCd>(id) else {
            return;
        };
        println!(
            "gitops: ArgoCD, {}: {} applications, {}",
            self.repo_name,
            a.apps().len(),
            if a.converged() {
                "all Synced and Healthy"
            } else {
                "NOT converged"
            }
        );
        println!("  waves (app, phase and wave: applied -> every resource Healthy):");
        for w in a.wave_events() {
            // The CreateNamespace=true step runs before every PreSync hook.
            let step = if w.wave == i64::MIN {
                "CreateNamespace".to_string()
            } else {
                format!("{:?} wave {}", w.phase, w.wave)
            };
            println!(
                "  {:>9} -> {:>9}  {} {step}",
                fmt(w.started),
                fmt(w.healthy_at),
                w.app
            );
        }
        for (app, b) in a.blocked() {
            println!(
                "  BLOCKED {app}: {:?} wave {} waits on {} since {}: {}",
                b.phase,
                b.wave,
                b.object,
                fmt(b.since),
                b.reason
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::run;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gitops_runs_the_topologys_controller_on_its_tree() {
        run(args(&[
            "--topology",
            "mlworkbench-kvm",
            "--gitops",
            "--until",
            "10m",
        ]))
        .expect("argocd on mlworkbench");
        run(args(&[
            "--topology",
            "mlops-flux",
            "--gitops",
            "mlops",
            "--until",
            "10m",
        ]))
        .expect("flux on mlops");
    }

    #[test]
    fn gitops_without_a_tree_or_with_the_other_controllers_tree_is_an_error() {
        let e = run(args(&["--topology", "mlworkbench-kvm", "--gitops", "nope"]))
            .expect_err("no such tree");
        assert!(
            format!("{e:#}").contains("fixtures/gitops/nope is no GitOps repository"),
            "{e:#}"
        );
        let e = run(args(&[
            "--topology",
            "mlworkbench-kvm",
            "--gitops",
            "mlops",
        ]))
        .expect_err("a Flux tree on an ArgoCD topology");
        assert!(
            format!("{e:#}").contains("runs ArgoCD but the tree is a Flux tree"),
            "{e:#}"
        );
    }
}

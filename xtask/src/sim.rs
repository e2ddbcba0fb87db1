//! `cargo xtask sim`: run one topology in the simulator and print a summary that ends with
//! `trace-hash: <hex>`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use simulator::fault::{faults_json, parse_faults_json};
use simulator::shrink::{random_faults, shrink_recovery};
use simulator::timings::{MIN, SEC};
use simulator::{Sim, SimOptions, Stop, Topology, WorkloadOverride};

const USAGE: &str = "usage: cargo xtask sim --topology NAME|PATH [--seed N] [--until 30m]
       [--override WORKLOAD=replicas:R,cpu:C,memory:M]... [--faults-json JSON] [--random-faults K]
       [--shrink] [--check-determinism] [--trace] [--schema] [--fl CLIENTS[xROUNDS]]

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
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
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
    let stop = sim.run_until(until);
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
    if trace {
        for e in sim.trace().entries() {
            println!("  {e}");
        }
    }
    println!("trace entries: {}", sim.trace().total());
    if let Some(v) = sim.violation() {
        println!("VIOLATION: {v}");
    }
    match fl {
        Some((c, r)) => println!("{} --fl {c}x{r}", sim.repro()),
        None => println!("{}", sim.repro()),
    }
    if determinism {
        let mut again = build()?;
        again.run_until(until);
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

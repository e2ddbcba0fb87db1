//! `fl aggregate`: the offline audit path. Recomputes a round from stored updates with the
//! same fl-core code the coordinator runs, reading every update through a memory map.
//!
//! `fl aggregate --strategy NAME [--param KEY=VALUE]... --updates DIR [--global FILE]
//!  [--state FILE] [--round N] [--seed N] [--max-update-bytes N] --out FILE`
//!
//! DIR holds one `<client-id>.safetensors` per client with `num_examples` in the safetensors
//! metadata (other numeric metadata, e.g. `train_loss`, become client metrics; a `round`
//! entry is checked against `--round`). `--state` is read if it exists and rewritten with
//! the server optimizer state so rounds chain. The new global model keeps the input's tensor
//! names, order and dtypes; its digest is printed.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fl_core::strategy::{Limits, Metrics, Params, STRATEGY_NAMES, build_strategy};
use fl_core::{ModelView, Update};
use memmap2::Mmap;

const USAGE: &str = "usage: fl aggregate --strategy NAME [--param KEY=VALUE]... --updates DIR \
[--global FILE] [--state FILE] [--round N] [--seed N] [--max-update-bytes N] --out FILE";

#[derive(Debug, Default)]
struct Args {
    strategy: Option<String>,
    params: Params,
    updates: Option<PathBuf>,
    global: Option<PathBuf>,
    state: Option<PathBuf>,
    round: u64,
    seed: u64,
    max_update_bytes: Option<u64>,
    out: Option<PathBuf>,
}

fn parse_args(args: Vec<String>) -> Result<Args> {
    let mut a = Args {
        round: 1,
        ..Default::default()
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}\nstrategies: {}", STRATEGY_NAMES.join(", "));
            std::process::exit(0);
        }
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("`{name}` needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--strategy" => a.strategy = Some(value("--strategy")?),
            "--param" => {
                let kv = value("--param")?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--param `{kv}` is not KEY=VALUE"))?;
                if a.params
                    .insert(k.trim().to_owned(), v.trim().to_owned())
                    .is_some()
                {
                    bail!("--param `{k}` given twice");
                }
            }
            "--updates" => a.updates = Some(value("--updates")?.into()),
            "--global" => a.global = Some(value("--global")?.into()),
            "--state" => a.state = Some(value("--state")?.into()),
            "--out" => a.out = Some(value("--out")?.into()),
            "--round" => {
                let v = value("--round")?;
                a.round = v
                    .parse()
                    .with_context(|| format!("--round `{v}` is not a round number"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                a.seed = v
                    .parse()
                    .with_context(|| format!("--seed `{v}` is not an unsigned integer"))?;
            }
            "--max-update-bytes" => {
                let v = value("--max-update-bytes")?;
                a.max_update_bytes =
                    Some(v.parse().with_context(|| {
                        format!("--max-update-bytes `{v}` is not a byte count")
                    })?);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(a)
}

fn map(path: &Path) -> Result<Mmap> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the files are inputs of an offline audit; they are not modified while mapped
    // (a concurrent writer would be a misuse, as for any reader of the file).
    unsafe { Mmap::map(&f) }.with_context(|| format!("memory-mapping {}", path.display()))
}

/// Client metrics from safetensors metadata: every numeric entry except `num_examples` and `round`.
fn metadata_metrics(model: &ModelView<'_>) -> Metrics {
    model
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != "num_examples" && k.as_str() != "round")
        .filter_map(|(k, v)| v.trim().parse::<f64>().ok().map(|x| (k.clone(), x)))
        .collect()
}

pub fn run(args: Vec<String>) -> Result<()> {
    let a = parse_args(args)?;
    let strategy = a.strategy.context("--strategy is required")?;
    let updates = a.updates.context("--updates is required")?;
    let out = a.out.context("--out is required")?;

    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&updates)
        .with_context(|| format!("reading the updates directory {}", updates.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {}", updates.display()))?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter_map(|p| {
            p.file_stem()
                .map(|s| (s.to_string_lossy().into_owned(), p.clone()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no <client-id>.safetensors file in {}", updates.display());
    }
    let maps: Vec<Mmap> = files.iter().map(|(_, p)| map(p)).collect::<Result<_>>()?;
    let global_map = a.global.as_deref().map(map).transpose()?;
    let state_bytes = match &a.state {
        Some(p) if p.exists() => {
            Some(std::fs::read(p).with_context(|| format!("reading state {}", p.display()))?)
        }
        _ => None,
    };

    let limits = Limits {
        max_update_bytes: a.max_update_bytes,
        ..Limits::default()
    };
    let mut s = build_strategy(&strategy, &a.params, limits, a.seed)
        .with_context(|| format!("building strategy `{strategy}`"))?;
    if let (Some(bytes), Some(p)) = (&state_bytes, &a.state) {
        let state = ModelView::from_safetensors_labeled(bytes, &p.display().to_string())?;
        s.load_state(&state)
            .with_context(|| format!("loading state {}", p.display()))?;
    }
    let global = match (&global_map, &a.global) {
        (Some(m), Some(p)) => Some(ModelView::from_safetensors_labeled(
            m,
            &p.display().to_string(),
        )?),
        _ => None,
    };
    s.begin(a.round, global)?;
    for ((client, path), m) in files.iter().zip(&maps) {
        let model = ModelView::from_safetensors_labeled(m, &path.display().to_string())?;
        let n: u64 = model
            .metadata()
            .get("num_examples")
            .with_context(|| {
                format!(
                    "client `{client}`: {} has no `num_examples` metadata",
                    path.display()
                )
            })?
            .trim()
            .parse()
            .with_context(|| {
                format!(
                    "client `{client}`: `num_examples` in {} is not a count",
                    path.display()
                )
            })?;
        let round = match model.metadata().get("round") {
            Some(r) => r.trim().parse().with_context(|| {
                format!(
                    "client `{client}`: `round` in {} is not a round number",
                    path.display()
                )
            })?,
            None => a.round,
        };
        let metrics = metadata_metrics(&model);
        s.fold(Update::new(client.clone(), round, model, n).with_metrics(metrics))?;
    }
    let (model, metrics) = s.finish()?;
    std::fs::write(&out, model.to_safetensors())
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(p) = &a.state {
        std::fs::write(p, s.state().to_safetensors())
            .with_context(|| format!("writing state {}", p.display()))?;
    }
    for (k, v) in &metrics {
        eprintln!("{k} = {v}");
    }
    println!("{}", model.digest());
    Ok(())
}

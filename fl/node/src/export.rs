//! `fl export-round --data-dir DIR --round N --to OUT`: writes a stored round in `fl aggregate`'s
//! input format, so the audit path recomputes it from what the coordinator stored.
//!
//! `OUT/` receives one `<client-id>.safetensors` per accepted update (with `num_examples`,
//! `round` and each client metric in the safetensors metadata), and `round.json`
//! with the round, strategy, parameters, DP seed and digests; the global model the round
//! started from is `OUT/global/base.safetensors`, the strategy state (if any) before the round
//! `OUT/global/strategy-state.safetensors`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use fl_core::ModelView;
use fl_core::round::{Coordinator, FitOutcome, RoundConfig};

use crate::coordinator::{previous_state_path, round_seed};
use crate::store::{Blobs, Meta};

#[derive(Parser, Debug)]
#[command(
    name = "fl export-round",
    about = "write a stored round in fl aggregate's input format"
)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    /// Metadata database (default: DATA_DIR/meta.sqlite).
    #[arg(long)]
    database: Option<String>,
    /// The coordinator's `--store s3://BUCKET[/PREFIX]`, when its blobs live in S3.
    #[arg(long)]
    store: Option<String>,
    /// S3 settings as for the coordinator (`--store-option endpoint=URL`, ...).
    #[arg(long = "store-option", value_parser = crate::coordinator::parse_kv)]
    store_options: Vec<(String, String)>,
    #[arg(long)]
    round: u64,
    #[arg(long)]
    to: PathBuf,
}

#[derive(serde::Deserialize)]
struct StoredConfig {
    round: RoundConfig,
    strategy: String,
    strategy_params: std::collections::BTreeMap<String, String>,
    seed: u64,
}

pub fn run(args: Vec<String>) -> Result<()> {
    let a = crate::parse_args::<Args>("fl export-round", args);
    crate::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", a.data_dir.join("meta.sqlite").display()));
    let (cfg, state) = rt
        .block_on(async { Meta::open(&db).await?.load_state().await })?
        .with_context(|| format!("{db} holds no coordinator state"))?;
    let cfg: StoredConfig =
        serde_json::from_str(&cfg).context("parsing the stored configuration")?;
    let machine = Coordinator::restore(cfg.round.clone(), state)?;
    let rec = match machine.history().get((a.round as usize).wrapping_sub(1)) {
        Some(r) => r,
        None => bail!(
            "round {} is not completed in {} (completed: {})",
            a.round,
            db,
            machine.history().len()
        ),
    };
    let Some(FitOutcome::Aggregated { global_digest, .. }) = &rec.fit else {
        bail!(
            "round {} produced no model ({:?}): nothing to recompute",
            a.round,
            rec.fit
        );
    };
    let blobs = Blobs::at(&a.data_dir, a.store.as_deref(), &a.store_options)?;
    std::fs::create_dir_all(a.to.join("global"))
        .with_context(|| format!("creating {}", a.to.display()))?;
    for (client, u) in &rec.accepted {
        let src = blobs.update_path(a.round, &client.0, &u.update_id.0);
        let m = blobs.map(&src)?;
        let mut model = ModelView::from_safetensors_labeled(&m, &client.0)?;
        model.set_metadata("num_examples", u.num_examples.to_string());
        model.set_metadata("round", a.round.to_string());
        for (k, v) in &u.metrics {
            model.set_metadata(k.clone(), v.to_string());
        }
        let out = a.to.join(format!("{}.safetensors", client.0));
        std::fs::write(&out, model.to_safetensors())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let base = a.to.join("global").join("base.safetensors");
    blobs.ensure_local(&blobs.model_path(&rec.base_digest))?;
    std::fs::copy(blobs.model_path(&rec.base_digest), &base)
        .with_context(|| format!("writing {}", base.display()))?;
    let state_file = previous_state_path(&blobs, &machine, a.round)?;
    if let Some(p) = &state_file {
        std::fs::copy(p, a.to.join("global").join("strategy-state.safetensors"))?;
    }
    let info = serde_json::json!({
        "round": a.round,
        "strategy": cfg.strategy,
        "strategy_params": cfg.strategy_params,
        "dp_seed": round_seed(cfg.seed, a.round),
        "base_digest": rec.base_digest,
        "global_digest": global_digest,
        "clients": rec.accepted.keys().map(|c| c.0.clone()).collect::<Vec<_>>(),
        "strategy_state": state_file.is_some(),
    });
    std::fs::write(
        a.to.join("round.json"),
        serde_json::to_string_pretty(&info)?,
    )?;
    println!("{}", serde_json::to_string(&info)?);
    Ok(())
}

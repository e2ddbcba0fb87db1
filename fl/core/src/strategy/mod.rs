//! Server-side aggregation strategies with Flower 1.41 semantics, as a fold:
//! `begin(round, global) -> fold(update)* -> finish() -> (model, metrics)`.
//!
//! `fold` validates an update (round, duplicate client, names, order, shapes, dtypes, size,
//! finite values, optional norm bound) and keeps it: a view of a memory-mapped file or bytes
//! in memory, never a copy. `finish` aggregates cache-blocked over all kept updates in
//! canonical order (client id), on all cores (rayon), splitting work by coordinate ranges, so
//! the result is bitwise identical whatever the arrival order and the thread count.
//! Where this core diverges from Flower, the item says so (see `fl/core/DIVERGENCES.md`).

mod collector;
mod coordwise;
mod dp;
mod fedavg;
mod fedopt;
pub(crate) mod kernel;
mod params;
mod qfedavg;
mod robust;

use std::collections::BTreeMap;

pub use collector::{Collector, Kept, Limits, check_finite, update_norm};
pub use dp::{DpAdaptiveClipping, DpFixedClipping};
pub use fedavg::{FedAvg, FedAvgM, FedProx};
pub use fedopt::{FedAdagrad, FedAdam, FedOptParams, FedYogi};
pub use params::{Params, STRATEGY_NAMES, build_strategy};
pub use qfedavg::QFedAvg;
pub use robust::{
    Bulyan, FedMedian, FedTrimmedAvg, Krum, KrumScores, MultiKrum, krum_scores, median_of,
};

use crate::error::FlError;
use crate::model::{Model, ModelView};

/// Named scalar metrics (client-reported or aggregated), in a fixed order.
pub type Metrics = BTreeMap<String, f64>;

/// One client's reply for a round.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    /// Client id; canonical aggregation order is ascending client id.
    pub client: String,
    /// The round the client trained for (checked against the open round).
    pub round: u64,
    /// The client's model (views over mapped bytes or owned).
    pub model: ModelView<'a>,
    /// Weight for the FedAvg family (Flower's `num_examples` / `num-examples`).
    pub num_examples: u64,
    /// Client metrics (e.g. `train_loss`, which the new-API QFedAvg reads).
    pub metrics: Metrics,
}

impl<'a> Update<'a> {
    /// An update without metrics.
    pub fn new(
        client: impl Into<String>,
        round: u64,
        model: ModelView<'a>,
        num_examples: u64,
    ) -> Self {
        Self {
            client: client.into(),
            round,
            model,
            num_examples,
            metrics: Metrics::new(),
        }
    }

    /// Adds metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// A server-side aggregation strategy as a fold over one round's updates.
///
/// State that chains rounds (momentum, m_t, v_t, the adaptive clipping norm) lives in the
/// strategy and can be saved with [`Strategy::state`] and restored with [`Strategy::load_state`].
pub trait Strategy<'a>: Send {
    /// Flower's class name in lower case (`fedavg`, `krum`, `dp-fixed-clipping`, ...).
    fn name(&self) -> &str;

    /// Opens `round` (1-based, Flower's `server_round`) with the current global model; drops
    /// any update kept from an unfinished round. FedAvgM, the FedOpt family, QFedAvg and the
    /// DP wrappers need `global`; for the others it fixes the expected tensor layout.
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError>;

    /// Validates and keeps one update; on error nothing is kept.
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError>;

    /// Aggregates the kept updates and closes the round.
    fn finish(&mut self) -> Result<(Model, Metrics), FlError>;

    /// Server state that chains rounds, as named tensors (empty if the strategy has none).
    fn state(&self) -> Model {
        Model::default()
    }

    /// Restores state saved by [`Strategy::state`].
    fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(FlError::InvalidState {
                reason: format!(
                    "{} keeps no state, but the state has {} tensors",
                    self.name(),
                    state.len()
                ),
            })
        }
    }

    /// The round buffer (wrappers such as the DP strategies set per-client clipping on it).
    fn collector_mut(&mut self) -> &mut Collector<'a>;
}

/// Weighted mean of each metric over the given (num_examples, metrics) pairs, as the new
/// Flower API's default `aggregate_metricrecords` (weights = num_examples; a plain mean when
/// every weight is zero). Keys missing from a client are averaged over the clients that have them.
pub fn aggregate_metrics<'m>(items: impl IntoIterator<Item = (u64, &'m Metrics)>) -> Metrics {
    let mut sums: BTreeMap<&str, (f64, f64, f64, u64)> = BTreeMap::new();
    for (n, m) in items {
        for (k, v) in m {
            let e = sums.entry(k.as_str()).or_insert((0.0, 0.0, 0.0, 0));
            e.0 += n as f64 * v;
            e.1 += n as f64;
            e.2 += v;
            e.3 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (wsum, w, sum, c))| {
            (
                k.to_owned(),
                if w > 0.0 { wsum / w } else { sum / c as f64 },
            )
        })
        .collect()
}

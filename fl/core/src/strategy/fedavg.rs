//! FedAvg, FedProx (server side) and FedAvgM.

use rayon::prelude::*;

use super::fedopt::{Group, MeanPlan, state_group, state_model};
use super::kernel::{BLOCK, par_fill};
use super::{Collector, Kept, Limits, Metrics, Strategy, Update, aggregate_metrics};
use crate::error::FlError;
use crate::model::{Model, ModelView, TensorView, encode_into, round_to_dtype};

/// The weighted mean sum_k n_k x_k / sum_k n_k of the kept clients, per tensor, in each
/// tensor's dtype, accumulated in f64 in canonical order.
///
/// Divergences from Flower (see DIVERGENCES.md): integer tensors get the rounded weighted
/// mean (Flower's default `aggregate_inplace` zeroes them); a zero total weight is an error
/// (Flower returns NaN); server-side clipping factors enter exactly (linear in f64).
pub(crate) fn weighted_mean(
    kept: &[Kept<'_>],
    global: Option<&ModelView<'_>>,
) -> Result<Model, FlError> {
    let plan = MeanPlan::new(kept)?;
    let first = &kept[0].model;
    let mut tensors = Vec::with_capacity(first.len());
    for (t, spec) in first.tensors().iter().enumerate() {
        let data = par_fill(spec.dtype(), spec.numel(), |start, out| {
            plan.block(kept, t, global, start, out)
        });
        tensors.push(TensorView::new(
            spec.name(),
            spec.dtype(),
            spec.shape().to_vec(),
            data,
        )?);
    }
    ModelView::new(tensors)
}

fn fit_metrics(kept: &[Kept<'_>]) -> Metrics {
    aggregate_metrics(kept.iter().map(|k| (k.num_examples, &k.metrics)))
}

/// Flower `FedAvg`: weighted by `num_examples`.
#[derive(Debug, Clone)]
pub struct FedAvg<'a> {
    c: Collector<'a>,
}

impl<'a> FedAvg<'a> {
    /// FedAvg with default limits.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// FedAvg with the given fold limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            c: Collector::new("fedavg", limits),
        }
    }
}

impl Default for FedAvg<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Strategy<'a> for FedAvg<'a> {
    fn name(&self) -> &str {
        "fedavg"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.c.begin(round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        self.c.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        let (_, kept, global) = self.c.close()?;
        let model = weighted_mean(&kept, global.as_ref())?;
        Ok((model, fit_metrics(&kept)))
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        &mut self.c
    }
}

/// Flower `FedProx`: the server computes FedAvg; `proximal_mu` is sent to the clients (their
/// trainer adds mu/2 ||w - w_g||^2). New-API default mu = 0.0.
#[derive(Debug, Clone)]
pub struct FedProx<'a> {
    inner: FedAvg<'a>,
    /// The proximal term weight sent to clients (`proximal_mu`).
    pub proximal_mu: f64,
}

impl<'a> FedProx<'a> {
    /// FedProx with `proximal_mu` (must be >= 0 and finite).
    pub fn new(proximal_mu: f64, limits: Limits) -> Result<Self, FlError> {
        if !(proximal_mu >= 0.0 && proximal_mu.is_finite()) {
            return Err(FlError::InvalidParam {
                name: "proximal_mu".into(),
                value: proximal_mu.to_string(),
                reason: "must be a finite number >= 0".into(),
            });
        }
        let mut inner = FedAvg::with_limits(limits);
        inner.c = Collector::new("fedprox", inner.c.limits().clone());
        Ok(Self { inner, proximal_mu })
    }
}

impl<'a> Strategy<'a> for FedProx<'a> {
    fn name(&self) -> &str {
        "fedprox"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.inner.begin(round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        self.inner.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        let (model, mut metrics) = self.inner.finish()?;
        metrics.insert("proximal_mu".into(), self.proximal_mu);
        Ok((model, metrics))
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        self.inner.collector_mut()
    }
}

/// Flower `FedAvgM`: avg = FedAvg; if lr != 1 or momentum != 0: g = w - avg;
/// v = g (first round with momentum) else v = momentum v + g; w <- w - lr v.
/// Defaults `server_learning_rate` = 1.0, `server_momentum` = 0.0 (plain FedAvg).
#[derive(Debug, Clone)]
pub struct FedAvgM<'a> {
    c: Collector<'a>,
    pub server_learning_rate: f64,
    pub server_momentum: f64,
    /// Momentum buffer per tensor (f64), empty until the first round with momentum.
    momentum: Group,
}

impl<'a> FedAvgM<'a> {
    /// FedAvgM with Flower's parameter names.
    pub fn new(
        server_learning_rate: f64,
        server_momentum: f64,
        limits: Limits,
    ) -> Result<Self, FlError> {
        for (n, v) in [
            ("server_learning_rate", server_learning_rate),
            ("server_momentum", server_momentum),
        ] {
            if !v.is_finite() {
                return Err(FlError::InvalidParam {
                    name: n.into(),
                    value: v.to_string(),
                    reason: "must be finite".into(),
                });
            }
        }
        Ok(Self {
            c: Collector::new("fedavgm", limits),
            server_learning_rate,
            server_momentum,
            momentum: Vec::new(),
        })
    }
}

impl<'a> Strategy<'a> for FedAvgM<'a> {
    fn name(&self) -> &str {
        "fedavgm"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.c.begin(round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        self.c.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        let plain = self.server_learning_rate == 1.0 && self.server_momentum == 0.0;
        if plain {
            let (_, kept, global) = self.c.close()?;
            let model = weighted_mean(&kept, global.as_ref())?;
            return Ok((model, fit_metrics(&kept)));
        }
        self.c.require_global()?;
        let (_, kept, global) = self.c.close()?;
        let global = global.ok_or_else(|| FlError::MissingGlobal {
            strategy: "fedavgm".into(),
        })?;
        let plan = MeanPlan::new(&kept)?;
        let metrics = fit_metrics(&kept);
        let use_momentum = self.server_momentum != 0.0;
        let have_momentum = self.momentum.len() == global.len()
            && self
                .momentum
                .iter()
                .zip(global.tensors())
                .all(|((n, v), t)| n == t.name() && v.len() == t.numel());
        if !have_momentum {
            self.momentum = global
                .tensors()
                .iter()
                .map(|t| (t.name().to_owned(), vec![0.0; t.numel()]))
                .collect();
        }
        let (lr, mu) = (self.server_learning_rate, self.server_momentum);
        let first = !have_momentum;
        let mut tensors = Vec::with_capacity(global.len());
        for (t, gt) in global.tensors().iter().enumerate() {
            let dtype = gt.dtype();
            let size = dtype.size_bytes();
            let mut out = vec![0u8; gt.numel() * size];
            let mom = &mut self.momentum[t].1;
            out.par_chunks_mut(BLOCK * size)
                .zip(mom.par_chunks_mut(BLOCK))
                .enumerate()
                .for_each_init(
                    || (vec![0.0f64; BLOCK], vec![0.0f64; BLOCK]),
                    |(buf, gbuf), (b, (ob, mb))| {
                        let len = mb.len();
                        let avg = &mut buf[..len];
                        let g = &mut gbuf[..len];
                        plan.block(&kept, t, Some(&global), b * BLOCK, avg);
                        gt.load_f64(b * BLOCK, g);
                        for j in 0..len {
                            // Flower: pseudo-gradient from the float32 mean.
                            let grad = g[j] - round_to_dtype(dtype, avg[j]);
                            let v = if use_momentum && !first {
                                mu * mb[j] + grad
                            } else {
                                grad
                            };
                            if use_momentum {
                                mb[j] = v;
                            }
                            avg[j] = g[j] - lr * v;
                        }
                        encode_into(dtype, avg, ob);
                    },
                );
            tensors.push(TensorView::new(gt.name(), dtype, gt.shape().to_vec(), out)?);
        }
        if !use_momentum {
            self.momentum.clear();
        }
        Ok((ModelView::new(tensors)?, metrics))
    }
    fn state(&self) -> Model {
        state_model(&[("momentum", &self.momentum)])
    }
    fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
        self.momentum = state_group(state, "momentum")?;
        Ok(())
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        &mut self.c
    }
}

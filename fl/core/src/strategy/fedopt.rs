//! The FedOpt family: FedAdagrad, FedAdam, FedYogi (server optimizers over the FedAvg mean).
//!
//! Each round: avg = FedAvg mean rounded to the tensor dtype (Flower's float32 mean);
//! delta = avg - x; m, v updated; x <- x + step. `x` is the current weights kept in f64
//! in the state (Flower keeps them as numpy float64 after round 1); when the round's global
//! model is not `x` rounded to the dtype (a different chain), the global is used.
//!
//! Divergence: the output keeps the input dtype (Flower's FedAdam promotes to float64).

use rayon::prelude::*;

use super::kernel::{BLOCK, linear_block};
use super::{Collector, Kept, Limits, Metrics, Strategy, Update, aggregate_metrics};
use crate::error::FlError;
use crate::model::{DType, Model, ModelView, TensorView, encode_into, round_to_dtype};

/// Hyperparameters shared by the FedOpt family (Flower names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedOptParams {
    pub eta: f64,
    /// Client learning rate: only sent to clients, kept for the record.
    pub eta_l: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub tau: f64,
}

impl FedOptParams {
    /// New-API (`flwr.serverapp.strategy.FedAdagrad`) defaults: eta 0.1, eta_l 0.1, tau 1e-3.
    pub const ADAGRAD: Self = Self {
        eta: 0.1,
        eta_l: 0.1,
        beta_1: 0.0,
        beta_2: 0.0,
        tau: 1e-3,
    };
    /// New-API `FedAdam` defaults: eta 0.1, eta_l 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3
    /// (legacy `flwr.server.strategy.FedAdam`: tau 1e-9).
    pub const ADAM: Self = Self {
        eta: 0.1,
        eta_l: 0.1,
        beta_1: 0.9,
        beta_2: 0.99,
        tau: 1e-3,
    };
    /// New-API `FedYogi` defaults: eta 1e-2, eta_l 0.0316, beta_1 0.9, beta_2 0.99, tau 1e-3.
    pub const YOGI: Self = Self {
        eta: 1e-2,
        eta_l: 0.0316,
        beta_1: 0.9,
        beta_2: 0.99,
        tau: 1e-3,
    };

    fn validate(&self) -> Result<(), FlError> {
        for (n, v) in [
            ("eta", self.eta),
            ("eta_l", self.eta_l),
            ("beta_1", self.beta_1),
            ("beta_2", self.beta_2),
            ("tau", self.tau),
        ] {
            if !v.is_finite() {
                return Err(FlError::InvalidParam {
                    name: n.into(),
                    value: v.to_string(),
                    reason: "must be finite".into(),
                });
            }
        }
        for (n, v) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(FlError::InvalidParam {
                    name: n.into(),
                    value: v.to_string(),
                    reason: "must be in [0, 1)".into(),
                });
            }
        }
        if self.tau < 0.0 {
            return Err(FlError::InvalidParam {
                name: "tau".into(),
                value: self.tau.to_string(),
                reason: "must be >= 0".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Adagrad,
    Adam,
    Yogi,
}

/// Named per-tensor f64 vectors.
pub(crate) type Group = Vec<(String, Vec<f64>)>;

/// Builds a state model: tensors `<group>/<tensor>` (flat f64), groups in the given order.
pub(crate) fn state_model(groups: &[(&str, &Group)]) -> Model {
    let mut tensors = Vec::new();
    for (g, items) in groups {
        for (name, v) in items.iter() {
            if let Ok(t) = TensorView::from_f64(format!("{g}/{name}"), vec![v.len()], v) {
                tensors.push(t);
            }
        }
    }
    ModelView::new(tensors).unwrap_or_default()
}

/// Reads group `group` of a state model (in order).
pub(crate) fn state_group(state: &ModelView<'_>, group: &str) -> Result<Group, FlError> {
    let prefix = format!("{group}/");
    state
        .tensors()
        .iter()
        .filter_map(|t| t.name().strip_prefix(&prefix).map(|n| (n, t)))
        .map(|(n, t)| {
            if t.dtype() != DType::F64 {
                return Err(FlError::InvalidState {
                    reason: format!("state tensor `{}` is {}, expected F64", t.name(), t.dtype()),
                });
            }
            Ok((n.to_owned(), t.to_f64_vec()))
        })
        .collect()
}

fn group_matches(g: &Group, model: &ModelView<'_>) -> bool {
    g.len() == model.len()
        && g.iter()
            .zip(model.tensors())
            .all(|((n, v), t)| n == t.name() && v.len() == t.numel())
}

/// The plan of a weighted mean: per-client coefficients, the global's coefficient, the total.
pub(crate) struct MeanPlan {
    pub coeffs: Vec<f64>,
    pub g_coeff: f64,
    pub total: f64,
}

impl MeanPlan {
    pub fn new(kept: &[Kept<'_>]) -> Result<Self, FlError> {
        let total: f64 = kept.iter().map(|k| k.num_examples as f64).sum();
        if total == 0.0 {
            return Err(FlError::ZeroTotalWeight {
                clients: kept.len(),
            });
        }
        Ok(Self {
            coeffs: kept
                .iter()
                .map(|k| k.num_examples as f64 * k.clip_factor)
                .collect(),
            g_coeff: kept
                .iter()
                .map(|k| k.num_examples as f64 * (1.0 - k.clip_factor))
                .sum(),
            total,
        })
    }

    /// The mean of tensor `t` over `[start, start + out.len())` in f64 (not rounded).
    pub fn block(
        &self,
        kept: &[Kept<'_>],
        t: usize,
        global: Option<&ModelView<'_>>,
        start: usize,
        out: &mut [f64],
    ) {
        let g = global.map(|g| (&g.tensors()[t], self.g_coeff));
        linear_block(kept, t, &self.coeffs, g, start, out);
        for v in out.iter_mut() {
            *v /= self.total;
        }
    }
}

/// One FedOpt strategy.
#[derive(Debug, Clone)]
struct FedOpt<'a> {
    name: &'static str,
    rule: Rule,
    c: Collector<'a>,
    p: FedOptParams,
    m: Group,
    v: Group,
    x: Group,
}

impl<'a> FedOpt<'a> {
    fn new(
        name: &'static str,
        rule: Rule,
        p: FedOptParams,
        limits: Limits,
    ) -> Result<Self, FlError> {
        p.validate()?;
        Ok(Self {
            name,
            rule,
            c: Collector::new(name, limits),
            p,
            m: Vec::new(),
            v: Vec::new(),
            x: Vec::new(),
        })
    }

    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        self.c.require_global()?;
        let (round, kept, global) = self.c.close()?;
        let global = global.ok_or_else(|| FlError::MissingGlobal {
            strategy: self.name.into(),
        })?;
        let plan = MeanPlan::new(&kept)?;
        let metrics = aggregate_metrics(kept.iter().map(|k| (k.num_examples, &k.metrics)));
        // x: the f64 chain if it is the given global, else the global itself.
        let chain_ok = group_matches(&self.x, &global)
            && self.x.iter().zip(global.tensors()).all(|((_, x), t)| {
                x.par_iter()
                    .enumerate()
                    .all(|(i, v)| round_to_dtype(t.dtype(), *v).to_bits() == t.get_f64(i).to_bits())
            });
        if !chain_ok {
            self.x = global
                .tensors()
                .iter()
                .map(|t| (t.name().to_owned(), t.to_f64_vec()))
                .collect();
        }
        let zeros = |g: &Group| -> Group {
            g.iter()
                .map(|(n, v)| (n.clone(), vec![0.0; v.len()]))
                .collect()
        };
        if !group_matches(&self.m, &global) {
            self.m = zeros(&self.x);
        }
        if !group_matches(&self.v, &global) {
            self.v = zeros(&self.x);
        }
        let p = self.p;
        let rule = self.rule;
        // Flower: eta_norm = eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)), t = server_round.
        let t_exp = round as f64 + 1.0;
        let eta_step = match rule {
            Rule::Adam => {
                p.eta * (1.0 - p.beta_2.powf(t_exp)).sqrt() / (1.0 - p.beta_1.powf(t_exp))
            }
            Rule::Adagrad | Rule::Yogi => p.eta,
        };
        let mut tensors = Vec::with_capacity(global.len());
        for (t, gt) in global.tensors().iter().enumerate() {
            let dtype = gt.dtype();
            let size = dtype.size_bytes();
            let mut out = vec![0u8; gt.numel() * size];
            let x = &mut self.x[t].1;
            let m = &mut self.m[t].1;
            let v = &mut self.v[t].1;
            out.par_chunks_mut(BLOCK * size)
                .zip(x.par_chunks_mut(BLOCK))
                .zip(m.par_chunks_mut(BLOCK))
                .zip(v.par_chunks_mut(BLOCK))
                .enumerate()
                .for_each_init(
                    || vec![0.0f64; BLOCK],
                    |buf, (b, (((ob, xb), mb), vb))| {
                        let len = xb.len();
                        let avg = &mut buf[..len];
                        plan.block(&kept, t, Some(&global), b * BLOCK, avg);
                        for j in 0..len {
                            let a = round_to_dtype(dtype, avg[j]);
                            let d = a - xb[j];
                            match rule {
                                Rule::Adagrad => {
                                    mb[j] = p.beta_1 * mb[j] + (1.0 - p.beta_1) * d;
                                    vb[j] += d * d;
                                }
                                Rule::Adam => {
                                    mb[j] = p.beta_1 * mb[j] + (1.0 - p.beta_1) * d;
                                    vb[j] = p.beta_2 * vb[j] + (1.0 - p.beta_2) * (d * d);
                                }
                                Rule::Yogi => {
                                    mb[j] = p.beta_1 * mb[j] + (1.0 - p.beta_1) * d;
                                    let d2 = d * d;
                                    let s = vb[j] - d2;
                                    let sign = if s > 0.0 {
                                        1.0
                                    } else if s < 0.0 {
                                        -1.0
                                    } else {
                                        0.0
                                    };
                                    vb[j] -= (1.0 - p.beta_2) * d2 * sign;
                                }
                            }
                            xb[j] += eta_step * mb[j] / (vb[j].sqrt() + p.tau);
                            avg[j] = xb[j];
                        }
                        encode_into(dtype, avg, ob);
                    },
                );
            tensors.push(TensorView::new(gt.name(), dtype, gt.shape().to_vec(), out)?);
        }
        Ok((ModelView::new(tensors)?, metrics))
    }

    fn state(&self) -> Model {
        state_model(&[("m_t", &self.m), ("v_t", &self.v), ("x_t", &self.x)])
    }

    fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
        self.m = state_group(state, "m_t")?;
        self.v = state_group(state, "v_t")?;
        self.x = state_group(state, "x_t")?;
        Ok(())
    }
}

macro_rules! fedopt_strategy {
    ($ty:ident, $name:literal, $rule:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $ty<'a>(FedOpt<'a>);

        impl<'a> $ty<'a> {
            /// With the given hyperparameters and fold limits.
            pub fn new(params: FedOptParams, limits: Limits) -> Result<Self, FlError> {
                Ok(Self(FedOpt::new($name, $rule, params, limits)?))
            }

            /// The hyperparameters.
            pub fn params(&self) -> &FedOptParams {
                &self.0.p
            }
        }

        impl<'a> Strategy<'a> for $ty<'a> {
            fn name(&self) -> &str {
                $name
            }
            fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
                self.0.c.begin(round, global)
            }
            fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
                self.0.c.fold(update)
            }
            fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
                self.0.finish()
            }
            fn state(&self) -> Model {
                self.0.state()
            }
            fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
                self.0.load_state(state)
            }
            fn collector_mut(&mut self) -> &mut Collector<'a> {
                &mut self.0.c
            }
        }
    };
}

fedopt_strategy!(
    FedAdagrad,
    "fedadagrad",
    Rule::Adagrad,
    "Flower `FedAdagrad`: delta = avg - x; m = beta_1 m + (1 - beta_1) delta (beta_1 = 0); v += delta^2; x += eta m / (sqrt(v) + tau)."
);
fedopt_strategy!(
    FedAdam,
    "fedadam",
    Rule::Adam,
    "Flower `FedAdam`: m, v as Adam; x += eta_t m / (sqrt(v) + tau), eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) with t = server round (Flower's exponent)."
);
fedopt_strategy!(
    FedYogi,
    "fedyogi",
    Rule::Yogi,
    "Flower `FedYogi`: m as Adam; v -= (1 - beta_2) delta^2 sign(v - delta^2); x += eta m / (sqrt(v) + tau) (no bias correction)."
);

//! Flower `QFedAvg` (new API): L = 1 / client_learning_rate; per client F_k = its reported
//! `train_loss`; g_k = L (w - w_k); Delta_k = (F_k + 1e-10)^q g_k;
//! h_k = q (F_k + 1e-10)^(q - 1) ||g_k||^2 + L (F_k + 1e-10)^q; w <- w - sum Delta_k / sum h_k.
//! Defaults q = 0.1 (legacy `q_param` 0.2), `client_learning_rate` required (legacy
//! `qffl_learning_rate` 0.1), loss key `train_loss`.

use rayon::prelude::*;

use super::collector::tensor_sq_dist;
use super::kernel::{axpy_block, par_fill};
use super::{Collector, Limits, Metrics, Strategy, Update, aggregate_metrics};
use crate::error::FlError;
use crate::model::{Model, ModelView, TensorView};

/// Flower's epsilon added to the loss.
const LOSS_EPS: f64 = 1e-10;

#[derive(Debug, Clone)]
pub struct QFedAvg<'a> {
    c: Collector<'a>,
    pub q: f64,
    pub client_learning_rate: f64,
    pub train_loss_key: String,
}

impl<'a> QFedAvg<'a> {
    pub fn new(
        q: f64,
        client_learning_rate: f64,
        train_loss_key: &str,
        limits: Limits,
    ) -> Result<Self, FlError> {
        if !(q.is_finite() && q >= 0.0) {
            return Err(FlError::InvalidParam {
                name: "q".into(),
                value: q.to_string(),
                reason: "must be finite and >= 0".into(),
            });
        }
        if !(client_learning_rate.is_finite() && client_learning_rate > 0.0) {
            return Err(FlError::InvalidParam {
                name: "client_learning_rate".into(),
                value: client_learning_rate.to_string(),
                reason: "must be finite and > 0".into(),
            });
        }
        Ok(Self {
            c: Collector::new("qfedavg", limits),
            q,
            client_learning_rate,
            train_loss_key: train_loss_key.to_owned(),
        })
    }
}

impl<'a> Strategy<'a> for QFedAvg<'a> {
    fn name(&self) -> &str {
        "qfedavg"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.c.begin(round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        let loss = update.metrics.get(&self.train_loss_key).copied();
        if !loss.is_some_and(f64::is_finite) {
            return Err(FlError::MissingMetric {
                client: update.client,
                metric: self.train_loss_key.clone(),
                strategy: "qfedavg".into(),
            });
        }
        self.c.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        self.c.require_global()?;
        let (_, kept, global) = self.c.close()?;
        let global = global.ok_or_else(|| FlError::MissingGlobal {
            strategy: "qfedavg".into(),
        })?;
        let l = 1.0 / self.client_learning_rate;
        let q = self.q;
        // Per client: c_k = (F_k + eps)^q and h_k (needs ||g_k||^2 = L^2 ||w - w_k||^2).
        let per: Vec<(f64, f64)> = kept
            .par_iter()
            .map(|k| {
                let f = k.metrics[&self.train_loss_key] + LOSS_EPS;
                let sq: f64 = k
                    .model
                    .tensors()
                    .iter()
                    .zip(global.tensors())
                    .map(|(t, g)| tensor_sq_dist(t, Some(g)))
                    .sum();
                let norm = l * l * sq;
                let c = f.powf(q);
                (c, q * f.powf(q - 1.0) * norm + l * c)
            })
            .collect();
        let sum_h: f64 = per.iter().map(|p| p.1).sum();
        // sum_k Delta_k = L sum_k c_k (w - w_k) = L (C w - sum_k c_k w_k), C = sum c_k.
        let coeffs: Vec<f64> = per.iter().map(|p| p.0).collect();
        let c_sum: f64 = coeffs.iter().sum();
        let mut tensors = Vec::with_capacity(global.len());
        for (t, gt) in global.tensors().iter().enumerate() {
            let data = par_fill(gt.dtype(), gt.numel(), |start, out| {
                let mut wk = vec![0.0f64; out.len()];
                out.fill(0.0);
                for (k, c) in kept.iter().zip(&coeffs) {
                    axpy_block(&k.model.tensors()[t], *c, start, out);
                }
                gt.load_f64(start, &mut wk);
                for (o, w) in out.iter_mut().zip(&wk) {
                    let delta = l * (c_sum * w - *o);
                    *o = w - delta / sum_h;
                }
            });
            tensors.push(TensorView::new(
                gt.name(),
                gt.dtype(),
                gt.shape().to_vec(),
                data,
            )?);
        }
        let metrics = aggregate_metrics(kept.iter().map(|k| (k.num_examples, &k.metrics)));
        Ok((ModelView::new(tensors)?, metrics))
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        &mut self.c
    }
}

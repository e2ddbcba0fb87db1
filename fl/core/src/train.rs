//! Local trainers in plain Rust f32: softmax regression and a one-hidden-layer ReLU MLP, with
//! cross-entropy loss, backprop, minibatch SGD for E local epochs, FedProx's proximal term
//! (`mu/2 ||w - w_global||^2`), partial work for stragglers and evaluation (loss, accuracy).
//!
//! Parameters are one flat `&[f32]` whose layout [`Architecture::layout`] describes as named
//! tensors in PyTorch's `nn.Linear` convention (`fc1.weight` is `[out, in]`, row-major, then
//! `fc1.bias`), so they map one-to-one onto a model's named tensors.
//!
//! Deterministic given the random stream: the only randomness is the initialisation and the
//! per-epoch shuffle, both drawn from the caller's `ChaCha8Rng`. Sums run in a fixed order.

use crate::data::Dataset;
use crate::model::{Model, ModelView, TensorView};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Bound on local epochs per call (a configuration larger than this is a mistake, and it keeps
/// the training loop bounded).
pub const MAX_EPOCHS: u32 = 10_000;

/// Errors from training or evaluation; each names the parameter or shape that is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("parameter vector has {got} values, {arch} needs {expected}")]
    ParamLength {
        arch: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "dataset has {got_features} features and {got_classes} classes, {arch} needs {features} and {classes}"
    )]
    DataShape {
        arch: String,
        features: usize,
        classes: usize,
        got_features: usize,
        got_classes: usize,
    },
    #[error("invalid training config {name}: {why}")]
    Config { name: &'static str, why: String },
    #[error("model tensor `{tensor}`: {why}")]
    Model { tensor: String, why: String },
    #[error("training diverged: non-finite loss at step {step}")]
    Diverged { step: u64 },
}

/// A named tensor inside the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    /// PyTorch shape: `[out, in]` for weights, `[out]` for biases.
    pub shape: Vec<usize>,
    /// Offset in the flat vector.
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Architecture {
    /// Multinomial logistic regression: `fc.weight [classes, inputs]`, `fc.bias [classes]`.
    Softmax { inputs: usize, classes: usize },
    /// `fc1 [hidden, inputs]` + ReLU + `fc2 [classes, hidden]`, with biases.
    Mlp {
        inputs: usize,
        hidden: usize,
        classes: usize,
    },
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Architecture::Softmax { inputs, classes } => write!(f, "softmax-{inputs}-{classes}"),
            Architecture::Mlp {
                inputs,
                hidden,
                classes,
            } => write!(f, "mlp-{inputs}-{hidden}-{classes}"),
        }
    }
}

impl Architecture {
    pub fn inputs(&self) -> usize {
        match *self {
            Architecture::Softmax { inputs, .. } | Architecture::Mlp { inputs, .. } => inputs,
        }
    }

    pub fn classes(&self) -> usize {
        match *self {
            Architecture::Softmax { classes, .. } | Architecture::Mlp { classes, .. } => classes,
        }
    }

    /// The dense layers as `(inputs, outputs)`, first to last.
    fn layers(&self) -> Vec<(usize, usize)> {
        match *self {
            Architecture::Softmax { inputs, classes } => vec![(inputs, classes)],
            Architecture::Mlp {
                inputs,
                hidden,
                classes,
            } => vec![(inputs, hidden), (hidden, classes)],
        }
    }

    /// Named tensors in order: `fc.weight, fc.bias` or `fc1.weight, fc1.bias, fc2.weight, fc2.bias`.
    pub fn layout(&self) -> Vec<TensorSpec> {
        let names: &[(&'static str, &'static str)] = match self {
            Architecture::Softmax { .. } => &[("fc.weight", "fc.bias")],
            Architecture::Mlp { .. } => &[("fc1.weight", "fc1.bias"), ("fc2.weight", "fc2.bias")],
        };
        let mut offset = 0;
        let mut out = Vec::new();
        for ((i, o), (wn, bn)) in self.layers().into_iter().zip(names) {
            out.push(TensorSpec {
                name: wn,
                shape: vec![o, i],
                offset,
            });
            offset += o * i;
            out.push(TensorSpec {
                name: bn,
                shape: vec![o],
                offset,
            });
            offset += o;
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.layers().iter().map(|(i, o)| i * o + o).sum()
    }

    /// PyTorch's `nn.Linear` default initialisation: weights and biases uniform in
    /// `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.
    pub fn init(&self, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut p = Vec::with_capacity(self.num_params());
        for (i, o) in self.layers() {
            let bound = 1.0 / (i.max(1) as f32).sqrt();
            for _ in 0..(i * o + o) {
                p.push(rng.random_range(-bound..=bound));
            }
        }
        p
    }

    /// The flat parameters as a model of named f32 tensors in [`Self::layout`] order.
    pub fn to_model(&self, params: &[f32]) -> Result<Model, TrainError> {
        self.check_params(params)?;
        let layout = self.layout();
        let tensors = layout
            .iter()
            .map(|t| {
                TensorView::from_f32(
                    t.name,
                    t.shape.clone(),
                    &params[t.offset..t.offset + t.len()],
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrainError::Model {
                tensor: String::new(),
                why: e.to_string(),
            })?;
        Model::new(tensors).map_err(|e| TrainError::Model {
            tensor: String::new(),
            why: e.to_string(),
        })
    }

    /// Reads flat parameters back from a model: exactly [`Self::layout`]'s tensors, in order,
    /// with their shapes, f32 (other float dtypes are converted).
    pub fn params_from_model(&self, model: &ModelView<'_>) -> Result<Vec<f32>, TrainError> {
        let layout = self.layout();
        if model.len() != layout.len() {
            return Err(TrainError::Model {
                tensor: String::new(),
                why: format!("{} tensors, {self} has {}", model.len(), layout.len()),
            });
        }
        let mut out = Vec::with_capacity(self.num_params());
        for (spec, t) in layout.iter().zip(model.tensors()) {
            if t.name() != spec.name {
                return Err(TrainError::Model {
                    tensor: t.name().to_owned(),
                    why: format!("expected `{}` at this position", spec.name),
                });
            }
            if t.shape() != spec.shape.as_slice() {
                return Err(TrainError::Model {
                    tensor: spec.name.to_owned(),
                    why: format!("shape {:?}, expected {:?}", t.shape(), spec.shape),
                });
            }
            if !t.dtype().is_float() {
                return Err(TrainError::Model {
                    tensor: spec.name.to_owned(),
                    why: format!("dtype {} is not a float type", t.dtype()),
                });
            }
            match t.as_f32() {
                Some(v) => out.extend_from_slice(v),
                None => out.extend(t.to_f32_vec()),
            }
        }
        Ok(out)
    }

    fn check_params(&self, params: &[f32]) -> Result<(), TrainError> {
        if params.len() != self.num_params() {
            return Err(TrainError::ParamLength {
                arch: self.to_string(),
                expected: self.num_params(),
                got: params.len(),
            });
        }
        Ok(())
    }

    fn check_data(&self, data: &Dataset) -> Result<(), TrainError> {
        if data.num_features != self.inputs() || data.num_classes != self.classes() {
            return Err(TrainError::DataShape {
                arch: self.to_string(),
                features: self.inputs(),
                classes: self.classes(),
                got_features: data.num_features,
                got_classes: data.num_classes,
            });
        }
        Ok(())
    }
}

/// Local training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Local epochs E.
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// FedProx's mu (0 = plain FedAvg local SGD).
    pub proximal_mu: f32,
    /// Fraction of the planned SGD steps actually done, in `[0, 1]`: 1 for a full client, less
    /// for a straggler that returns partial work (FedProx's "systems heterogeneity").
    pub work_fraction: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            proximal_mu: 0.0,
            work_fraction: 1.0,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), TrainError> {
        let bad = |name, why: String| Err(TrainError::Config { name, why });
        if self.epochs > MAX_EPOCHS {
            return bad("epochs", format!("{} exceeds {MAX_EPOCHS}", self.epochs));
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be positive".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                format!("{} is not a finite positive number", self.learning_rate),
            );
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return bad(
                "proximal_mu",
                format!("{} is not a finite non-negative number", self.proximal_mu),
            );
        }
        if !(0.0..=1.0).contains(&self.work_fraction) {
            return bad(
                "work_fraction",
                format!("{} is not in [0, 1]", self.work_fraction),
            );
        }
        Ok(())
    }

    /// SGD steps a full client does on `num_examples` examples: `epochs * ceil(n / batch)`.
    pub fn planned_steps(&self, num_examples: usize) -> u64 {
        self.epochs as u64 * num_examples.div_ceil(self.batch_size.max(1)) as u64
    }

    /// Steps actually done given `work_fraction` (rounded up, so any positive fraction does work).
    pub fn steps(&self, num_examples: usize) -> u64 {
        let planned = self.planned_steps(num_examples);
        ((planned as f64 * self.work_fraction).ceil() as u64).min(planned)
    }
}

/// What one local training call did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub num_examples: usize,
    pub steps: u64,
    pub planned_steps: u64,
    /// Examples processed (with repetition across epochs).
    pub examples_seen: u64,
    /// Mean cross-entropy over the examples processed, measured in the forward passes (before
    /// each step's update), without the proximal term; 0 when no step ran.
    pub train_loss: f64,
}

/// Loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub num_examples: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of examples whose argmax prediction is the label.
    pub accuracy: f64,
}

/// A trainer for one architecture, holding scratch buffers so repeated calls do not allocate.
#[derive(Debug, Clone)]
pub struct Trainer {
    arch: Architecture,
    grad: Vec<f32>,
    global: Vec<f32>,
    hidden: Vec<f32>,
    dhidden: Vec<f32>,
    logits: Vec<f32>,
    order: Vec<usize>,
}

impl Trainer {
    pub fn new(arch: Architecture) -> Self {
        let hidden = match arch {
            Architecture::Mlp { hidden, .. } => hidden,
            Architecture::Softmax { .. } => 0,
        };
        Self {
            arch,
            grad: vec![0.0; arch.num_params()],
            global: Vec::new(),
            hidden: vec![0.0; hidden],
            dhidden: vec![0.0; hidden],
            logits: vec![0.0; arch.classes()],
            order: Vec::new(),
        }
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Trains `params` in place (they start as the global model, which the proximal term pulls
    /// towards) on `data` with minibatch SGD: each epoch a fresh shuffle from `rng`, batches of
    /// `batch_size` (the last one smaller), `steps(n)` steps in total.
    pub fn train(
        &mut self,
        params: &mut [f32],
        data: &Dataset,
        cfg: &TrainConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<TrainReport, TrainError> {
        self.arch.check_params(params)?;
        self.arch.check_data(data)?;
        cfg.check()?;
        let n = data.len();
        let planned = cfg.planned_steps(n);
        let total_steps = cfg.steps(n);
        let mut report = TrainReport {
            num_examples: n,
            steps: 0,
            planned_steps: planned,
            examples_seen: 0,
            train_loss: 0.0,
        };
        if total_steps == 0 {
            return Ok(report);
        }
        self.global.clear();
        self.global.extend_from_slice(params);
        self.order.clear();
        self.order.extend(0..n);
        let mut loss_sum = 0.0f64;
        'epochs: for _epoch in 0..cfg.epochs {
            self.order.shuffle(rng);
            let mut start = 0;
            while start < n {
                if report.steps == total_steps {
                    break 'epochs;
                }
                let end = (start + cfg.batch_size).min(n);
                let batch_loss = self.step(params, data, start, end, cfg);
                if !batch_loss.is_finite() {
                    return Err(TrainError::Diverged { step: report.steps });
                }
                loss_sum += batch_loss;
                report.examples_seen += (end - start) as u64;
                report.steps += 1;
                start = end;
            }
        }
        debug_assert_eq!(report.steps, total_steps);
        report.train_loss = loss_sum / report.examples_seen as f64;
        Ok(report)
    }

    /// One SGD step on `order[start..end]`; returns the batch's summed loss.
    fn step(
        &mut self,
        params: &mut [f32],
        data: &Dataset,
        start: usize,
        end: usize,
        cfg: &TrainConfig,
    ) -> f64 {
        self.grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0f64;
        for k in start..end {
            let row = self.order[k];
            loss += self.accumulate_example(params, data.row(row), data.labels[row] as usize);
        }
        let scale = 1.0 / (end - start) as f32;
        let lr = cfg.learning_rate;
        let mu = cfg.proximal_mu;
        if mu == 0.0 {
            for (w, g) in params.iter_mut().zip(&self.grad) {
                *w -= lr * g * scale;
            }
        } else {
            for ((w, g), wg) in params.iter_mut().zip(&self.grad).zip(&self.global) {
                *w -= lr * (g * scale + mu * (*w - wg));
            }
        }
        loss
    }

    /// Forward and backward for one example, adding its gradient to `self.grad`; returns its loss.
    fn accumulate_example(&mut self, params: &[f32], x: &[f32], label: usize) -> f64 {
        match self.arch {
            Architecture::Softmax { inputs, classes } => {
                let (w, b) = params.split_at(inputs * classes);
                dense_forward(w, b, x, &mut self.logits);
                let loss = softmax_xent_grad(&mut self.logits, label);
                let (gw, gb) = self.grad.split_at_mut(inputs * classes);
                dense_grad(&self.logits, x, gw, gb);
                loss
            }
            Architecture::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                let (w1, rest) = params.split_at(inputs * hidden);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(hidden * classes);
                dense_forward(w1, b1, x, &mut self.hidden);
                self.hidden.iter_mut().for_each(|h| *h = h.max(0.0));
                dense_forward(w2, b2, &self.hidden, &mut self.logits);
                let loss = softmax_xent_grad(&mut self.logits, label);
                let (g1, g2) = self.grad.split_at_mut(inputs * hidden + hidden);
                let (gw1, gb1) = g1.split_at_mut(inputs * hidden);
                let (gw2, gb2) = g2.split_at_mut(hidden * classes);
                dense_grad(&self.logits, &self.hidden, gw2, gb2);
                // dh = W2^T dz, masked by ReLU.
                self.dhidden.iter_mut().for_each(|d| *d = 0.0);
                for (o, dz) in self.logits.iter().enumerate() {
                    for (d, w) in self
                        .dhidden
                        .iter_mut()
                        .zip(&w2[o * hidden..(o + 1) * hidden])
                    {
                        *d += w * dz;
                    }
                }
                for (d, h) in self.dhidden.iter_mut().zip(&self.hidden) {
                    if *h <= 0.0 {
                        *d = 0.0;
                    }
                }
                dense_grad(&self.dhidden, x, gw1, gb1);
                loss
            }
        }
    }

    /// Mean cross-entropy and accuracy of `params` on `data`.
    pub fn evaluate(&mut self, params: &[f32], data: &Dataset) -> Result<Evaluation, TrainError> {
        self.arch.check_params(params)?;
        self.arch.check_data(data)?;
        let mut loss = 0.0f64;
        let mut correct = 0usize;
        for i in 0..data.len() {
            self.forward(params, data.row(i));
            let label = data.labels[i] as usize;
            let pred = argmax(&self.logits);
            if pred == label {
                correct += 1;
            }
            loss += softmax_xent_grad(&mut self.logits, label);
        }
        let n = data.len().max(1) as f64;
        Ok(Evaluation {
            num_examples: data.len(),
            loss: loss / n,
            accuracy: correct as f64 / n,
        })
    }

    /// Forward pass into `self.logits`.
    fn forward(&mut self, params: &[f32], x: &[f32]) {
        match self.arch {
            Architecture::Softmax { inputs, classes } => {
                let (w, b) = params.split_at(inputs * classes);
                dense_forward(w, b, x, &mut self.logits);
            }
            Architecture::Mlp {
                inputs,
                hidden,
                classes,
            } => {
                let (w1, rest) = params.split_at(inputs * hidden);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(hidden * classes);
                dense_forward(w1, b1, x, &mut self.hidden);
                self.hidden.iter_mut().for_each(|h| *h = h.max(0.0));
                dense_forward(w2, b2, &self.hidden, &mut self.logits);
            }
        }
    }

    /// Class predicted for one input (argmax of the logits; the first maximum wins).
    pub fn predict(&mut self, params: &[f32], x: &[f32]) -> Result<usize, TrainError> {
        self.arch.check_params(params)?;
        if x.len() != self.arch.inputs() {
            return Err(TrainError::DataShape {
                arch: self.arch.to_string(),
                features: self.arch.inputs(),
                classes: self.arch.classes(),
                got_features: x.len(),
                got_classes: self.arch.classes(),
            });
        }
        self.forward(params, x);
        Ok(argmax(&self.logits))
    }
}

/// `out[o] = b[o] + sum_i w[o, i] x[i]` with `w` row-major `[out, in]`.
fn dense_forward(w: &[f32], b: &[f32], x: &[f32], out: &mut [f32]) {
    let n_in = x.len();
    for (o, (y, bo)) in out.iter_mut().zip(b).enumerate() {
        let row = &w[o * n_in..(o + 1) * n_in];
        let mut acc = 0.0f32;
        for (wi, xi) in row.iter().zip(x) {
            acc += wi * xi;
        }
        *y = bo + acc;
    }
}

/// `gw[o, i] += dout[o] x[i]`, `gb[o] += dout[o]`.
fn dense_grad(dout: &[f32], x: &[f32], gw: &mut [f32], gb: &mut [f32]) {
    let n_in = x.len();
    for (o, (d, g)) in dout.iter().zip(gb.iter_mut()).enumerate() {
        *g += d;
        if *d == 0.0 {
            continue;
        }
        for (gwi, xi) in gw[o * n_in..(o + 1) * n_in].iter_mut().zip(x) {
            *gwi += d * xi;
        }
    }
}

/// Replaces logits `z` by `softmax(z) - onehot(label)` (the gradient of the cross-entropy with
/// respect to `z`) and returns the loss `-log softmax(z)[label]`, computed stably.
fn softmax_xent_grad(z: &mut [f32], label: usize) -> f64 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let p_label = f64::from(z[label] / sum);
    // NaN (overflowed logits) propagates so that training reports divergence.
    let loss = if p_label.is_nan() {
        f64::NAN
    } else {
        -p_label.max(f64::from(f32::MIN_POSITIVE)).ln()
    };
    for v in z.iter_mut() {
        *v /= sum;
    }
    z[label] -= 1.0;
    loss
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Finite-difference check of the MLP gradient against the analytic one.
    #[test]
    fn mlp_gradient_matches_finite_differences() {
        let arch = Architecture::Mlp {
            inputs: 5,
            hidden: 4,
            classes: 3,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let params = arch.init(&mut rng);
        let x: Vec<f32> = (0..5).map(|i| (i as f32 - 2.0) * 0.3).collect();
        let label = 2;
        let mut t = Trainer::new(arch);
        t.grad.iter_mut().for_each(|g| *g = 0.0);
        let _ = t.accumulate_example(&params, &x, label);
        let analytic = t.grad.clone();
        let loss_at = |p: &[f32], t: &mut Trainer| {
            t.forward(p, &x);
            softmax_xent_grad(&mut t.logits, label)
        };
        let eps = 1e-3f32;
        for k in 0..params.len() {
            let mut p = params.clone();
            p[k] += eps;
            let up = loss_at(&p, &mut t);
            p[k] -= 2.0 * eps;
            let down = loss_at(&p, &mut t);
            let numeric = (up - down) / (2.0 * eps as f64);
            assert!(
                (numeric - analytic[k] as f64).abs() < 2e-3,
                "param {k}: numeric {numeric} analytic {}",
                analytic[k]
            );
        }
    }

    #[test]
    fn layout_matches_num_params() {
        let arch = Architecture::Mlp {
            inputs: 64,
            hidden: 16,
            classes: 10,
        };
        let l = arch.layout();
        assert_eq!(
            l.iter().map(|t| t.name).collect::<Vec<_>>(),
            ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        );
        assert_eq!(l[2].offset, 64 * 16 + 16);
        assert_eq!(
            l.iter().map(TensorSpec::len).sum::<usize>(),
            arch.num_params()
        );
    }
}

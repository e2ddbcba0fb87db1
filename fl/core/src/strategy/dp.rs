//! Server-side differential privacy wrappers: `DifferentialPrivacyServerSideFixedClipping`
//! and `DifferentialPrivacyServerSideAdaptiveClipping` (Flower names `dp-fixed-clipping`,
//! `dp-adaptive-clipping`).
//!
//! Each client's update u = w_k - w is scaled by min(1, C / ||u||) (flat L2 over all tensors);
//! the inner strategy aggregates w + u (weights still num_examples); Gaussian noise
//! N(0, sigma^2), sigma = z C / num_sampled_clients, is added to every float coordinate.
//! Noise comes from ChaCha20 seeded with `seed`, stream = round, so a round can be recomputed.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

use super::collector::update_norm;
use super::{Collector, Metrics, Strategy, Update};
use crate::error::FlError;
use crate::model::{Model, ModelView, TensorView};

fn param_err(name: &str, v: f64, reason: &str) -> FlError {
    FlError::InvalidParam {
        name: name.into(),
        value: v.to_string(),
        reason: reason.into(),
    }
}

/// Clips every kept update against `clip` and returns how many were clipped.
fn clip_all(inner: &mut dyn Strategy<'_>, clip: f64) -> Result<usize, FlError> {
    let c = inner.collector_mut();
    let global = c.require_global()?.clone();
    let factors: Vec<(String, f64)> = c
        .kept()
        .iter()
        .map(|k| {
            let (norm, _) = update_norm(&k.model, Some(&global));
            // Flower: scaling = min(1, C / ||u||) (norm 0 gives inf, so 1).
            let f = if norm > clip { clip / norm } else { 1.0 };
            (k.client.clone(), f)
        })
        .collect();
    let mut clipped = 0;
    for (client, f) in factors {
        if f < 1.0 {
            clipped += 1;
        }
        c.set_clip_factor(&client, f);
    }
    Ok(clipped)
}

fn add_noise(model: Model, std: f64, seed: u64, round: u64) -> Result<Model, FlError> {
    if std == 0.0 {
        return Ok(model);
    }
    let normal =
        Normal::new(0.0, std).map_err(|e| param_err("noise stddev", std, &e.to_string()))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(round);
    let mut tensors = Vec::with_capacity(model.len());
    for t in model.tensors() {
        if !t.dtype().is_float() {
            tensors.push(t.clone());
            continue;
        }
        let mut v = t.to_f64_vec();
        for x in v.iter_mut() {
            *x += normal.sample(&mut rng);
        }
        tensors.push(TensorView::from_f64_as(
            t.name(),
            t.dtype(),
            t.shape().to_vec(),
            &v,
        )?);
    }
    ModelView::new(tensors)
}

fn split_state(state: &ModelView<'_>) -> (Model, Option<f64>) {
    let mut inner = Vec::new();
    let mut clip = None;
    for t in state.tensors() {
        if t.name() == "dp/clipping_norm" && t.numel() == 1 {
            clip = Some(t.get_f64(0));
        } else if !t.name().starts_with("dp/") {
            inner.push(t.clone().into_owned());
        }
    }
    (ModelView::new(inner).unwrap_or_default(), clip)
}

/// Flower `DifferentialPrivacyServerSideFixedClipping`.
pub struct DpFixedClipping<'a> {
    inner: Box<dyn Strategy<'a> + 'a>,
    pub noise_multiplier: f64,
    pub clipping_norm: f64,
    pub num_sampled_clients: usize,
    seed: u64,
    round: u64,
}

impl<'a> DpFixedClipping<'a> {
    pub fn new(
        inner: Box<dyn Strategy<'a> + 'a>,
        noise_multiplier: f64,
        clipping_norm: f64,
        num_sampled_clients: usize,
        seed: u64,
    ) -> Result<Self, FlError> {
        if !(noise_multiplier >= 0.0 && noise_multiplier.is_finite()) {
            return Err(param_err(
                "noise_multiplier",
                noise_multiplier,
                "must be finite and >= 0",
            ));
        }
        if !(clipping_norm > 0.0 && clipping_norm.is_finite()) {
            return Err(param_err(
                "clipping_norm",
                clipping_norm,
                "must be finite and > 0",
            ));
        }
        if num_sampled_clients == 0 {
            return Err(param_err("num_sampled_clients", 0.0, "must be > 0"));
        }
        Ok(Self {
            inner,
            noise_multiplier,
            clipping_norm,
            num_sampled_clients,
            seed,
            round: 0,
        })
    }
}

impl<'a> Strategy<'a> for DpFixedClipping<'a> {
    fn name(&self) -> &str {
        "dp-fixed-clipping"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.round = round;
        begin_inner(self.inner.as_mut(), "dp-fixed-clipping", round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        self.inner.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        let clipped = clip_all(self.inner.as_mut(), self.clipping_norm)?;
        let (model, mut metrics) = self.inner.finish()?;
        let std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients as f64;
        let model = add_noise(model, std, self.seed, self.round)?;
        metrics.insert("dp_noise_stddev".into(), std);
        metrics.insert("dp_clipped_count".into(), clipped as f64);
        Ok((model, metrics))
    }
    fn state(&self) -> Model {
        self.inner.state()
    }
    fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
        self.inner.load_state(&split_state(state).0)
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        self.inner.collector_mut()
    }
}

/// Flower `DifferentialPrivacyServerSideAdaptiveClipping`: as fixed clipping, then
/// C <- C exp(lr (b - gamma)) with b = (#clipped + N(0, sigma_b^2)) / n, before the noise is
/// added with the new C; z is re-derived as (z^-2 - (2 sigma_b)^-2)^(-1/2).
///
/// Divergence: Flower uses exp(-lr (b - gamma)) with b the clipped fraction, so when more
/// than gamma of the updates are clipped C shrinks and clips even more (positive feedback).
/// We use exp(+lr (b - gamma)): C grows when too many are clipped and shrinks when too few,
/// so it tracks the norm quantile with a gamma fraction clipped (Andrew et al. 2019, whose
/// b is the unclipped fraction 1 - b with target 1 - gamma).
pub struct DpAdaptiveClipping<'a> {
    inner: Box<dyn Strategy<'a> + 'a>,
    /// The effective noise multiplier after re-derivation.
    pub noise_multiplier: f64,
    pub num_sampled_clients: usize,
    pub clipping_norm: f64,
    pub target_clipped_quantile: f64,
    pub clip_norm_lr: f64,
    pub clipped_count_stddev: f64,
    seed: u64,
    round: u64,
}

impl<'a> DpAdaptiveClipping<'a> {
    /// Flower defaults: initial_clipping_norm 0.1, target_clipped_quantile 0.5,
    /// clip_norm_lr 0.2, clipped_count_stddev = num_sampled_clients / 20 when noise > 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: Box<dyn Strategy<'a> + 'a>,
        noise_multiplier: f64,
        num_sampled_clients: usize,
        initial_clipping_norm: f64,
        target_clipped_quantile: f64,
        clip_norm_lr: f64,
        clipped_count_stddev: Option<f64>,
        seed: u64,
    ) -> Result<Self, FlError> {
        if !(noise_multiplier >= 0.0 && noise_multiplier.is_finite()) {
            return Err(param_err(
                "noise_multiplier",
                noise_multiplier,
                "must be finite and >= 0",
            ));
        }
        if num_sampled_clients == 0 {
            return Err(param_err("num_sampled_clients", 0.0, "must be > 0"));
        }
        if !(initial_clipping_norm > 0.0 && initial_clipping_norm.is_finite()) {
            return Err(param_err(
                "initial_clipping_norm",
                initial_clipping_norm,
                "must be finite and > 0",
            ));
        }
        if !(0.0..=1.0).contains(&target_clipped_quantile) {
            return Err(param_err(
                "target_clipped_quantile",
                target_clipped_quantile,
                "must be in [0, 1]",
            ));
        }
        if !(clip_norm_lr > 0.0 && clip_norm_lr.is_finite()) {
            return Err(param_err(
                "clip_norm_lr",
                clip_norm_lr,
                "must be finite and > 0",
            ));
        }
        if let Some(s) = clipped_count_stddev
            && !(s >= 0.0 && s.is_finite())
        {
            return Err(param_err(
                "clipped_count_stddev",
                s,
                "must be finite and >= 0",
            ));
        }
        let (stddev, z) = if noise_multiplier > 0.0 {
            let s = clipped_count_stddev.unwrap_or(num_sampled_clients as f64 / 20.0);
            if noise_multiplier >= 2.0 * s {
                return Err(param_err(
                    "noise_multiplier",
                    noise_multiplier,
                    &format!(
                        "must be below 2 x clipped_count_stddev ({s}) to re-derive the update noise"
                    ),
                ));
            }
            (
                s,
                (noise_multiplier.powi(-2) - (2.0 * s).powi(-2)).powf(-0.5),
            )
        } else {
            (clipped_count_stddev.unwrap_or(0.0), noise_multiplier)
        };
        Ok(Self {
            inner,
            noise_multiplier: z,
            num_sampled_clients,
            clipping_norm: initial_clipping_norm,
            target_clipped_quantile,
            clip_norm_lr,
            clipped_count_stddev: stddev,
            seed,
            round: 0,
        })
    }
}

impl<'a> Strategy<'a> for DpAdaptiveClipping<'a> {
    fn name(&self) -> &str {
        "dp-adaptive-clipping"
    }
    fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.round = round;
        begin_inner(self.inner.as_mut(), "dp-adaptive-clipping", round, global)
    }
    fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        self.inner.fold(update)
    }
    fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
        let n = self.inner.collector_mut().len();
        let clipped = clip_all(self.inner.as_mut(), self.clipping_norm)?;
        let (model, mut metrics) = self.inner.finish()?;
        // The count noise uses its own ChaCha stream (2^63 + round) so it never overlaps
        // the update noise.
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        rng.set_stream((1u64 << 63) | self.round);
        let count_noise = if self.clipped_count_stddev > 0.0 {
            Normal::new(0.0, self.clipped_count_stddev)
                .map_err(|e| {
                    param_err(
                        "clipped_count_stddev",
                        self.clipped_count_stddev,
                        &e.to_string(),
                    )
                })?
                .sample(&mut rng)
        } else {
            0.0
        };
        let fraction = (clipped as f64 + count_noise) / n as f64;
        self.clipping_norm *= (self.clip_norm_lr * (fraction - self.target_clipped_quantile)).exp();
        let std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients as f64;
        let model = add_noise(model, std, self.seed, self.round)?;
        metrics.insert("dp_noise_stddev".into(), std);
        metrics.insert("dp_clipped_count".into(), clipped as f64);
        metrics.insert("dp_clipping_norm".into(), self.clipping_norm);
        Ok((model, metrics))
    }
    fn state(&self) -> Model {
        let mut s = self.inner.state();
        if let Ok(t) = TensorView::from_f64("dp/clipping_norm", vec![], &[self.clipping_norm]) {
            let _ = s.push(t);
        }
        s
    }
    fn load_state(&mut self, state: &ModelView<'_>) -> Result<(), FlError> {
        let (inner, clip) = split_state(state);
        if let Some(c) = clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(FlError::InvalidState {
                    reason: format!("dp/clipping_norm = {c} must be finite and > 0"),
                });
            }
            self.clipping_norm = c;
        }
        self.inner.load_state(&inner)
    }
    fn collector_mut(&mut self) -> &mut Collector<'a> {
        self.inner.collector_mut()
    }
}

/// Both DP wrappers clip relative to the current global model, so they refuse a round without one
/// and otherwise hand the round to the inner strategy.
fn begin_inner<'a>(
    inner: &mut (dyn Strategy<'a> + 'a),
    wrapper: &str,
    round: u64,
    global: Option<ModelView<'a>>,
) -> Result<(), FlError> {
    if global.is_none() {
        return Err(FlError::MissingGlobal {
            strategy: wrapper.into(),
        });
    }
    inner.begin(round, global)
}

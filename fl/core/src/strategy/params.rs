//! Building a strategy from Flower's class name (lower case) and Flower parameter names,
//! as `fl aggregate --strategy NAME --param KEY=VALUE` does.

use std::collections::BTreeMap;

use super::{
    Bulyan, DpAdaptiveClipping, DpFixedClipping, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian,
    FedOptParams, FedProx, FedTrimmedAvg, FedYogi, Krum, Limits, MultiKrum, QFedAvg, Strategy,
};
use crate::error::FlError;

/// Parameters by Flower name, values as text.
pub type Params = BTreeMap<String, String>;

/// Every strategy name [`build_strategy`] accepts.
pub const STRATEGY_NAMES: &[&str] = &[
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadagrad",
    "fedadam",
    "fedyogi",
    "qfedavg",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
    "dp-fixed-clipping",
    "dp-adaptive-clipping",
];

/// Flower client-sampling parameters: accepted for every strategy, no effect on aggregation
/// (sampling happens before the updates exist).
const SAMPLING: &[&str] = &[
    "fraction_fit",
    "fraction_evaluate",
    "fraction_train",
    "min_fit_clients",
    "min_evaluate_clients",
    "min_available_clients",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "accept_failures",
    "inplace",
];

struct Reader<'p> {
    strategy: String,
    params: &'p Params,
    used: std::collections::BTreeSet<&'p str>,
}

impl<'p> Reader<'p> {
    fn raw(&mut self, names: &[&str]) -> Option<(&'p str, &'p str)> {
        for n in names {
            if let Some((k, v)) = self.params.get_key_value(*n) {
                self.used.insert(k.as_str());
                return Some((k.as_str(), v.as_str()));
            }
        }
        None
    }

    fn f64(&mut self, names: &[&str], default: Option<f64>) -> Result<f64, FlError> {
        match self.raw(names) {
            Some((k, v)) => v.trim().parse::<f64>().map_err(|e| FlError::InvalidParam {
                name: k.into(),
                value: v.into(),
                reason: format!("not a number: {e}"),
            }),
            None => default.ok_or_else(|| FlError::InvalidParam {
                name: names[0].into(),
                value: String::new(),
                reason: format!("required by {}", self.strategy),
            }),
        }
    }

    fn usize(&mut self, names: &[&str], default: usize) -> Result<usize, FlError> {
        match self.raw(names) {
            Some((k, v)) => v
                .trim()
                .parse::<usize>()
                .map_err(|e| FlError::InvalidParam {
                    name: k.into(),
                    value: v.into(),
                    reason: format!("not a non-negative integer: {e}"),
                }),
            None => Ok(default),
        }
    }

    fn finish(self) -> Result<(), FlError> {
        for k in self.params.keys() {
            if !self.used.contains(k.as_str()) && !SAMPLING.contains(&k.as_str()) {
                return Err(FlError::UnknownParam {
                    strategy: self.strategy.clone(),
                    name: k.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Builds strategy `name` from Flower parameter names. Defaults are those of Flower's current
/// (serverapp) API; legacy defaults can be given explicitly (e.g. `tau=1e-9` for the legacy
/// FedAdam, `q_param=0.2`). `seed` seeds the DP noise. Unknown parameters are an error.
pub fn build_strategy<'a>(
    name: &str,
    params: &Params,
    limits: Limits,
    seed: u64,
) -> Result<Box<dyn Strategy<'a> + 'a>, FlError> {
    let mut r = Reader {
        strategy: name.to_owned(),
        params,
        used: Default::default(),
    };
    let s: Box<dyn Strategy<'a> + 'a> = match name {
        "fedavg" => Box::new(FedAvg::with_limits(limits)),
        "fedprox" => Box::new(FedProx::new(r.f64(&["proximal_mu"], Some(0.0))?, limits)?),
        "fedavgm" => Box::new(FedAvgM::new(
            r.f64(&["server_learning_rate"], Some(1.0))?,
            r.f64(&["server_momentum"], Some(0.0))?,
            limits,
        )?),
        "fedadagrad" | "fedadam" | "fedyogi" => {
            let d = match name {
                "fedadagrad" => FedOptParams::ADAGRAD,
                "fedadam" => FedOptParams::ADAM,
                _ => FedOptParams::YOGI,
            };
            let p = FedOptParams {
                eta: r.f64(&["eta"], Some(d.eta))?,
                eta_l: r.f64(&["eta_l"], Some(d.eta_l))?,
                beta_1: r.f64(&["beta_1"], Some(d.beta_1))?,
                beta_2: r.f64(&["beta_2"], Some(d.beta_2))?,
                tau: r.f64(&["tau"], Some(d.tau))?,
            };
            match name {
                "fedadagrad" => Box::new(FedAdagrad::new(p, limits)?),
                "fedadam" => Box::new(FedAdam::new(p, limits)?),
                _ => Box::new(FedYogi::new(p, limits)?),
            }
        }
        "qfedavg" => {
            let q = r.f64(&["q", "q_param"], Some(0.1))?;
            let lr = r.f64(&["client_learning_rate", "qffl_learning_rate"], None)?;
            let key = r
                .raw(&["train_loss_key"])
                .map(|(_, v)| v.to_owned())
                .unwrap_or_else(|| "train_loss".into());
            Box::new(QFedAvg::new(q, lr, &key, limits)?)
        }
        "fedmedian" => Box::new(FedMedian::new(limits)),
        "fedtrimmedavg" => Box::new(FedTrimmedAvg::new(r.f64(&["beta"], Some(0.2))?, limits)?),
        "krum" => {
            let f = r.usize(&["num_malicious_clients", "num_malicious_nodes"], 0)?;
            let keep = r.usize(&["num_clients_to_keep"], 0)?;
            if keep > 0 {
                Box::new(MultiKrum::new(f, keep, limits))
            } else {
                Box::new(Krum::new(f, limits))
            }
        }
        "multikrum" => Box::new(MultiKrum::new(
            r.usize(&["num_malicious_nodes", "num_malicious_clients"], 0)?,
            r.usize(&["num_nodes_to_select", "num_clients_to_keep"], 1)?,
            limits,
        )),
        "bulyan" => Box::new(Bulyan::new(
            r.usize(&["num_malicious_clients", "num_malicious_nodes"], 0)?,
            limits,
        )),
        "dp-fixed-clipping" | "dp-adaptive-clipping" => {
            let inner_name = r
                .raw(&["inner"])
                .map(|(_, v)| v.to_owned())
                .unwrap_or_else(|| "fedavg".into());
            if inner_name.starts_with("dp-") {
                return Err(FlError::InvalidParam {
                    name: "inner".into(),
                    value: inner_name,
                    reason: "a DP wrapper cannot wrap another DP wrapper".into(),
                });
            }
            let z = r.f64(&["noise_multiplier"], None)?;
            let n = r.usize(&["num_sampled_clients"], 0)?;
            let s: Box<dyn Strategy<'a> + 'a> = if name == "dp-fixed-clipping" {
                let c = r.f64(&["clipping_norm"], None)?;
                let inner = build_inner(&inner_name, &mut r, limits, seed)?;
                Box::new(DpFixedClipping::new(inner, z, c, n, seed)?)
            } else {
                let c0 = r.f64(&["initial_clipping_norm"], Some(0.1))?;
                let gamma = r.f64(&["target_clipped_quantile"], Some(0.5))?;
                let lr = r.f64(&["clip_norm_lr"], Some(0.2))?;
                let sb = match r.raw(&["clipped_count_stddev"]) {
                    Some(_) => Some(r.f64(&["clipped_count_stddev"], None)?),
                    None => None,
                };
                let inner = build_inner(&inner_name, &mut r, limits, seed)?;
                Box::new(DpAdaptiveClipping::new(
                    inner, z, n, c0, gamma, lr, sb, seed,
                )?)
            };
            r.finish()?;
            return Ok(s);
        }
        other => {
            return Err(FlError::UnknownStrategy {
                name: other.to_owned(),
            });
        }
    };
    r.finish()?;
    Ok(s)
}

/// Builds the inner strategy of a DP wrapper from the parameters the wrapper did not use.
fn build_inner<'a>(
    name: &str,
    r: &mut Reader<'_>,
    limits: Limits,
    seed: u64,
) -> Result<Box<dyn Strategy<'a> + 'a>, FlError> {
    let rest: Params = r
        .params
        .iter()
        .filter(|(k, _)| !r.used.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let s = build_strategy(name, &rest, limits, seed)?;
    let keys: Vec<&str> = rest.keys().map(String::as_str).collect();
    // Every remaining key was accepted by the inner strategy.
    for k in r.params.keys() {
        if keys.contains(&k.as_str()) {
            r.used.insert(k.as_str());
        }
    }
    Ok(s)
}

//! Models as named tensors <-> the trainers' flat parameter vectors, and architectures by name.

use anyhow::{Context, Result, bail};
use fl_core::train::Architecture;
use fl_core::{Model, ModelView, Tensor};

/// Parses `softmax-<inputs>-<classes>` or `mlp-<inputs>-<hidden>-<classes>`.
pub fn parse_arch(s: &str) -> Result<Architecture> {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |i: usize| -> Result<usize> {
        parts[i]
            .parse::<usize>()
            .with_context(|| format!("model `{s}`: `{}` is not a size", parts[i]))
    };
    let arch = match (parts.first().copied(), parts.len()) {
        (Some("softmax"), 3) => Architecture::Softmax {
            inputs: num(1)?,
            classes: num(2)?,
        },
        (Some("mlp"), 4) => Architecture::Mlp {
            inputs: num(1)?,
            hidden: num(2)?,
            classes: num(3)?,
        },
        _ => bail!(
            "model `{s}`: expected softmax-<inputs>-<classes> or mlp-<inputs>-<hidden>-<classes>"
        ),
    };
    if arch.inputs() == 0 || arch.classes() < 2 {
        bail!("model `{s}`: needs at least 1 input and 2 classes");
    }
    Ok(arch)
}

/// The architecture whose layout a model has (`fc.*` = softmax, `fc1.*`/`fc2.*` = MLP).
pub fn arch_of(model: &ModelView<'_>) -> Result<Architecture> {
    let shape = |n: &str| model.tensor(n).map(|t| t.shape().to_vec());
    let arch = match (shape("fc.weight"), shape("fc1.weight"), shape("fc2.weight")) {
        (Some(w), None, None) if w.len() == 2 => Architecture::Softmax {
            inputs: w[1],
            classes: w[0],
        },
        (None, Some(w1), Some(w2)) if w1.len() == 2 && w2.len() == 2 => Architecture::Mlp {
            inputs: w1[1],
            hidden: w1[0],
            classes: w2[0],
        },
        _ => bail!("model layout is neither softmax (fc.weight) nor mlp (fc1.weight, fc2.weight)"),
    };
    let names: Vec<&str> = model.tensors().iter().map(|t| t.name()).collect();
    let want: Vec<&str> = arch.layout().iter().map(|s| s.name).collect();
    if names != want {
        bail!("model tensors {names:?} do not match {arch}'s layout {want:?}");
    }
    Ok(arch)
}

/// Flattens a model into the trainer's parameter vector, checking every tensor's shape.
pub fn to_params(arch: Architecture, model: &ModelView<'_>) -> Result<Vec<f32>> {
    let mut p = Vec::with_capacity(arch.num_params());
    for spec in arch.layout() {
        let t = model
            .tensor(spec.name)
            .with_context(|| format!("model has no tensor `{}` ({arch})", spec.name))?;
        if t.shape() != spec.shape.as_slice() {
            bail!(
                "tensor `{}` has shape {:?}, {arch} needs {:?}",
                spec.name,
                t.shape(),
                spec.shape
            );
        }
        p.extend(t.to_f32_vec());
    }
    Ok(p)
}

/// Builds a model from the trainer's parameter vector.
pub fn from_params(arch: Architecture, params: &[f32]) -> Result<Model> {
    if params.len() != arch.num_params() {
        bail!(
            "{} parameters for {arch}, which has {}",
            params.len(),
            arch.num_params()
        );
    }
    let tensors: Vec<Tensor> = arch
        .layout()
        .into_iter()
        .map(|s| {
            Tensor::from_f32(
                s.name,
                s.shape.clone(),
                &params[s.offset..s.offset + s.len()],
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(Model::new(tensors)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn params_roundtrip_through_a_model() {
        for s in ["softmax-4-3", "mlp-4-5-3"] {
            let arch = parse_arch(s).unwrap();
            let p = arch.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
            let m = from_params(arch, &p).unwrap();
            assert_eq!(arch_of(&m.view()).unwrap(), arch);
            assert_eq!(to_params(arch, &m.view()).unwrap(), p);
            // The same digest as the simulator's model of these parameters.
            assert_eq!(m.digest(), arch.to_model(&p).unwrap().digest());
        }
        assert!(parse_arch("cnn-1-2").is_err());
        assert!(
            parse_arch("mlp-4-x-3")
                .unwrap_err()
                .to_string()
                .contains("`x`")
        );
    }
}

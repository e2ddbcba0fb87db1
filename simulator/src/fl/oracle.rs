//! The oracle for "a round's global model equals the recompute": a plain f64 weighted mean,
//! written as simply as possible and kept apart from fl-core's optimised kernels.

use fl_core::train::Architecture;

/// Strategies whose server rule is the weighted mean of the client models (FedProx differs only
/// on the client side; FedAvgM with its default parameters is plain FedAvg but is left out).
pub const MEAN_STRATEGIES: &[&str] = &["fedavg", "fedprox"];

/// `sum_k n_k w_k / sum_k n_k` per coordinate, in f64.
pub fn weighted_mean_f64(updates: &[(&[f32], u64)]) -> Vec<f64> {
    let len = updates.first().map_or(0, |(p, _)| p.len());
    let total: f64 = updates.iter().map(|(_, n)| *n as f64).sum();
    let mut out = vec![0.0f64; len];
    for (params, n) in updates {
        for (o, p) in out.iter_mut().zip(params.iter()) {
            *o += *n as f64 * f64::from(*p);
        }
    }
    for o in &mut out {
        *o /= total;
    }
    out
}

/// Compares `global` with the recompute within issue 3's tolerance: 1e-6 relative plus 1e-6 x
/// the layer's largest magnitude. `None` when it matches or the strategy has no mean oracle.
pub fn check(
    strategy: &str,
    arch: &Architecture,
    updates: &[(&[f32], u64)],
    global: &[f32],
) -> Option<String> {
    if !MEAN_STRATEGIES.contains(&strategy) || updates.is_empty() {
        return None;
    }
    let reference = weighted_mean_f64(updates);
    if reference.len() != global.len() {
        return Some(format!(
            "global has {} values, the recompute {}",
            global.len(),
            reference.len()
        ));
    }
    for t in arch.layout() {
        let range = t.offset..t.offset + t.len();
        let layer_max = reference[range.clone()]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        for i in range {
            let (got, want) = (f64::from(global[i]), reference[i]);
            if (got - want).abs() > 1e-6 * want.abs() + 1e-6 * layer_max {
                return Some(format!(
                    "tensor {} index {}: global {got} vs recompute {want}",
                    t.name,
                    i - t.offset
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_weighted_and_check_catches_a_difference() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        assert_eq!(weighted_mean_f64(&[(&a, 1), (&b, 3)]), vec![2.5, 5.0]);
        let arch = Architecture::Softmax {
            inputs: 1,
            classes: 1,
        };
        assert!(check("fedavg", &arch, &[(&a, 1), (&b, 3)], &[2.5, 5.0]).is_none());
        let why = check("fedavg", &arch, &[(&a, 1), (&b, 3)], &[2.5, 5.001]).unwrap();
        assert!(why.contains("fc.bias"), "{why}");
        assert!(check("krum", &arch, &[(&a, 1)], &[9.0, 9.0]).is_none());
    }
}

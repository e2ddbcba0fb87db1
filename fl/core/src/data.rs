//! Labelled datasets for local training: FedProx's Synthetic(alpha, beta), Dirichlet label
//! partitions of a labelled dataset across clients, and the 8x8 handwritten digits fixture.
//!
//! Everything is deterministic given the random stream the caller passes in (a seeded
//! `ChaCha8Rng`). Nothing here does IO: the digits loader parses bytes the caller read
//! (`include_bytes!`, a file the shell opened).

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal, Normal};

/// Bound on the number of classes a dataset may declare (labels are `u32`; anything this large
/// is a parsing or configuration error, not a real classification task).
pub const MAX_CLASSES: usize = 1 << 16;

/// How many times [`dirichlet_partition`] redraws the proportions when a client ends up with
/// fewer than `min_examples_per_client` examples. The usual Dirichlet-split code (e.g. Hsu et
/// al. 2019 and the FedLab/NIID-Bench partitioners) redraws until the minimum holds; we bound it.
pub const DIRICHLET_MAX_DRAWS: usize = 1000;

/// Errors from building or parsing a dataset. Messages name the line, field or parameter.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    #[error("digits csv: {what} at line {line}")]
    Parse { line: usize, what: String },
    #[error("invalid dataset parameter {name}: {why}")]
    Param { name: &'static str, why: String },
    #[error(
        "dirichlet partition: no draw in {draws} gave every client at least {min} examples \
         ({clients} clients, {examples} examples, alpha {alpha})"
    )]
    PartitionMinimum {
        draws: usize,
        min: usize,
        clients: usize,
        examples: usize,
        alpha: f64,
    },
}

/// A labelled dataset: `len()` rows of `num_features` f32 features (row-major) and a label in
/// `0..num_classes` per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub num_features: usize,
    pub num_classes: usize,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Builds a dataset, checking that shapes agree and labels are in range.
    pub fn new(
        num_features: usize,
        num_classes: usize,
        features: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<Self, DataError> {
        if num_features == 0 {
            return Err(param("num_features", "must be positive"));
        }
        if !(2..=MAX_CLASSES).contains(&num_classes) {
            return Err(param(
                "num_classes",
                format!("{num_classes} is not in 2..={MAX_CLASSES}"),
            ));
        }
        if features.len() != labels.len() * num_features {
            return Err(param(
                "features",
                format!(
                    "{} values for {} labels of {} features",
                    features.len(),
                    labels.len(),
                    num_features
                ),
            ));
        }
        if let Some((row, label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= num_classes)
        {
            return Err(param(
                "labels",
                format!("row {row} has label {label} >= {num_classes}"),
            ));
        }
        Ok(Self {
            num_features,
            num_classes,
            features,
            labels,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of row `i` (panics if `i >= len()`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.num_features..(i + 1) * self.num_features]
    }

    /// The rows at `indices`, in that order (indices out of range are a caller bug: panics).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.num_features);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            num_features: self.num_features,
            num_classes: self.num_classes,
            features,
            labels,
        }
    }

    /// Concatenates datasets of the same shape (e.g. clients' held-out parts into one test set).
    pub fn concat(parts: &[Dataset]) -> Result<Dataset, DataError> {
        let Some(first) = parts.first() else {
            return Err(param("parts", "no dataset to concatenate"));
        };
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if p.num_features != first.num_features || p.num_classes != first.num_classes {
                return Err(param(
                    "parts",
                    format!(
                        "part {i} has {}x{} (features x classes), part 0 has {}x{}",
                        p.num_features, p.num_classes, first.num_features, first.num_classes
                    ),
                ));
            }
            features.extend_from_slice(&p.features);
            labels.extend_from_slice(&p.labels);
        }
        Ok(Dataset {
            num_features: first.num_features,
            num_classes: first.num_classes,
            features,
            labels,
        })
    }

    /// Shuffles the rows with `rng` and splits off `test_fraction` of them (rounded down, at
    /// least one row when the dataset has two or more) as a held-out test set: `(train, test)`.
    pub fn split(
        &self,
        test_fraction: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Dataset, Dataset), DataError> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(param(
                "test_fraction",
                format!("{test_fraction} is not in [0, 1)"),
            ));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(rng);
        let mut n_test = (self.len() as f64 * test_fraction) as usize;
        if n_test == 0 && test_fraction > 0.0 && self.len() >= 2 {
            n_test = 1;
        }
        let (test, train) = idx.split_at(n_test);
        Ok((self.subset(train), self.subset(test)))
    }

    /// Number of examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

fn param(name: &'static str, why: impl Into<String>) -> DataError {
    DataError::Param {
        name,
        why: why.into(),
    }
}

/// Parameters of FedProx's Synthetic(alpha, beta) (Li et al., "Federated Optimization in
/// Heterogeneous Networks", MLSys 2020, section 5.1 and its `generate_synthetic.py`).
///
/// Client k has a model `W_k ~ N(u_k, 1)`, `b_k ~ N(u_k, 1)` with `u_k ~ N(0, alpha)`, and
/// features `x ~ N(v_k, Sigma)` with `v_k ~ N(B_k, 1)`, `B_k ~ N(0, beta)`, `Sigma` diagonal
/// with `Sigma_jj = j^-1.2`; the label is `argmax softmax(W_k x + b_k)`. As in the reference
/// code, alpha and beta are standard deviations, and each client's sample count is
/// `floor(LogNormal(4, 2)) + 50`, capped here at `max_examples_per_client`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticConfig {
    pub alpha: f64,
    pub beta: f64,
    pub num_clients: usize,
    /// 60 in the paper.
    pub num_features: usize,
    /// 10 in the paper.
    pub num_classes: usize,
    /// Caps the log-normal sample count (the reference code's tail reaches tens of thousands).
    pub max_examples_per_client: usize,
}

impl SyntheticConfig {
    /// The paper's setting: Synthetic(alpha, beta) with 30 clients, 60 features, 10 classes.
    pub fn paper(alpha: f64, beta: f64) -> Self {
        Self {
            alpha,
            beta,
            num_clients: 30,
            num_features: 60,
            num_classes: 10,
            max_examples_per_client: 1000,
        }
    }
}

/// Minimum sample count per client in FedProx's `generate_synthetic.py` (`lognormal(4, 2) + 50`).
const SYNTHETIC_MIN_EXAMPLES: usize = 50;

/// Generates one dataset per client for FedProx's Synthetic(alpha, beta).
pub fn fedprox_synthetic(
    cfg: &SyntheticConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Dataset>, DataError> {
    if !(cfg.alpha >= 0.0 && cfg.alpha.is_finite()) {
        return Err(param(
            "alpha",
            format!("{} is not a finite non-negative number", cfg.alpha),
        ));
    }
    if !(cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        return Err(param(
            "beta",
            format!("{} is not a finite non-negative number", cfg.beta),
        ));
    }
    if cfg.num_clients == 0 {
        return Err(param("num_clients", "must be positive"));
    }
    if cfg.num_features == 0 {
        return Err(param("num_features", "must be positive"));
    }
    if !(2..=MAX_CLASSES).contains(&cfg.num_classes) {
        return Err(param(
            "num_classes",
            format!("{} is not in 2..={MAX_CLASSES}", cfg.num_classes),
        ));
    }
    if cfg.max_examples_per_client < SYNTHETIC_MIN_EXAMPLES {
        return Err(param(
            "max_examples_per_client",
            format!(
                "{} is below the generator's minimum {SYNTHETIC_MIN_EXAMPLES}",
                cfg.max_examples_per_client
            ),
        ));
    }
    let std_normal = Normal::new(0.0, 1.0).expect("unit normal is valid");
    let counts_dist = LogNormal::new(4.0, 2.0).expect("lognormal(4, 2) is valid");
    let (d, c) = (cfg.num_features, cfg.num_classes);
    // Same draw order as the reference: all counts, all u_k, all B_k, all v_k, then per client.
    let counts: Vec<usize> = (0..cfg.num_clients)
        .map(|_| {
            let n = counts_dist.sample(rng) as usize + SYNTHETIC_MIN_EXAMPLES;
            n.min(cfg.max_examples_per_client)
        })
        .collect();
    let u: Vec<f64> = (0..cfg.num_clients)
        .map(|_| cfg.alpha * std_normal.sample(rng))
        .collect();
    let big_b: Vec<f64> = (0..cfg.num_clients)
        .map(|_| cfg.beta * std_normal.sample(rng))
        .collect();
    let v: Vec<Vec<f64>> = big_b
        .iter()
        .map(|bk| (0..d).map(|_| bk + std_normal.sample(rng)).collect())
        .collect();
    let sigma_sqrt: Vec<f64> = (1..=d).map(|j| (j as f64).powf(-1.2).sqrt()).collect();
    let mut out = Vec::with_capacity(cfg.num_clients);
    for k in 0..cfg.num_clients {
        // W is d x c as in the reference (x . W + b).
        let w: Vec<f64> = (0..d * c).map(|_| u[k] + std_normal.sample(rng)).collect();
        let b: Vec<f64> = (0..c).map(|_| u[k] + std_normal.sample(rng)).collect();
        let n = counts[k];
        let mut features = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        let mut x = vec![0.0f64; d];
        let mut logits = vec![0.0f64; c];
        for _ in 0..n {
            for j in 0..d {
                x[j] = v[k][j] + sigma_sqrt[j] * std_normal.sample(rng);
            }
            logits.copy_from_slice(&b);
            for (j, xj) in x.iter().enumerate() {
                let row = &w[j * c..(j + 1) * c];
                for (l, wjl) in logits.iter_mut().zip(row) {
                    *l += xj * wjl;
                }
            }
            // argmax of softmax is the argmax of the logits; first maximum wins like numpy.
            let label = argmax_f64(&logits);
            features.extend(x.iter().map(|&v| v as f32));
            labels.push(label as u32);
        }
        out.push(Dataset {
            num_features: d,
            num_classes: c,
            features,
            labels,
        });
    }
    Ok(out)
}

fn argmax_f64(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Splits `data` across `num_clients` clients with per-class proportions drawn from a symmetric
/// Dirichlet(alpha) (Hsu, Qi, Brown 2019, "Measuring the effects of non-identical data
/// distribution"): small alpha gives each client few classes, large alpha approaches IID.
/// Redraws (at most [`DIRICHLET_MAX_DRAWS`] times) until every client holds at least
/// `min_examples_per_client` examples. Returns each client's row indices into `data`, sorted.
pub fn dirichlet_partition(
    data: &Dataset,
    num_clients: usize,
    alpha: f64,
    min_examples_per_client: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    if num_clients == 0 {
        return Err(param("num_clients", "must be positive"));
    }
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(param(
            "alpha",
            format!("{alpha} is not a finite positive number"),
        ));
    }
    if min_examples_per_client.saturating_mul(num_clients) > data.len() {
        return Err(param(
            "min_examples_per_client",
            format!(
                "{min_examples_per_client} x {num_clients} clients exceeds the {} examples",
                data.len()
            ),
        ));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| param("alpha", e.to_string()))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); data.num_classes];
    for (i, &l) in data.labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut proportions = vec![0.0f64; num_clients];
    for _ in 0..DIRICHLET_MAX_DRAWS {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); num_clients];
        for class_rows in &by_class {
            let mut rows = class_rows.clone();
            rows.shuffle(rng);
            // Dirichlet(alpha) as normalised Gamma(alpha, 1) draws.
            let mut total = 0.0;
            for p in proportions.iter_mut() {
                *p = gamma.sample(rng);
                total += *p;
            }
            if total <= 0.0 {
                // Every draw underflowed (tiny alpha): give the class to one client.
                let k = rng.random_range(0..num_clients);
                proportions.iter_mut().for_each(|p| *p = 0.0);
                proportions[k] = 1.0;
                total = 1.0;
            }
            let n = rows.len();
            let mut start = 0usize;
            let mut cum = 0.0;
            for (k, p) in proportions.iter().enumerate() {
                cum += p / total;
                let end = if k + 1 == num_clients {
                    n
                } else {
                    ((cum * n as f64) as usize).min(n)
                };
                let end = end.max(start);
                parts[k].extend_from_slice(&rows[start..end]);
                start = end;
            }
        }
        if parts.iter().all(|p| p.len() >= min_examples_per_client) {
            for p in &mut parts {
                p.sort_unstable();
            }
            return Ok(parts);
        }
    }
    Err(DataError::PartitionMinimum {
        draws: DIRICHLET_MAX_DRAWS,
        min: min_examples_per_client,
        clients: num_clients,
        examples: data.len(),
        alpha,
    })
}

/// Number of pixels of one 8x8 digit image.
pub const DIGITS_FEATURES: usize = 64;
/// Digits 0-9.
pub const DIGITS_CLASSES: usize = 10;
/// Largest pixel value in the digits data (counts of set pixels in a 4x4 block).
pub const DIGITS_MAX_PIXEL: u32 = 16;
/// Bound on the rows the digits parser accepts (the fixture has 1797).
pub const DIGITS_MAX_ROWS: usize = 1 << 20;

/// Parses the digits fixture (`fixtures/datasets/digits8x8.csv`: a header line, then 64 pixel
/// values 0..=16 and a label 0..=9 per line). Pixels are scaled to `[0, 1]` (divided by 16).
pub fn parse_digits_csv(bytes: &[u8]) -> Result<Dataset, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Parse {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        what: "invalid utf-8".into(),
    })?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.starts_with("p0,") && h.trim_end().ends_with(",label") => {}
        Some(_) => {
            return Err(DataError::Parse {
                line: 1,
                what: "expected header `p0,...,p63,label`".into(),
            });
        }
        None => {
            return Err(DataError::Parse {
                line: 1,
                what: "empty input".into(),
            });
        }
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if labels.len() >= DIGITS_MAX_ROWS {
            return Err(DataError::Parse {
                line: line_no,
                what: format!("more than {DIGITS_MAX_ROWS} rows"),
            });
        }
        let mut n_fields = 0;
        for (f, field) in line.split(',').enumerate() {
            n_fields += 1;
            if f > DIGITS_FEATURES {
                break;
            }
            let v: u32 = field.trim().parse().map_err(|_| DataError::Parse {
                line: line_no,
                what: format!(
                    "field {} ({}) is not an unsigned integer: {field:?}",
                    f + 1,
                    field_name(f)
                ),
            })?;
            if f < DIGITS_FEATURES {
                if v > DIGITS_MAX_PIXEL {
                    return Err(DataError::Parse {
                        line: line_no,
                        what: format!("pixel p{f} = {v} exceeds {DIGITS_MAX_PIXEL}"),
                    });
                }
                features.push(v as f32 / DIGITS_MAX_PIXEL as f32);
            } else {
                if v as usize >= DIGITS_CLASSES {
                    return Err(DataError::Parse {
                        line: line_no,
                        what: format!("label {v} is not a digit 0-9"),
                    });
                }
                labels.push(v);
            }
        }
        if n_fields != DIGITS_FEATURES + 1 {
            return Err(DataError::Parse {
                line: line_no,
                what: format!("expected {} fields, found {n_fields}", DIGITS_FEATURES + 1),
            });
        }
    }
    if labels.is_empty() {
        return Err(DataError::Parse {
            line: 2,
            what: "no data rows".into(),
        });
    }
    Dataset::new(DIGITS_FEATURES, DIGITS_CLASSES, features, labels)
}

fn field_name(f: usize) -> String {
    if f < DIGITS_FEATURES {
        format!("p{f}")
    } else {
        "label".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn synthetic_is_deterministic_and_labels_in_range() {
        let cfg = SyntheticConfig {
            num_clients: 5,
            max_examples_per_client: 200,
            ..SyntheticConfig::paper(1.0, 1.0)
        };
        let a = fedprox_synthetic(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let b = fedprox_synthetic(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let c = fedprox_synthetic(&cfg, &mut ChaCha8Rng::seed_from_u64(4)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 5);
        for d in &a {
            assert!(d.len() >= 50 && d.len() <= 200, "{}", d.len());
            assert!(d.labels.iter().all(|l| *l < 10));
            assert_eq!(d.features.len(), d.len() * 60);
        }
    }

    #[test]
    fn parse_errors_name_line_and_field() {
        let mut s = String::from("p0,");
        s.push_str(
            &(1..64)
                .map(|i| format!("p{i}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push_str(",label\n");
        let good_row = format!("{},3\n", vec!["1"; 64].join(","));
        let ok = parse_digits_csv(format!("{s}{good_row}").as_bytes()).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok.labels, vec![3]);
        let bad = format!("{s}{good_row}{},x\n", vec!["1"; 64].join(","));
        let e = parse_digits_csv(bad.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("label"),
            "{e}"
        );
        let bad = format!("{s}{},17,3\n", vec!["1"; 63].join(","));
        let e = parse_digits_csv(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("p63 = 17"), "{e}");
        let bad = format!("{s}1,2,3\n");
        let e = parse_digits_csv(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("expected 65 fields, found 3"), "{e}");
        assert!(parse_digits_csv(b"").is_err());
        assert!(parse_digits_csv(b"a,b\n").is_err());
    }
}

//! One FL job's derivations from its seeds, shared by every shell that runs the job: the
//! simulator's `FlModel` and the real `fl coordinator` / `fl worker` processes call these same
//! functions, so the same scenario (same seed, same data, same strategy) gives bit-identical
//! global models on both, as long as the accepted set of updates does not depend on timing.
//!
//! What is derived here, and from which stream (`ChaCha8Rng::seed_from_u64(seed)` with
//! `set_stream(stream)`; the data seed and the job seed may differ, the streams never overlap):
//!
//! | what | seed | stream |
//! |---|---|---|
//! | initial model ([`initial_params`]) | job seed | [`INIT_STREAM`] |
//! | a table's held-out test split | data seed | 1 |
//! | a table's client partition (IID shuffle or Dirichlet) | data seed | 2 |
//! | FedProx Synthetic generation (all clients) | data seed | 3 |
//! | synthetic client k's held-out split | data seed | `100 + k` |
//! | client k's local training in round r ([`train_rng`]) | job seed | `2^40 + k * 2^20 + r` |
//! | the strategy's randomness in round r (DP noise; [`strategy_seed`]) | job seed, mixed | - |
//!
//! Client k is named [`client_id`]`(k)` (zero-padded, so the round machine's sorted client
//! order, and with it selection and aggregation order, is the index order).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::{DataError, Dataset, SyntheticConfig, dirichlet_partition, fedprox_synthetic};
use crate::error::FlError;
use crate::round::ClientId;
use crate::strategy::Params;
use crate::train::Architecture;

/// Stream of the initial model (stream 0 of the job seed: what `fl coordinator` always used).
pub const INIT_STREAM: u64 = 0;
const TABLE_TEST_STREAM: u64 = 1;
const TABLE_PARTITION_STREAM: u64 = 2;
const SYNTHETIC_STREAM: u64 = 3;
const SYNTHETIC_SPLIT_STREAM: u64 = 100;
const TRAIN_STREAM: u64 = 1 << 40;

/// FedProx Synthetic's class count (10 in the paper).
pub const SYNTHETIC_CLASSES: usize = 10;

/// Fewest examples a Dirichlet partition gives each client (FedLab / Flower-datasets'
/// `DirichletPartitioner` default `min_partition_size=10`).
pub const DIRICHLET_MIN_EXAMPLES: usize = 10;

/// Digits of the zero-padded client index in [`client_id`]: enough for
/// [`crate::round::MAX_CLIENTS`] (1,000,000) clients.
const CLIENT_ID_DIGITS: usize = 5;

/// Client `index`'s id in a job: `client-00000`, `client-00001`, ... (indices of 100,000 and
/// more get more digits and still sort after the smaller ones of the same width).
pub fn client_id(index: usize) -> ClientId {
    ClientId(format!("client-{index:0CLIENT_ID_DIGITS$}"))
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// The job's initial global model: PyTorch's `nn.Linear` initialisation from the job seed.
pub fn initial_params(arch: Architecture, seed: u64) -> Vec<f32> {
    arch.init(&mut rng(seed, INIT_STREAM))
}

/// The random stream of client `client_index`'s local training in `round` (shuffles, and the
/// worker's Gaussian-noise attack after it): independent of arrival order and of other clients.
pub fn train_rng(seed: u64, client_index: usize, round: u64) -> ChaCha8Rng {
    rng(
        seed,
        TRAIN_STREAM | ((client_index as u64) << 20) | (round & ((1 << 20) - 1)),
    )
}

/// The seed of the strategy's randomness in `round` (DP noise), also written by
/// `fl export-round` so the offline recompute draws the same noise.
pub fn strategy_seed(seed: u64, round: u64) -> u64 {
    seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The proximal term weight clients train with: FedProx's `proximal_mu` (Flower's
/// `FedProx.configure_fit` puts it in every client's fit config; default here 0, as
/// [`crate::strategy::build_strategy`]'s), and 0 for every other strategy.
pub fn client_proximal_mu(strategy: &str, params: &Params) -> Result<f32, FlError> {
    if strategy != "fedprox" {
        return Ok(0.0);
    }
    let Some(v) = params.get("proximal_mu") else {
        return Ok(0.0);
    };
    match v.parse::<f32>() {
        Ok(mu) if mu.is_finite() && mu >= 0.0 => Ok(mu),
        _ => Err(FlError::InvalidParam {
            name: "proximal_mu".into(),
            value: v.clone(),
            reason: "not a finite non-negative number".into(),
        }),
    }
}

/// FedProx Synthetic(alpha, beta) with the job's feature count and per-client cap. Written as
/// `synthetic:ALPHA,BETA[,FEATURES[,MAX_EXAMPLES_PER_CLIENT]]` ([`Synthetic::parse`],
/// `Display`); omitted values are the paper's (60 features, 1000 examples).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Synthetic {
    pub alpha: f64,
    pub beta: f64,
    pub num_features: usize,
    pub max_examples_per_client: usize,
}

impl Synthetic {
    /// The paper's setting for Synthetic(alpha, beta): 60 features, up to 1000 examples.
    pub fn paper(alpha: f64, beta: f64) -> Self {
        let p = SyntheticConfig::paper(alpha, beta);
        Self {
            alpha,
            beta,
            num_features: p.num_features,
            max_examples_per_client: p.max_examples_per_client,
        }
    }

    /// Parses `synthetic`, `synthetic:ALPHA,BETA`, `synthetic:ALPHA,BETA,FEATURES` or
    /// `synthetic:ALPHA,BETA,FEATURES,MAX_EXAMPLES_PER_CLIENT` (`synthetic` alone is (1, 1)).
    /// `None` if `s` is not a synthetic spec at all; an error names the bad part.
    pub fn parse(s: &str) -> Option<Result<Self, String>> {
        if s == "synthetic" {
            return Some(Ok(Self::paper(1.0, 1.0)));
        }
        let rest = s.strip_prefix("synthetic:")?;
        Some((|| {
            let parts: Vec<&str> = rest.split(',').collect();
            if !(2..=4).contains(&parts.len()) {
                return Err(format!(
                    "dataset `{s}`: expected synthetic:ALPHA,BETA[,FEATURES[,MAX_EXAMPLES_PER_CLIENT]]"
                ));
            }
            let num = |v: &str| {
                v.parse::<f64>()
                    .map_err(|_| format!("dataset `{s}`: `{v}` is not a number"))
            };
            let count = |v: &str, what: &str| match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "dataset `{s}`: {what} `{v}` is not a positive whole number"
                )),
            };
            let mut out = Self::paper(num(parts[0])?, num(parts[1])?);
            if let Some(f) = parts.get(2) {
                out.num_features = count(f, "FEATURES")?;
            }
            if let Some(m) = parts.get(3) {
                out.max_examples_per_client = count(m, "MAX_EXAMPLES_PER_CLIENT")?;
            }
            Ok(out)
        })())
    }

    fn config(&self, num_clients: usize) -> SyntheticConfig {
        SyntheticConfig {
            alpha: self.alpha,
            beta: self.beta,
            num_clients,
            num_features: self.num_features,
            num_classes: SYNTHETIC_CLASSES,
            max_examples_per_client: self.max_examples_per_client,
        }
    }
}

impl std::fmt::Display for Synthetic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "synthetic:{},{},{},{}",
            self.alpha, self.beta, self.num_features, self.max_examples_per_client
        )
    }
}

/// How a table (a labelled dataset the shell loaded, e.g. the 8x8 digits) is split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    Iid,
    /// Dirichlet(alpha) label skew ([`dirichlet_partition`]).
    Dirichlet(f64),
}

/// Where a job's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// One generated dataset per client; each keeps `1 - test_fraction` for training.
    Synthetic(Synthetic),
    /// A held-out `test_fraction` of the table for the coordinator, the rest partitioned
    /// among the clients.
    Table { data: Dataset, partition: Partition },
}

/// A job's data: source, number of clients, held-out fraction and data seed.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPlan {
    pub source: Source,
    pub num_clients: usize,
    pub test_fraction: f64,
    pub seed: u64,
}

/// One client's data: what it trains on and what it evaluates on (federated evaluation).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientData {
    pub train: Dataset,
    /// Synthetic: the client's own held-out part. Table: the client's IID slice of the
    /// coordinator's held-out set (slice k of `num_clients` equal slices).
    pub test: Dataset,
}

impl DataPlan {
    fn check(&self) -> Result<(), DataError> {
        if self.num_clients == 0 {
            return Err(DataError::Param {
                name: "num_clients",
                why: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// Every client's data, in index order.
    pub fn clients(&self) -> Result<Vec<ClientData>, DataError> {
        self.check()?;
        match &self.source {
            Source::Synthetic(s) => {
                let parts = fedprox_synthetic(
                    &s.config(self.num_clients),
                    &mut rng(self.seed, SYNTHETIC_STREAM),
                )?;
                parts
                    .iter()
                    .enumerate()
                    .map(|(k, d)| {
                        let (train, test) = d.split(
                            self.test_fraction,
                            &mut rng(self.seed, SYNTHETIC_SPLIT_STREAM + k as u64),
                        )?;
                        Ok(ClientData { train, test })
                    })
                    .collect()
            }
            Source::Table { data, partition } => {
                let (train, test) =
                    data.split(self.test_fraction, &mut rng(self.seed, TABLE_TEST_STREAM))?;
                let shards = self.partition(&train, *partition)?;
                let n = self.num_clients;
                Ok(shards
                    .iter()
                    .enumerate()
                    .map(|(k, shard)| {
                        let slice: Vec<usize> =
                            (k * test.len() / n..(k + 1) * test.len() / n).collect();
                        ClientData {
                            train: train.subset(shard),
                            test: test.subset(&slice),
                        }
                    })
                    .collect())
            }
        }
    }

    /// Client `index`'s data (the same as `clients()[index]`).
    pub fn client(&self, index: usize) -> Result<ClientData, DataError> {
        if index >= self.num_clients {
            return Err(DataError::Param {
                name: "client_index",
                why: format!(
                    "{index} is not below the number of clients {}",
                    self.num_clients
                ),
            });
        }
        Ok(self.clients()?.swap_remove(index))
    }

    /// The coordinator's centralised test set: a table's held-out part, or the synthetic
    /// clients' held-out parts concatenated; with `cap`, at most `cap` rows evenly spaced over
    /// it (so every client's held-out data is represented, not only the first clients').
    pub fn central_test(&self, cap: Option<usize>) -> Result<Dataset, DataError> {
        self.check()?;
        let test = match &self.source {
            Source::Table { data, .. } => {
                data.split(self.test_fraction, &mut rng(self.seed, TABLE_TEST_STREAM))?
                    .1
            }
            Source::Synthetic(_) => {
                let tests: Vec<Dataset> = self.clients()?.into_iter().map(|c| c.test).collect();
                return central_test_of(&tests, cap);
            }
        };
        Ok(capped(test, cap))
    }

    fn partition(&self, train: &Dataset, p: Partition) -> Result<Vec<Vec<usize>>, DataError> {
        let mut r = rng(self.seed, TABLE_PARTITION_STREAM);
        match p {
            Partition::Iid => {
                let mut idx: Vec<usize> = (0..train.len()).collect();
                idx.shuffle(&mut r);
                let n = self.num_clients;
                Ok((0..n)
                    .map(|i| idx[i * idx.len() / n..(i + 1) * idx.len() / n].to_vec())
                    .collect())
            }
            Partition::Dirichlet(alpha) => dirichlet_partition(
                train,
                self.num_clients,
                alpha,
                DIRICHLET_MIN_EXAMPLES,
                &mut r,
            ),
        }
    }
}

/// The synthetic clients' held-out parts concatenated in index order, at most `cap` rows
/// evenly spaced over it: [`DataPlan::central_test`] for a shell that already holds them.
pub fn central_test_of(tests: &[Dataset], cap: Option<usize>) -> Result<Dataset, DataError> {
    Ok(capped(Dataset::concat(tests)?, cap))
}

fn capped(test: Dataset, cap: Option<usize>) -> Dataset {
    match cap {
        Some(cap) if test.len() > cap => {
            let len = test.len();
            test.subset(&(0..cap).map(|i| i * len / cap).collect::<Vec<_>>())
        }
        _ => test,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(clients: usize) -> DataPlan {
        DataPlan {
            source: Source::Synthetic(Synthetic {
                num_features: 20,
                max_examples_per_client: 100,
                ..Synthetic::paper(0.5, 0.5)
            }),
            num_clients: clients,
            test_fraction: 0.2,
            seed: 42,
        }
    }

    #[test]
    fn one_client_is_the_same_as_that_client_among_all() {
        let p = plan(7);
        let all = p.clients().unwrap();
        assert_eq!(all.len(), 7);
        for (k, c) in all.iter().enumerate() {
            assert_eq!(&p.client(k).unwrap(), c);
            assert_eq!(c.train.num_features, 20);
            assert!(c.train.len() + c.test.len() <= 100);
        }
        assert!(p.client(7).is_err());
        let central = p.central_test(None).unwrap();
        assert_eq!(
            central.len(),
            all.iter().map(|c| c.test.len()).sum::<usize>()
        );
        let capped = p.central_test(Some(10)).unwrap();
        assert_eq!(capped.len(), 10);
        assert_eq!(capped.row(0), central.row(0));
    }

    #[test]
    fn synthetic_specs_round_trip_and_bad_ones_name_the_part() {
        let s = Synthetic::parse("synthetic:0.5,0.5,20,100")
            .unwrap()
            .unwrap();
        assert_eq!((s.num_features, s.max_examples_per_client), (20, 100));
        assert_eq!(Synthetic::parse(&s.to_string()).unwrap().unwrap(), s);
        let paper = Synthetic::parse("synthetic:1,2").unwrap().unwrap();
        assert_eq!(paper, Synthetic::paper(1.0, 2.0));
        assert_eq!(paper.num_features, 60);
        assert_eq!(
            Synthetic::parse("synthetic").unwrap().unwrap(),
            Synthetic::paper(1.0, 1.0)
        );
        assert!(Synthetic::parse("digits=x").is_none());
        let e = Synthetic::parse("synthetic:1,1,0").unwrap().unwrap_err();
        assert!(e.contains("FEATURES `0`"), "{e}");
        let e = Synthetic::parse("synthetic:1,x").unwrap().unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        assert!(Synthetic::parse("synthetic:1").unwrap().is_err());
    }

    #[test]
    fn client_ids_sort_in_index_order_and_streams_are_distinct() {
        let ids: Vec<ClientId> = (0..12).map(client_id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(client_id(3).0, "client-00003");
        use rand::Rng;
        let a: u64 = train_rng(1, 0, 1).random();
        let b: u64 = train_rng(1, 1, 1).random();
        let c: u64 = train_rng(1, 0, 2).random();
        assert!(a != b && a != c && b != c);
        let arch = Architecture::Softmax {
            inputs: 4,
            classes: 3,
        };
        assert_eq!(initial_params(arch, 9), initial_params(arch, 9));
        assert_ne!(initial_params(arch, 9), initial_params(arch, 10));
    }
}

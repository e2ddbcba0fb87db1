//! Which data a worker trains on and the coordinator evaluates on, from one spec string, so
//! both sides derive the same split from the same seed.
//!
//! - `digits=PATH`: the 8x8 handwritten digits CSV (`fixtures/datasets/digits8x8.csv`); a
//!   held-out test part (`test_fraction`) for the coordinator, the rest split among
//!   `num_clients` workers IID or by a Dirichlet(alpha) label partition.
//! - `synthetic` or `synthetic:ALPHA,BETA`: FedProx's Synthetic(alpha, beta) (default 1,1), one
//!   dataset per client; each client keeps `1 - test_fraction` for training and the
//!   coordinator's test set is all clients' held-out parts.

use anyhow::{Context, Result, bail};
use fl_core::data::{
    Dataset, SyntheticConfig, dirichlet_partition, fedprox_synthetic, parse_digits_csv,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Fewest examples a Dirichlet partition gives each client (FedLab / Flower-datasets'
/// `DirichletPartitioner` default `min_partition_size=10`).
const DIRICHLET_MIN_EXAMPLES: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Digits(std::path::PathBuf),
    Synthetic { alpha: f64, beta: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    Iid,
    Dirichlet(f64),
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub source: Source,
    pub partition: Partition,
    pub num_clients: usize,
    pub test_fraction: f64,
    pub seed: u64,
}

pub fn parse_source(s: &str) -> Result<Source> {
    if let Some(p) = s.strip_prefix("digits=") {
        return Ok(Source::Digits(p.into()));
    }
    if s == "synthetic" {
        return Ok(Source::Synthetic {
            alpha: 1.0,
            beta: 1.0,
        });
    }
    if let Some(ab) = s.strip_prefix("synthetic:") {
        let (a, b) = ab
            .split_once(',')
            .with_context(|| format!("dataset `{s}`: expected synthetic:ALPHA,BETA"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .with_context(|| format!("dataset `{s}`: `{v}` is not a number"))
        };
        return Ok(Source::Synthetic {
            alpha: num(a)?,
            beta: num(b)?,
        });
    }
    bail!("dataset `{s}`: expected digits=PATH, synthetic or synthetic:ALPHA,BETA")
}

pub fn parse_partition(s: &str) -> Result<Partition> {
    if s == "iid" {
        return Ok(Partition::Iid);
    }
    if let Some(a) = s.strip_prefix("dirichlet=") {
        let alpha = a
            .parse::<f64>()
            .with_context(|| format!("partition `{s}`: `{a}` is not a number"))?;
        return Ok(Partition::Dirichlet(alpha));
    }
    bail!("partition `{s}`: expected iid or dirichlet=ALPHA")
}

impl Spec {
    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.seed);
        r.set_stream(stream);
        r
    }

    /// Client `index`'s training data.
    pub fn client_train(&self, index: usize) -> Result<Dataset> {
        if index >= self.num_clients {
            bail!(
                "client index {index} is not below the number of clients {}",
                self.num_clients
            );
        }
        match &self.source {
            Source::Digits(_) => {
                let (train, _) = self.digits_split()?;
                let shards = self.partition(&train)?;
                Ok(train.subset(&shards[index]))
            }
            Source::Synthetic { .. } => Ok(self.synthetic_split()?.swap_remove(index).0),
        }
    }

    /// The coordinator's held-out test set.
    pub fn test_set(&self) -> Result<Dataset> {
        match &self.source {
            Source::Digits(_) => Ok(self.digits_split()?.1),
            Source::Synthetic { .. } => {
                let tests: Vec<Dataset> = self
                    .synthetic_split()?
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect();
                Ok(Dataset::concat(&tests)?)
            }
        }
    }

    fn digits_split(&self) -> Result<(Dataset, Dataset)> {
        let Source::Digits(path) = &self.source else {
            unreachable!("digits_split on another source")
        };
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading digits dataset {}", path.display()))?;
        // The parser scales the pixels to [0, 1] already.
        let all =
            parse_digits_csv(&bytes).with_context(|| format!("parsing {}", path.display()))?;
        Ok(all.split(self.test_fraction, &mut self.rng(1))?)
    }

    fn partition(&self, train: &Dataset) -> Result<Vec<Vec<usize>>> {
        match self.partition {
            Partition::Iid => {
                let mut idx: Vec<usize> = (0..train.len()).collect();
                idx.shuffle(&mut self.rng(2));
                let n = self.num_clients;
                Ok((0..n)
                    .map(|i| idx[i * idx.len() / n..(i + 1) * idx.len() / n].to_vec())
                    .collect())
            }
            Partition::Dirichlet(alpha) => Ok(dirichlet_partition(
                train,
                self.num_clients,
                alpha,
                DIRICHLET_MIN_EXAMPLES,
                &mut self.rng(2),
            )?),
        }
    }

    fn synthetic_split(&self) -> Result<Vec<(Dataset, Dataset)>> {
        let Source::Synthetic { alpha, beta } = self.source else {
            unreachable!("synthetic_split on another source")
        };
        let cfg = SyntheticConfig {
            num_clients: self.num_clients,
            ..SyntheticConfig::paper(alpha, beta)
        };
        let parts = fedprox_synthetic(&cfg, &mut self.rng(3))?;
        parts
            .iter()
            .enumerate()
            .map(|(i, d)| Ok(d.split(self.test_fraction, &mut self.rng(100 + i as u64))?))
            .collect()
    }
}

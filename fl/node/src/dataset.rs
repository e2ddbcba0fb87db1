//! Which data a worker trains on and the coordinator evaluates on, from one spec string. The
//! derivation itself (streams, splits, partitions) is fl-core's [`fl_core::job::DataPlan`], the
//! one the simulator uses too; this module only parses the flags and reads the files.
//!
//! - `digits=PATH`: the 8x8 handwritten digits CSV (`fixtures/datasets/digits8x8.csv`); a
//!   held-out test part (`test_fraction`) for the coordinator, the rest split among
//!   `num_clients` workers IID or by a Dirichlet(alpha) label partition.
//! - `synthetic`, `synthetic:ALPHA,BETA[,FEATURES[,MAX_EXAMPLES_PER_CLIENT]]`: FedProx's
//!   Synthetic(alpha, beta) (default 1,1; 60 features and at most 1000 examples per client as
//!   in the paper unless given), one dataset per client; each client keeps `1 - test_fraction`
//!   for training and its held-out part for federated evaluation, and the coordinator's test
//!   set is all clients' held-out parts.

use anyhow::{Context, Result, anyhow, bail};
use fl_core::data::{Dataset, parse_digits_csv};
use fl_core::job::{ClientData, DataPlan, Synthetic};

pub use fl_core::job::Partition;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Digits(std::path::PathBuf),
    Synthetic(Synthetic),
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
    match Synthetic::parse(s) {
        Some(r) => r.map(Source::Synthetic).map_err(|e| anyhow!(e)),
        None => bail!(
            "dataset `{s}`: expected digits=PATH, synthetic or synthetic:ALPHA,BETA[,FEATURES[,MAX_EXAMPLES_PER_CLIENT]]"
        ),
    }
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
    fn plan(&self) -> Result<DataPlan> {
        let source = match &self.source {
            Source::Synthetic(s) => fl_core::job::Source::Synthetic(*s),
            Source::Digits(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading digits dataset {}", path.display()))?;
                // The parser scales the pixels to [0, 1] already.
                let data: Dataset = parse_digits_csv(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?;
                fl_core::job::Source::Table {
                    data,
                    partition: self.partition,
                }
            }
        };
        Ok(DataPlan {
            source,
            num_clients: self.num_clients,
            test_fraction: self.test_fraction,
            seed: self.seed,
        })
    }

    /// Client `index`'s training data and its federated-evaluation data.
    pub fn client(&self, index: usize) -> Result<ClientData> {
        Ok(self.plan()?.client(index)?)
    }

    /// The coordinator's held-out test set, at most `cap` rows evenly spaced over it.
    pub fn test_set(&self, cap: Option<usize>) -> Result<Dataset> {
        Ok(self.plan()?.central_test(cap)?)
    }
}

//! The one error type of the aggregation core. Every variant that concerns an update names
//! the client and, where there is one, the tensor.

use crate::model::DType;

/// What went wrong while building, parsing, validating or aggregating models.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlError {
    #[error("safetensors `{source_label}` is truncated: {reason}")]
    TruncatedSafetensors {
        source_label: String,
        reason: String,
    },
    #[error("safetensors `{source_label}` is corrupt: {reason}")]
    CorruptSafetensors {
        source_label: String,
        reason: String,
    },
    #[error("tensor `{tensor}` is invalid: {reason}")]
    InvalidTensor { tensor: String, reason: String },
    #[error("model has tensor `{tensor}` twice")]
    DuplicateTensor { tensor: String },
    #[error("client `{client}`: tensor `{tensor}` is missing from the update")]
    MissingTensor { client: String, tensor: String },
    #[error("client `{client}`: tensor `{tensor}` is not in the global model")]
    UnexpectedTensor { client: String, tensor: String },
    #[error(
        "client `{client}`: tensor #{index} is `{found}` but the global model has `{expected}` there"
    )]
    TensorOrderMismatch {
        client: String,
        index: usize,
        expected: String,
        found: String,
    },
    #[error("client `{client}`: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        client: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("client `{client}`: tensor `{tensor}` has dtype {found}, expected {expected}")]
    DTypeMismatch {
        client: String,
        tensor: String,
        expected: DType,
        found: DType,
    },
    #[error(
        "client `{client}`: tensor `{tensor}` holds a non-finite value ({value}) at flat index {index}"
    )]
    NonFinite {
        client: String,
        tensor: String,
        index: usize,
        value: f64,
    },
    #[error(
        "client `{client}`: update L2 norm {norm} exceeds the bound {bound} (largest share from tensor `{tensor}`)"
    )]
    NormTooLarge {
        client: String,
        tensor: String,
        norm: f64,
        bound: f64,
    },
    #[error(
        "client `{client}`: update is for round {update_round} but round {current_round} is open (stale)"
    )]
    StaleRound {
        client: String,
        update_round: u64,
        current_round: u64,
    },
    #[error(
        "client `{client}`: update is for round {update_round} but round {current_round} is open (future)"
    )]
    FutureRound {
        client: String,
        update_round: u64,
        current_round: u64,
    },
    #[error("client `{client}` sent a second update in round {round}")]
    DuplicateClient { client: String, round: u64 },
    #[error(
        "client `{client}`: update is {size_bytes} bytes, over the limit of {limit_bytes} bytes (tensor `{tensor}` and before)"
    )]
    UpdateTooLarge {
        client: String,
        tensor: String,
        size_bytes: u64,
        limit_bytes: u64,
    },
    #[error("total weight of the {clients} clients is zero (every num_examples is 0)")]
    ZeroTotalWeight { clients: usize },
    #[error("{strategy} needs at least {needed} clients, got {got}")]
    TooFewClients {
        strategy: String,
        needed: usize,
        got: usize,
    },
    #[error("{strategy}: no update was folded in round {round}")]
    NoUpdates { strategy: String, round: u64 },
    #[error("{strategy} needs the current global model (pass it to begin)")]
    MissingGlobal { strategy: String },
    #[error("client `{client}`: metric `{metric}` is missing or not finite ({strategy} needs it)")]
    MissingMetric {
        client: String,
        metric: String,
        strategy: String,
    },
    #[error("parameter `{name}` = `{value}` is invalid: {reason}")]
    InvalidParam {
        name: String,
        value: String,
        reason: String,
    },
    #[error("unknown parameter `{name}` for strategy {strategy}")]
    UnknownParam { strategy: String, name: String },
    #[error("unknown strategy `{name}`")]
    UnknownStrategy { name: String },
    #[error("strategy state is invalid: {reason}")]
    InvalidState { reason: String },
    #[error("{strategy}: {call} called outside a round (call begin first)")]
    NoRound {
        strategy: String,
        call: &'static str,
    },
}

impl FlError {
    /// Relabels a safetensors parse error with the client or file it came from.
    pub fn with_source_label(self, label: &str) -> Self {
        match self {
            FlError::TruncatedSafetensors { reason, .. } => FlError::TruncatedSafetensors {
                source_label: label.to_owned(),
                reason,
            },
            FlError::CorruptSafetensors { reason, .. } => FlError::CorruptSafetensors {
                source_label: label.to_owned(),
                reason,
            },
            other => other,
        }
    }
}

//! The wire types of the coordinator's HTTP API (shared by the coordinator, the worker and the
//! tests) and its JSON error body. The API is documented in `fl/node/openapi.json`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Header carrying the round of the served model.
pub const HDR_ROUND: &str = "x-fl-round";
/// Header carrying the digest of the served model.
pub const HDR_DIGEST: &str = "x-fl-model-digest";
/// API-key header.
pub const HDR_API_KEY: &str = "x-api-key";
/// Set by the server itself (never trusted from a client: removed from every incoming request)
/// to the DNS names of the verified mTLS client certificate, comma-separated.
pub const HDR_PEER_NAMES: &str = "x-fl-internal-peer-names";

/// Longest accepted client id (it names files, so it is also restricted to `[A-Za-z0-9._-]`).
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Every 4xx/5xx body: `{"error": {"code", "field", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// Stable machine-readable reason (also the `reason` label of the rejection metrics).
    pub code: String,
    /// The request field at fault: a query parameter, `body`, `body.tensors.<name>.shape`,
    /// a header name, or empty when no single field is.
    pub field: String,
    pub message: String,
}

/// A request refused with a status, a code and the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn bad(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, field, message)
    }

    /// A local write failed: 507 `storage_full` when the volume is full (ENOSPC, EDQUOT), so a
    /// worker sees the store is at fault, not its body; 500 otherwise.
    pub fn storage(what: &str, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "store",
                format!("{what}: the coordinator's store is full ({e}); nothing was accepted"),
            ),
            _ => Self::internal(format!("{what}: {e}")),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "",
            format!("{e:#}"),
        )
    }
}

/// Marker left in the response extensions so the metrics middleware can count rejections.
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                field: self.field,
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        r.extensions_mut().insert(Rejected(self.code));
        r
    }
}

/// Checks a client id: non-empty, bounded, file-name safe.
pub fn check_client_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_BYTES {
        return Err(ApiError::bad(
            "invalid_client_id",
            field,
            format!("must be 1..={MAX_CLIENT_ID_BYTES} bytes"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::bad(
            "invalid_client_id",
            field,
            format!("character {c:?} is not in [A-Za-z0-9._-]"),
        ));
    }
    if id.starts_with('.') {
        return Err(ApiError::bad(
            "invalid_client_id",
            field,
            "must not start with `.`",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub client_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub client_id: String,
    pub round: u64,
    pub phase: String,
    pub registered_clients: usize,
}

/// Local training settings the coordinator hands to workers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FitConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub proximal_mu: f32,
}

/// What a worker should do now (`GET /api/v1/fl/task?client_id=`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResponse {
    pub round: u64,
    /// The machine's phase: `idle`, `waiting-for-clients`, `fit`, `aggregating`, `evaluate`, ...
    pub phase: String,
    /// `fit`, `evaluate`, `wait` or `finished`.
    pub task: String,
    /// This client was selected for the current stage.
    pub selected: bool,
    /// Selected and has not answered yet: the worker should act.
    pub pending: bool,
    pub registered: bool,
    pub global_digest: String,
    pub fit_config: FitConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub client_id: String,
    pub round: u64,
    pub update_id: String,
    /// True when this exact upload had already been accepted (idempotent retry).
    pub replay: bool,
}

/// `POST /api/v1/fl/evaluate`: a client's federated evaluation result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    pub client_id: String,
    pub round: u64,
    pub num_examples: u64,
    pub loss: f64,
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// `POST /api/v1/inference`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceRequest {
    /// One row of features per example.
    pub inputs: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferenceResponse {
    pub round: u64,
    pub model_digest: String,
    /// The predicted class of each input row.
    pub predictions: Vec<usize>,
}

/// One entry of `GET /api/v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub digest: String,
    pub round: u64,
    pub size_bytes: u64,
    pub created_ms: u64,
    pub current: bool,
    /// Centralised evaluation of this model, when the coordinator has a held-out set.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelsResponse {
    pub current_round: u64,
    pub finished: bool,
    pub models: Vec<ModelInfo>,
}

//! The FL round state machine, sans-IO: [`Coordinator::on_event`]`(now_ms, event) -> actions`.
//!
//! The same machine runs inside the simulator (driven by its event queue and virtual clock) and
//! inside the real `fl coordinator` (driven by HTTP handlers, a timer wheel and the wall clock).
//! It holds no model bytes: updates are named by an opaque [`UpdateId`] (a storage key, a
//! digest) that the shell stored before telling the machine, and models by their digest.
//!
//! # Semantics (Flower 1.x `Server.fit` with a `FedAvg`-family strategy)
//! Each round `r` in `1..=num_rounds`:
//! 1. **Fit sampling**: wait until `min_available_clients` are registered (Flower's
//!    `SimpleClientManager.wait_for`, bounded by `wait_for_clients_timeout_ms`), then sample
//!    `max(floor(available * fraction_fit), min_fit_clients)` clients uniformly, deterministically
//!    from `(seed, round)`. If that is more than are available, sampling fails (Flower logs
//!    "Sampling failed" and the round has no fit results).
//! 2. **Fit**: each selected client gets the global model; it answers with an update, a
//!    failure, or nothing until the round timeout (`fit_timeout_ms`; Flower's `round_timeout`,
//!    `None` = wait forever); a lost client counts as a failure. The phase closes when every
//!    selected client has answered or the timeout fires.
//! 3. **Aggregate** unless the fit round failed: fewer than `min_fit_results` results (Flower: 1,
//!    i.e. "no results"), or any failure with `accept_failures = false`. The shell runs the
//!    strategy on the accepted updates and reports the new global digest.
//! 4. **Centralised evaluation** (optional) of the global model on the coordinator's held-out set;
//!    Flower evaluates the initial model too (round 0) and evaluates after failed rounds as well.
//! 5. **Federated evaluation** with `fraction_evaluate` / `min_evaluate_clients` (skipped when
//!    `fraction_evaluate == 0`); the loss is Flower's `weighted_loss_avg`
//!    (`sum n_k loss_k / sum n_k`), `None` without results or with failures when
//!    `accept_failures = false`.
//! 6. **Round completed**, then the next round, or **finished** after `num_rounds`.
//!
//! # Protocol: which event follows which action
//! | the machine emits | the shell does, then feeds back |
//! |---|---|
//! | [`Action::SetTimer`] `{timer, at_ms}` | at `at_ms`: [`Event::TimerFired`] `{timer}` (late or stale timers are ignored, so timers never need cancelling) |
//! | [`Action::SendFit`] `{round, client}` | sends the model; later the client's upload: the shell validates and durably stores it, then [`Event::UpdateReceived`]; a client-side error: [`Event::FitFailed`] |
//! | [`Action::AcceptUpdate`] / [`Action::RejectUpdate`] | acknowledges the upload (2xx) / refuses it (4xx with the reason; the stored bytes can be dropped) |
//! | [`Action::Aggregate`] `{round, updates}` | runs the fl-core strategy over exactly those updates (sorted by client), stores the model: [`Event::AggregationDone`] `{round, global_digest}` or [`Event::AggregationFailed`] |
//! | [`Action::EvaluateCentralized`] `{round}` | evaluates that model on the held-out set: [`Event::CentralEvaluationDone`] |
//! | [`Action::SendEvaluate`] `{round, client}` | [`Event::EvaluateReceived`] or [`Event::EvaluateFailed`] |
//! | [`Action::RoundCompleted`], [`Action::FitRoundFailed`], [`Action::Finished`] | reports, metrics |
//!
//! Clients come and go with [`Event::ClientRegistered`] / [`Event::ClientLost`] at any time;
//! [`Event::Start`] begins training. Protocol misuse by the shell (an aggregation result nobody
//! asked for) is a [`ProtocolError`]; bad input from clients is a typed [`RejectReason`].
//!
//! # Durability and restart
//! [`Coordinator::state`] is the whole state (serde). The shell persists it after each event
//! whose actions include an acceptance, before acknowledging; after a crash it calls
//! [`Coordinator::restore`] and feeds [`Event::Restart`], which re-emits what is in flight: the
//! pending timer, the fit/evaluate instructions for clients that have not answered, the
//! aggregation or evaluation request. An update accepted before the crash stays counted once; a
//! replayed upload (same client, round and update id) is acknowledged again without being
//! counted twice ([`Action::AcceptUpdate`] with `replay: true`), in the current round and in
//! any completed one; the same client and round with a different id is a duplicate.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Flower `SimpleClientManager.wait_for(num_clients, timeout=86400)`: how long sampling waits
/// for `min_available_clients` (seconds in Flower, 86400 s = one day).
pub const FLOWER_WAIT_FOR_CLIENTS_TIMEOUT_MS: u64 = 86_400_000;

/// Bound on `num_rounds` (a larger value is a configuration error; it also bounds the history).
pub const MAX_ROUNDS: u64 = 1_000_000;

/// Bound on the number of registered clients (bounds every per-round set and loop).
pub const MAX_CLIENTS: usize = 1_000_000;

/// Client metrics: name -> value (BTreeMap: deterministic order); the strategies' type.
pub use crate::strategy::Metrics;

/// A client's identity (the platform's client id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub String);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId(s.to_owned())
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        ClientId(s)
    }
}

/// Opaque handle to a stored update (a storage key or a payload digest). Two uploads with the
/// same id are the same upload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpdateId(pub String);

impl std::fmt::Display for UpdateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UpdateId {
    fn from(s: &str) -> Self {
        UpdateId(s.to_owned())
    }
}

/// A timer the shell arms with [`Action::SetTimer`] and reports with [`Event::TimerFired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub u64);

/// Which client-facing stage of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Fit,
    Evaluate,
}

/// Round configuration. [`Default`] is Flower's legacy `FedAvg` / `ServerConfig` defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundConfig {
    /// Flower `ServerConfig.num_rounds` default 1.
    pub num_rounds: u64,
    /// Seed of client selection (ChaCha8, one stream per round and stage).
    pub seed: u64,
    /// Flower `FedAvg.fraction_fit` default 1.0.
    pub fraction_fit: f64,
    /// Flower `FedAvg.min_fit_clients` default 2.
    pub min_fit_clients: usize,
    /// Flower `FedAvg.min_available_clients` default 2.
    pub min_available_clients: usize,
    /// Flower `FedAvg.fraction_evaluate` default 1.0; 0 disables federated evaluation.
    pub fraction_evaluate: f64,
    /// Flower `FedAvg.min_evaluate_clients` default 2.
    pub min_evaluate_clients: usize,
    /// Flower `FedAvg.accept_failures` default true.
    pub accept_failures: bool,
    /// Fewest fit results that are aggregated. Flower's `aggregate_fit` returns nothing only
    /// when there are no results, i.e. 1; set it to `min_fit_clients` to fail a round that lost
    /// clients below that.
    pub min_fit_results: usize,
    /// Flower `ServerConfig.round_timeout` default None (wait for every selected client).
    pub fit_timeout_ms: Option<u64>,
    /// Same timeout for the evaluate stage (Flower uses `round_timeout` for both).
    pub evaluate_timeout_ms: Option<u64>,
    /// See [`FLOWER_WAIT_FOR_CLIENTS_TIMEOUT_MS`].
    pub wait_for_clients_timeout_ms: u64,
    /// Ask the shell for a centralised evaluation of each global model (Flower's
    /// `evaluate_fn`; default none).
    pub centralized_evaluation: bool,
}

impl Default for RoundConfig {
    fn default() -> Self {
        Self {
            num_rounds: 1,
            seed: 0,
            fraction_fit: 1.0,
            min_fit_clients: 2,
            min_available_clients: 2,
            fraction_evaluate: 1.0,
            min_evaluate_clients: 2,
            accept_failures: true,
            min_fit_results: 1,
            fit_timeout_ms: None,
            evaluate_timeout_ms: None,
            wait_for_clients_timeout_ms: FLOWER_WAIT_FOR_CLIENTS_TIMEOUT_MS,
            centralized_evaluation: false,
        }
    }
}

/// Flower's sample size: `max(int(available * fraction), min_clients)`.
pub fn sample_size(available: usize, fraction: f64, min_clients: usize) -> usize {
    ((available as f64 * fraction) as usize).max(min_clients)
}

impl RoundConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: String| Err(ConfigError { field, why });
        if self.num_rounds == 0 || self.num_rounds > MAX_ROUNDS {
            return bad(
                "num_rounds",
                format!("{} is not in 1..={MAX_ROUNDS}", self.num_rounds),
            );
        }
        if !(0.0..=1.0).contains(&self.fraction_fit) {
            return bad(
                "fraction_fit",
                format!("{} is not in [0, 1]", self.fraction_fit),
            );
        }
        if !(0.0..=1.0).contains(&self.fraction_evaluate) {
            return bad(
                "fraction_evaluate",
                format!("{} is not in [0, 1]", self.fraction_evaluate),
            );
        }
        if self.min_fit_results == 0 {
            return bad(
                "min_fit_results",
                "must be at least 1 (nothing to aggregate otherwise)".into(),
            );
        }
        for (field, v) in [
            ("min_fit_clients", self.min_fit_clients),
            ("min_available_clients", self.min_available_clients),
            ("min_evaluate_clients", self.min_evaluate_clients),
            ("min_fit_results", self.min_fit_results),
        ] {
            if v > MAX_CLIENTS {
                return bad(field, format!("{v} exceeds {MAX_CLIENTS}"));
            }
        }
        Ok(())
    }
}

/// An invalid [`RoundConfig`] field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid round config {field}: {why}")]
pub struct ConfigError {
    pub field: &'static str,
    pub why: String,
}

/// What the shell tells the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Begin training from the initial global model.
    Start {
        global_digest: String,
    },
    ClientRegistered {
        client: ClientId,
    },
    ClientLost {
        client: ClientId,
    },
    /// A client's fit result, already validated and durably stored under `update_id`.
    UpdateReceived {
        client: ClientId,
        round: u64,
        update_id: UpdateId,
        num_examples: u64,
        metrics: Metrics,
    },
    /// A client reported that its fit failed (Flower: an exception in `fit`).
    FitFailed {
        client: ClientId,
        round: u64,
        reason: String,
    },
    EvaluateReceived {
        client: ClientId,
        round: u64,
        num_examples: u64,
        loss: f64,
        metrics: Metrics,
    },
    EvaluateFailed {
        client: ClientId,
        round: u64,
        reason: String,
    },
    TimerFired {
        timer: TimerId,
    },
    /// The strategy aggregated the round's accepted updates into a model with this digest.
    AggregationDone {
        round: u64,
        global_digest: String,
        metrics: Metrics,
    },
    /// The strategy refused the round's updates (e.g. too few for Bulyan).
    AggregationFailed {
        round: u64,
        reason: String,
    },
    /// Centralised evaluation of the global model after `round` (0 = the initial model).
    CentralEvaluationDone {
        round: u64,
        loss: f64,
        metrics: Metrics,
    },
    /// The coordinator restarted from [`Coordinator::restore`]d state.
    Restart,
}

/// What the machine asks the shell to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// The clients sampled for `round`'s fit, sorted.
    FitSelected {
        round: u64,
        clients: Vec<ClientId>,
    },
    /// Send the global model and fit instructions for `round` to `client`.
    SendFit {
        round: u64,
        client: ClientId,
        global_digest: String,
    },
    /// Arm a timer: feed [`Event::TimerFired`] at `at_ms`.
    SetTimer {
        timer: TimerId,
        at_ms: u64,
    },
    /// Acknowledge the upload. `replay` = it was already accepted (idempotent retry).
    AcceptUpdate {
        round: u64,
        client: ClientId,
        update_id: UpdateId,
        replay: bool,
    },
    RejectUpdate {
        round: u64,
        client: ClientId,
        update_id: UpdateId,
        reason: RejectReason,
    },
    /// Aggregate `round` over exactly these updates (sorted by client) on top of `global_digest`.
    Aggregate {
        round: u64,
        global_digest: String,
        updates: Vec<AcceptedUpdate>,
    },
    /// The fit part of `round` produced no new model (the global model is unchanged).
    FitRoundFailed {
        round: u64,
        reason: RoundFailure,
    },
    /// Evaluate the global model after `round` (0 = initial) on the held-out set.
    EvaluateCentralized {
        round: u64,
        global_digest: String,
    },
    /// The clients sampled for `round`'s federated evaluation, sorted.
    EvaluateSelected {
        round: u64,
        clients: Vec<ClientId>,
    },
    SendEvaluate {
        round: u64,
        client: ClientId,
        global_digest: String,
    },
    RejectEvaluate {
        round: u64,
        client: ClientId,
        reason: RejectReason,
    },
    RoundCompleted(Box<RoundRecord>),
    Finished {
        rounds: u64,
        global_digest: String,
    },
}

/// Why an update (or evaluate result) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("unknown client (not registered)")]
    UnknownClient,
    #[error("stale round: the current round is {current}")]
    StaleRound { current: u64 },
    #[error("future round: the current round is {current}")]
    FutureRound { current: u64 },
    #[error("round {round} is not accepting results (phase {phase})")]
    RoundClosed { round: u64, phase: String },
    #[error("client was not selected for this round")]
    NotSelected,
    #[error("duplicate: this client's result for the round was already accepted as {accepted}")]
    Duplicate { accepted: String },
    #[error("client was already counted as failed in this round ({failure})")]
    AlreadyFailed { failure: String },
    #[error("num_examples is 0")]
    ZeroExamples,
    #[error("loss is not finite")]
    NonFiniteLoss,
}

/// Why a client counts as a failure in a round stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFailure {
    Timeout,
    ClientLost,
    Reported(String),
}

impl std::fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientFailure::Timeout => f.write_str("timed out"),
            ClientFailure::ClientLost => f.write_str("client lost"),
            ClientFailure::Reported(r) => write!(f, "reported failure: {r}"),
        }
    }
}

/// Why a round stage produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RoundFailure {
    #[error("sampling failed: {available} clients available, {requested} requested")]
    SamplingFailed { available: usize, requested: usize },
    #[error("too few results: {results}, at least {required} required")]
    TooFewResults { results: usize, required: usize },
    #[error("{failures} failures and accept_failures is false")]
    FailuresNotAccepted { failures: usize },
    #[error("aggregation failed: {0}")]
    Aggregation(String),
}

/// An accepted fit result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedUpdate {
    pub client: ClientId,
    pub update_id: UpdateId,
    pub num_examples: u64,
    pub metrics: Metrics,
    pub accepted_ms: u64,
}

/// A client's evaluate result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateResult {
    pub num_examples: u64,
    pub loss: f64,
    pub metrics: Metrics,
}

/// The fit part's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FitOutcome {
    Aggregated {
        global_digest: String,
        metrics: Metrics,
    },
    Failed(RoundFailure),
}

/// Centralised evaluation of a global model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralEvaluation {
    pub loss: f64,
    pub metrics: Metrics,
}

/// Federated evaluation's aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FederatedEvaluation {
    /// Flower's `weighted_loss_avg`, and each metric averaged with the same weights.
    Aggregated {
        loss: f64,
        num_examples: u64,
        num_results: usize,
        num_failures: usize,
        metrics: Metrics,
    },
    Failed(RoundFailure),
}

/// Everything about one round; the payload of [`Action::RoundCompleted`] and the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u64,
    /// When the round began (including waiting for clients).
    pub started_ms: u64,
    /// When fit clients were sampled.
    pub fit_started_ms: Option<u64>,
    /// When the fit stage closed.
    pub fit_closed_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    /// The global model the round started from.
    pub base_digest: String,
    pub selected: BTreeSet<ClientId>,
    pub accepted: BTreeMap<ClientId, AcceptedUpdate>,
    pub failures: BTreeMap<ClientId, ClientFailure>,
    pub fit: Option<FitOutcome>,
    /// Clients' fit metrics averaged weighted by num_examples.
    pub fit_metrics: Metrics,
    pub central: Option<CentralEvaluation>,
    pub eval_selected: BTreeSet<ClientId>,
    pub eval_results: BTreeMap<ClientId, EvaluateResult>,
    pub eval_failures: BTreeMap<ClientId, ClientFailure>,
    pub federated: Option<FederatedEvaluation>,
    /// The global model after the round (== `base_digest` when the fit failed).
    pub global_digest: String,
}

impl RoundRecord {
    fn new(round: u64, now_ms: u64, base_digest: String) -> Self {
        Self {
            round,
            started_ms: now_ms,
            fit_started_ms: None,
            fit_closed_ms: None,
            completed_ms: None,
            global_digest: base_digest.clone(),
            base_digest,
            selected: BTreeSet::new(),
            accepted: BTreeMap::new(),
            failures: BTreeMap::new(),
            fit: None,
            fit_metrics: Metrics::new(),
            central: None,
            eval_selected: BTreeSet::new(),
            eval_results: BTreeMap::new(),
            eval_failures: BTreeMap::new(),
            federated: None,
        }
    }

    /// Round latency: completion minus start.
    pub fn latency_ms(&self) -> Option<u64> {
        self.completed_ms.map(|c| c.saturating_sub(self.started_ms))
    }

    /// Whether the fit part produced a new global model.
    pub fn aggregated(&self) -> bool {
        matches!(self.fit, Some(FitOutcome::Aggregated { .. }))
    }

    /// The accepted updates in canonical (client) order, as [`Action::Aggregate`] lists them.
    pub fn accepted_updates(&self) -> Vec<AcceptedUpdate> {
        self.accepted.values().cloned().collect()
    }

    /// The federated evaluation loss, when it was aggregated.
    pub fn federated_loss(&self) -> Option<f64> {
        match &self.federated {
            Some(FederatedEvaluation::Aggregated { loss, .. }) => Some(*loss),
            _ => None,
        }
    }
}

/// An armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub id: TimerId,
    pub at_ms: u64,
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Not started: clients may register.
    Idle,
    /// Waiting for `min_available_clients` before sampling `stage`.
    Waiting {
        stage: Stage,
        timer: Timer,
    },
    Fit {
        timer: Option<Timer>,
    },
    Aggregating,
    /// Waiting for the centralised evaluation of round `state.round`'s model (0 = initial).
    CentralEval,
    Evaluate {
        timer: Option<Timer>,
    },
    Finished,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Waiting { .. } => "waiting-for-clients",
            Phase::Fit { .. } => "fit",
            Phase::Aggregating => "aggregating",
            Phase::CentralEval => "central-evaluation",
            Phase::Evaluate { .. } => "evaluate",
            Phase::Finished => "finished",
        }
    }
}

/// The whole persistent state of a coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorState {
    /// Current round (0 before the first).
    pub round: u64,
    pub phase: Phase,
    pub clients: BTreeSet<ClientId>,
    /// The current global model.
    pub global_digest: String,
    /// Centralised evaluation of the initial model (round 0).
    pub initial_central: Option<CentralEvaluation>,
    /// The round in progress.
    pub current: Option<RoundRecord>,
    /// Completed rounds, in order (`history[i].round == i + 1`).
    pub history: Vec<RoundRecord>,
    pub next_timer: u64,
}

/// Misuse of the protocol by the shell (not by clients).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("start: training already started (phase {phase})")]
    AlreadyStarted { phase: &'static str },
    #[error("{event} for round {round} while the machine is in round {current}, phase {phase}")]
    Unexpected {
        event: &'static str,
        round: u64,
        current: u64,
        phase: &'static str,
    },
    #[error("restored state is inconsistent: {0}")]
    BadState(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The round state machine. See the module docs for the protocol.
#[derive(Debug, Clone)]
pub struct Coordinator {
    config: RoundConfig,
    state: CoordinatorState,
}

impl Coordinator {
    pub fn new(config: RoundConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            state: CoordinatorState {
                round: 0,
                phase: Phase::Idle,
                clients: BTreeSet::new(),
                global_digest: String::new(),
                initial_central: None,
                current: None,
                history: Vec::new(),
                next_timer: 0,
            },
        })
    }

    /// Rebuilds a coordinator from persisted state; feed [`Event::Restart`] next.
    pub fn restore(config: RoundConfig, state: CoordinatorState) -> Result<Self, ProtocolError> {
        config.validate()?;
        let c = Self { config, state };
        c.check_state().map_err(ProtocolError::BadState)?;
        Ok(c)
    }

    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    pub fn state(&self) -> &CoordinatorState {
        &self.state
    }

    pub fn round(&self) -> u64 {
        self.state.round
    }

    pub fn phase(&self) -> &Phase {
        &self.state.phase
    }

    pub fn history(&self) -> &[RoundRecord] {
        &self.state.history
    }

    pub fn current(&self) -> Option<&RoundRecord> {
        self.state.current.as_ref()
    }

    pub fn global_digest(&self) -> &str {
        &self.state.global_digest
    }

    pub fn is_finished(&self) -> bool {
        self.state.phase == Phase::Finished
    }

    /// Selected clients of the current stage that have not answered yet.
    pub fn pending_clients(&self) -> Vec<ClientId> {
        let Some(cur) = &self.state.current else {
            return Vec::new();
        };
        match self.state.phase {
            Phase::Fit { .. } => cur
                .selected
                .iter()
                .filter(|c| !cur.accepted.contains_key(*c) && !cur.failures.contains_key(*c))
                .cloned()
                .collect(),
            Phase::Evaluate { .. } => cur
                .eval_selected
                .iter()
                .filter(|c| {
                    !cur.eval_results.contains_key(*c) && !cur.eval_failures.contains_key(*c)
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The record of round `round`, completed or in progress.
    pub fn record(&self, round: u64) -> Option<&RoundRecord> {
        if round >= 1 && round as usize <= self.state.history.len() {
            return Some(&self.state.history[round as usize - 1]);
        }
        self.state.current.as_ref().filter(|c| c.round == round)
    }

    /// Feeds one event at time `now_ms`; returns the actions to carry out, in order.
    pub fn on_event(&mut self, now_ms: u64, event: Event) -> Result<Vec<Action>, ProtocolError> {
        let mut out = Vec::new();
        match event {
            Event::Start { global_digest } => {
                if self.state.phase != Phase::Idle {
                    return Err(ProtocolError::AlreadyStarted {
                        phase: self.state.phase.name(),
                    });
                }
                self.state.global_digest = global_digest;
                if self.config.centralized_evaluation {
                    self.state.phase = Phase::CentralEval;
                    out.push(Action::EvaluateCentralized {
                        round: 0,
                        global_digest: self.state.global_digest.clone(),
                    });
                } else {
                    self.start_round(now_ms, &mut out);
                }
            }
            Event::ClientRegistered { client } => {
                if self.state.clients.len() >= MAX_CLIENTS && !self.state.clients.contains(&client)
                {
                    // Bounded: an extra client is not registered (and so never selected).
                    return Ok(out);
                }
                self.state.clients.insert(client);
                if let Phase::Waiting { stage, .. } = self.state.phase
                    && self.state.clients.len() >= self.config.min_available_clients
                {
                    self.sample(stage, now_ms, &mut out);
                }
            }
            Event::ClientLost { client } => {
                self.state.clients.remove(&client);
                self.client_failed(now_ms, &client, None, ClientFailure::ClientLost, &mut out);
            }
            Event::UpdateReceived {
                client,
                round,
                update_id,
                num_examples,
                metrics,
            } => {
                self.on_update(
                    now_ms,
                    client,
                    round,
                    update_id,
                    num_examples,
                    metrics,
                    &mut out,
                );
            }
            Event::FitFailed {
                client,
                round,
                reason,
            } => {
                if matches!(self.state.phase, Phase::Fit { .. }) {
                    self.client_failed(
                        now_ms,
                        &client,
                        Some((Stage::Fit, round)),
                        ClientFailure::Reported(reason),
                        &mut out,
                    );
                }
            }
            Event::EvaluateReceived {
                client,
                round,
                num_examples,
                loss,
                metrics,
            } => {
                self.on_evaluate(now_ms, client, round, num_examples, loss, metrics, &mut out);
            }
            Event::EvaluateFailed {
                client,
                round,
                reason,
            } => {
                if matches!(self.state.phase, Phase::Evaluate { .. }) {
                    self.client_failed(
                        now_ms,
                        &client,
                        Some((Stage::Evaluate, round)),
                        ClientFailure::Reported(reason),
                        &mut out,
                    );
                }
            }
            Event::TimerFired { timer } => match self.state.phase {
                Phase::Waiting { stage, timer: t } if t.id == timer => {
                    self.sample(stage, now_ms, &mut out)
                }
                Phase::Fit { timer: Some(t) } if t.id == timer => self.close_fit(now_ms, &mut out),
                Phase::Evaluate { timer: Some(t) } if t.id == timer => {
                    self.close_evaluate(now_ms, &mut out)
                }
                // A timer of a closed phase (or from before a restart): nothing to do.
                _ => {}
            },
            Event::AggregationDone {
                round,
                global_digest,
                metrics,
            } => {
                if !self.expecting(round, &Phase::Aggregating, "aggregation result")? {
                    return Ok(out);
                }
                self.state.global_digest = global_digest.clone();
                let cur = self.current_mut();
                cur.global_digest = global_digest.clone();
                cur.fit = Some(FitOutcome::Aggregated {
                    global_digest,
                    metrics,
                });
                self.after_fit(now_ms, &mut out);
            }
            Event::AggregationFailed { round, reason } => {
                if !self.expecting(round, &Phase::Aggregating, "aggregation failure")? {
                    return Ok(out);
                }
                self.fit_failed(now_ms, RoundFailure::Aggregation(reason), &mut out);
            }
            Event::CentralEvaluationDone {
                round,
                loss,
                metrics,
            } => {
                if !self.expecting(round, &Phase::CentralEval, "central evaluation")? {
                    return Ok(out);
                }
                let eval = CentralEvaluation { loss, metrics };
                if round == 0 {
                    self.state.initial_central = Some(eval);
                    self.start_round(now_ms, &mut out);
                } else {
                    self.current_mut().central = Some(eval);
                    self.begin_stage(Stage::Evaluate, now_ms, &mut out);
                }
            }
            Event::Restart => self.resume(&mut out),
        }
        self.check_invariants();
        Ok(out)
    }

    /// Whether a shell result for `round` is the one the machine waits for. A result for a
    /// round already past (a duplicate after a restart re-asked) is ignored: `Ok(false)`.
    fn expecting(
        &self,
        round: u64,
        phase: &Phase,
        event: &'static str,
    ) -> Result<bool, ProtocolError> {
        if self.state.phase == *phase && round == self.state.round {
            return Ok(true);
        }
        let already_done = round < self.state.round
            || (round == self.state.round && self.state.phase_passed(phase));
        if already_done {
            return Ok(false);
        }
        Err(ProtocolError::Unexpected {
            event,
            round,
            current: self.state.round,
            phase: self.state.phase.name(),
        })
    }

    fn current_mut(&mut self) -> &mut RoundRecord {
        self.state
            .current
            .as_mut()
            .expect("a round is in progress in this phase")
    }

    fn new_timer(&mut self, at_ms: u64, out: &mut Vec<Action>) -> Timer {
        let t = Timer {
            id: TimerId(self.state.next_timer),
            at_ms,
        };
        self.state.next_timer += 1;
        out.push(Action::SetTimer { timer: t.id, at_ms });
        t
    }

    fn start_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        debug_assert!(self.state.current.is_none());
        self.state.round += 1;
        self.state.current = Some(RoundRecord::new(
            self.state.round,
            now_ms,
            self.state.global_digest.clone(),
        ));
        self.begin_stage(Stage::Fit, now_ms, out);
    }

    fn begin_stage(&mut self, stage: Stage, now_ms: u64, out: &mut Vec<Action>) {
        if stage == Stage::Evaluate && self.config.fraction_evaluate == 0.0 {
            // Flower's configure_evaluate returns no clients: no federated evaluation.
            self.finish_round(now_ms, out);
            return;
        }
        if self.state.clients.len() >= self.config.min_available_clients {
            self.sample(stage, now_ms, out);
        } else {
            let timer = self.new_timer(
                now_ms.saturating_add(self.config.wait_for_clients_timeout_ms),
                out,
            );
            self.state.phase = Phase::Waiting { stage, timer };
        }
    }

    /// Flower's `SimpleClientManager.sample` after `wait_for`, from the `(seed, round, stage)`
    /// stream: uniform without replacement (partial Fisher-Yates over the sorted clients).
    fn sample(&mut self, stage: Stage, now_ms: u64, out: &mut Vec<Action>) {
        let (fraction, min) = match stage {
            Stage::Fit => (self.config.fraction_fit, self.config.min_fit_clients),
            Stage::Evaluate => (
                self.config.fraction_evaluate,
                self.config.min_evaluate_clients,
            ),
        };
        let available = self.state.clients.len();
        let requested = sample_size(available, fraction, min);
        if requested == 0 || requested > available {
            let reason = RoundFailure::SamplingFailed {
                available,
                requested,
            };
            match stage {
                Stage::Fit => {
                    self.current_mut().fit_started_ms = Some(now_ms);
                    self.current_mut().fit_closed_ms = Some(now_ms);
                    self.fit_failed(now_ms, reason, out);
                }
                Stage::Evaluate => {
                    self.current_mut().federated = Some(FederatedEvaluation::Failed(reason));
                    self.finish_round(now_ms, out);
                }
            }
            return;
        }
        let selected = select_clients(
            &self.state.clients,
            requested,
            self.config.seed,
            self.state.round,
            stage,
        );
        let round = self.state.round;
        let digest = self.state.global_digest.clone();
        let clients: Vec<ClientId> = selected.iter().cloned().collect();
        match stage {
            Stage::Fit => {
                out.push(Action::FitSelected {
                    round,
                    clients: clients.clone(),
                });
                for c in clients {
                    out.push(Action::SendFit {
                        round,
                        client: c,
                        global_digest: digest.clone(),
                    });
                }
                let cur = self.current_mut();
                cur.selected = selected;
                cur.fit_started_ms = Some(now_ms);
                let timer = self
                    .config
                    .fit_timeout_ms
                    .map(|t| self.new_timer(now_ms.saturating_add(t), out));
                self.state.phase = Phase::Fit { timer };
            }
            Stage::Evaluate => {
                out.push(Action::EvaluateSelected {
                    round,
                    clients: clients.clone(),
                });
                for c in clients {
                    out.push(Action::SendEvaluate {
                        round,
                        client: c,
                        global_digest: digest.clone(),
                    });
                }
                self.current_mut().eval_selected = selected;
                let timer = self
                    .config
                    .evaluate_timeout_ms
                    .map(|t| self.new_timer(now_ms.saturating_add(t), out));
                self.state.phase = Phase::Evaluate { timer };
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_update(
        &mut self,
        now_ms: u64,
        client: ClientId,
        round: u64,
        update_id: UpdateId,
        num_examples: u64,
        metrics: Metrics,
        out: &mut Vec<Action>,
    ) {
        let reject = |reason| Action::RejectUpdate {
            round,
            client: client.clone(),
            update_id: update_id.clone(),
            reason,
        };
        // Idempotent replay first: an accepted upload stays accepted whatever happened since.
        if let Some(prev) = self.record(round).and_then(|r| r.accepted.get(&client)) {
            if prev.update_id == update_id {
                out.push(Action::AcceptUpdate {
                    round,
                    client: client.clone(),
                    update_id,
                    replay: true,
                });
            } else {
                out.push(reject(RejectReason::Duplicate {
                    accepted: prev.update_id.0.clone(),
                }));
            }
            return;
        }
        if !self.state.clients.contains(&client) {
            out.push(reject(RejectReason::UnknownClient));
            return;
        }
        let current = self.state.round;
        if round > current {
            out.push(reject(RejectReason::FutureRound { current }));
            return;
        }
        if round < current {
            out.push(reject(RejectReason::StaleRound { current }));
            return;
        }
        if !matches!(self.state.phase, Phase::Fit { .. }) {
            out.push(reject(RejectReason::RoundClosed {
                round,
                phase: self.state.phase.name().into(),
            }));
            return;
        }
        let cur = self.state.current.as_ref().expect("fit phase has a round");
        if !cur.selected.contains(&client) {
            out.push(reject(RejectReason::NotSelected));
            return;
        }
        if let Some(f) = cur.failures.get(&client) {
            out.push(reject(RejectReason::AlreadyFailed {
                failure: f.to_string(),
            }));
            return;
        }
        if num_examples == 0 {
            out.push(reject(RejectReason::ZeroExamples));
            return;
        }
        out.push(Action::AcceptUpdate {
            round,
            client: client.clone(),
            update_id: update_id.clone(),
            replay: false,
        });
        let cur = self.current_mut();
        cur.accepted.insert(
            client.clone(),
            AcceptedUpdate {
                client,
                update_id,
                num_examples,
                metrics,
                accepted_ms: now_ms,
            },
        );
        if cur.accepted.len() + cur.failures.len() == cur.selected.len() {
            self.close_fit(now_ms, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_evaluate(
        &mut self,
        now_ms: u64,
        client: ClientId,
        round: u64,
        num_examples: u64,
        loss: f64,
        metrics: Metrics,
        out: &mut Vec<Action>,
    ) {
        let reject = |reason| Action::RejectEvaluate {
            round,
            client: client.clone(),
            reason,
        };
        let current = self.state.round;
        let reason = if !self.state.clients.contains(&client) {
            Some(RejectReason::UnknownClient)
        } else if round > current {
            Some(RejectReason::FutureRound { current })
        } else if round < current {
            Some(RejectReason::StaleRound { current })
        } else if !matches!(self.state.phase, Phase::Evaluate { .. }) {
            Some(RejectReason::RoundClosed {
                round,
                phase: self.state.phase.name().into(),
            })
        } else {
            let cur = self
                .state
                .current
                .as_ref()
                .expect("evaluate phase has a round");
            if !cur.eval_selected.contains(&client) {
                Some(RejectReason::NotSelected)
            } else if cur.eval_results.contains_key(&client) {
                Some(RejectReason::Duplicate {
                    accepted: "evaluate result".into(),
                })
            } else if let Some(f) = cur.eval_failures.get(&client) {
                Some(RejectReason::AlreadyFailed {
                    failure: f.to_string(),
                })
            } else if num_examples == 0 {
                Some(RejectReason::ZeroExamples)
            } else if !loss.is_finite() {
                Some(RejectReason::NonFiniteLoss)
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            out.push(reject(reason));
            return;
        }
        let cur = self.current_mut();
        cur.eval_results.insert(
            client,
            EvaluateResult {
                num_examples,
                loss,
                metrics,
            },
        );
        if cur.eval_results.len() + cur.eval_failures.len() == cur.eval_selected.len() {
            self.close_evaluate(now_ms, out);
        }
    }

    /// Marks `client` failed in the current stage if it is selected there and pending.
    /// `expected` = the stage and round the failure report names (None: a lost client, any stage).
    fn client_failed(
        &mut self,
        now_ms: u64,
        client: &ClientId,
        expected: Option<(Stage, u64)>,
        failure: ClientFailure,
        out: &mut Vec<Action>,
    ) {
        let round = self.state.round;
        let stage = match self.state.phase {
            Phase::Fit { .. } => Stage::Fit,
            Phase::Evaluate { .. } => Stage::Evaluate,
            _ => return,
        };
        if let Some((s, r)) = expected
            && (s != stage || r != round)
        {
            return;
        }
        let Some(cur) = self.state.current.as_mut() else {
            return;
        };
        match stage {
            Stage::Fit => {
                if cur.selected.contains(client)
                    && !cur.accepted.contains_key(client)
                    && !cur.failures.contains_key(client)
                {
                    cur.failures.insert(client.clone(), failure);
                    if cur.accepted.len() + cur.failures.len() == cur.selected.len() {
                        self.close_fit(now_ms, out);
                    }
                }
            }
            Stage::Evaluate => {
                if cur.eval_selected.contains(client)
                    && !cur.eval_results.contains_key(client)
                    && !cur.eval_failures.contains_key(client)
                {
                    cur.eval_failures.insert(client.clone(), failure);
                    if cur.eval_results.len() + cur.eval_failures.len() == cur.eval_selected.len() {
                        self.close_evaluate(now_ms, out);
                    }
                }
            }
        }
    }

    /// Closes the fit stage: pending clients time out; aggregate or fail (Flower's aggregate_fit).
    fn close_fit(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let min_results = self.config.min_fit_results;
        let accept_failures = self.config.accept_failures;
        let cur = self.current_mut();
        let pending: Vec<ClientId> = cur
            .selected
            .iter()
            .filter(|c| !cur.accepted.contains_key(*c) && !cur.failures.contains_key(*c))
            .cloned()
            .collect();
        for c in pending {
            cur.failures.insert(c, ClientFailure::Timeout);
        }
        cur.fit_closed_ms = Some(now_ms);
        cur.fit_metrics =
            weighted_metrics(cur.accepted.values().map(|u| (u.num_examples, &u.metrics)));
        let results = cur.accepted.len();
        let failures = cur.failures.len();
        if results < min_results {
            self.fit_failed(
                now_ms,
                RoundFailure::TooFewResults {
                    results,
                    required: min_results,
                },
                out,
            );
        } else if !accept_failures && failures > 0 {
            self.fit_failed(now_ms, RoundFailure::FailuresNotAccepted { failures }, out);
        } else {
            let updates = cur.accepted_updates();
            let round = cur.round;
            let global_digest = cur.base_digest.clone();
            self.state.phase = Phase::Aggregating;
            out.push(Action::Aggregate {
                round,
                global_digest,
                updates,
            });
        }
    }

    fn fit_failed(&mut self, now_ms: u64, reason: RoundFailure, out: &mut Vec<Action>) {
        let cur = self.current_mut();
        cur.fit = Some(FitOutcome::Failed(reason.clone()));
        out.push(Action::FitRoundFailed {
            round: cur.round,
            reason,
        });
        self.after_fit(now_ms, out);
    }

    fn after_fit(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.config.centralized_evaluation {
            self.state.phase = Phase::CentralEval;
            out.push(Action::EvaluateCentralized {
                round: self.state.round,
                global_digest: self.state.global_digest.clone(),
            });
        } else {
            self.begin_stage(Stage::Evaluate, now_ms, out);
        }
    }

    /// Closes the evaluate stage with Flower's aggregate_evaluate.
    fn close_evaluate(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let accept_failures = self.config.accept_failures;
        let cur = self.current_mut();
        let pending: Vec<ClientId> = cur
            .eval_selected
            .iter()
            .filter(|c| !cur.eval_results.contains_key(*c) && !cur.eval_failures.contains_key(*c))
            .cloned()
            .collect();
        for c in pending {
            cur.eval_failures.insert(c, ClientFailure::Timeout);
        }
        let results = cur.eval_results.len();
        let failures = cur.eval_failures.len();
        cur.federated = Some(if results == 0 {
            FederatedEvaluation::Failed(RoundFailure::TooFewResults {
                results,
                required: 1,
            })
        } else if !accept_failures && failures > 0 {
            FederatedEvaluation::Failed(RoundFailure::FailuresNotAccepted { failures })
        } else {
            let (loss, num_examples) =
                weighted_loss_avg(cur.eval_results.values().map(|r| (r.num_examples, r.loss)));
            FederatedEvaluation::Aggregated {
                loss,
                num_examples,
                num_results: results,
                num_failures: failures,
                metrics: weighted_metrics(
                    cur.eval_results
                        .values()
                        .map(|r| (r.num_examples, &r.metrics)),
                ),
            }
        });
        self.finish_round(now_ms, out);
    }

    fn finish_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let mut rec = self.state.current.take().expect("a round is in progress");
        rec.completed_ms = Some(now_ms);
        assert_eq!(
            rec.round as usize,
            self.state.history.len() + 1,
            "rounds complete in order"
        );
        assert!(
            rec.fit.is_some(),
            "round {} completes with a fit outcome",
            rec.round
        );
        out.push(Action::RoundCompleted(Box::new(rec.clone())));
        self.state.history.push(rec);
        if self.state.round >= self.config.num_rounds {
            self.state.phase = Phase::Finished;
            out.push(Action::Finished {
                rounds: self.state.round,
                global_digest: self.state.global_digest.clone(),
            });
        } else {
            self.start_round(now_ms, out);
        }
    }

    /// After a restart: re-emit what was in flight.
    fn resume(&mut self, out: &mut Vec<Action>) {
        let round = self.state.round;
        let digest = self.state.global_digest.clone();
        match self.state.phase.clone() {
            Phase::Idle => {}
            Phase::Waiting { timer, .. } => out.push(Action::SetTimer {
                timer: timer.id,
                at_ms: timer.at_ms,
            }),
            Phase::Fit { timer } => {
                for client in self.pending_clients() {
                    out.push(Action::SendFit {
                        round,
                        client,
                        global_digest: digest.clone(),
                    });
                }
                if let Some(t) = timer {
                    out.push(Action::SetTimer {
                        timer: t.id,
                        at_ms: t.at_ms,
                    });
                }
            }
            Phase::Aggregating => {
                let cur = self
                    .state
                    .current
                    .as_ref()
                    .expect("aggregating has a round");
                out.push(Action::Aggregate {
                    round,
                    global_digest: cur.base_digest.clone(),
                    updates: cur.accepted_updates(),
                });
            }
            Phase::CentralEval => out.push(Action::EvaluateCentralized {
                round,
                global_digest: digest,
            }),
            Phase::Evaluate { timer } => {
                for client in self.pending_clients() {
                    out.push(Action::SendEvaluate {
                        round,
                        client,
                        global_digest: digest.clone(),
                    });
                }
                if let Some(t) = timer {
                    out.push(Action::SetTimer {
                        timer: t.id,
                        at_ms: t.at_ms,
                    });
                }
            }
            Phase::Finished => out.push(Action::Finished {
                rounds: round,
                global_digest: digest,
            }),
        }
    }

    /// Cheap invariants after every event; the full set-level checks in debug builds.
    fn check_invariants(&self) {
        let s = &self.state;
        assert!(
            s.history.len() as u64 <= s.round,
            "history longer than the round counter"
        );
        if let Some(cur) = &s.current {
            assert_eq!(
                cur.round, s.round,
                "the record in progress is the current round's"
            );
            assert_eq!(
                s.history.len() as u64 + 1,
                s.round,
                "only the current round is open"
            );
            assert!(
                cur.accepted.len() + cur.failures.len() <= cur.selected.len(),
                "fit answers exceed selection"
            );
        }
        if cfg!(debug_assertions)
            && let Err(e) = self.check_state()
        {
            panic!("coordinator invariant violated: {e}");
        }
    }

    /// Full consistency check of the state (also validates restored state).
    fn check_state(&self) -> Result<(), String> {
        let s = &self.state;
        for (i, r) in s.history.iter().enumerate() {
            if r.round != i as u64 + 1 {
                return Err(format!("history[{i}] is round {}", r.round));
            }
            check_record(r)?;
        }
        let initial_eval = s.phase == Phase::CentralEval && s.round == 0;
        let in_round = !(matches!(s.phase, Phase::Idle | Phase::Finished) || initial_eval);
        match (&s.current, in_round) {
            (Some(cur), true) => {
                if cur.round != s.round {
                    return Err(format!(
                        "current record is round {}, state round {}",
                        cur.round, s.round
                    ));
                }
                check_record(cur)?;
            }
            (None, false) => {}
            (Some(_), false) => {
                return Err(format!(
                    "a round record is open in phase {}",
                    s.phase.name()
                ));
            }
            (None, true) => return Err(format!("no round record in phase {}", s.phase.name())),
        }
        if s.phase == Phase::Finished && s.history.len() as u64 != s.round {
            return Err("finished with an open round".into());
        }
        Ok(())
    }
}

impl CoordinatorState {
    /// Whether the current round already went past `phase` (results for it are duplicates).
    fn phase_passed(&self, phase: &Phase) -> bool {
        let order = |p: &Phase| match p {
            Phase::Idle => 0,
            Phase::Waiting {
                stage: Stage::Fit, ..
            } => 1,
            Phase::Fit { .. } => 2,
            Phase::Aggregating => 3,
            Phase::CentralEval => 4,
            Phase::Waiting {
                stage: Stage::Evaluate,
                ..
            } => 5,
            Phase::Evaluate { .. } => 6,
            Phase::Finished => 7,
        };
        order(&self.phase) > order(phase)
    }
}

fn check_record(r: &RoundRecord) -> Result<(), String> {
    let round = r.round;
    if let Some(c) = r.accepted.keys().find(|c| !r.selected.contains(*c)) {
        return Err(format!(
            "round {round}: accepted update from unselected client {c}"
        ));
    }
    if let Some(c) = r
        .failures
        .keys()
        .find(|c| !r.selected.contains(*c) || r.accepted.contains_key(*c))
    {
        return Err(format!(
            "round {round}: failure of {c} who is unselected or accepted"
        ));
    }
    if let Some((c, u)) = r
        .accepted
        .iter()
        .find(|(c, u)| u.client != **c || u.num_examples == 0)
    {
        return Err(format!(
            "round {round}: accepted entry {c} is for {} with {} examples",
            u.client, u.num_examples
        ));
    }
    if let Some(c) = r
        .eval_results
        .keys()
        .find(|c| !r.eval_selected.contains(*c) || r.eval_failures.contains_key(*c))
    {
        return Err(format!(
            "round {round}: evaluate result of {c} who is unselected or failed"
        ));
    }
    if let Some(c) = r
        .eval_failures
        .keys()
        .find(|c| !r.eval_selected.contains(*c))
    {
        return Err(format!(
            "round {round}: evaluate failure of unselected client {c}"
        ));
    }
    if let Some(FitOutcome::Aggregated { global_digest, .. }) = &r.fit
        && *global_digest != r.global_digest
    {
        return Err(format!(
            "round {round}: aggregated digest differs from the round's global digest"
        ));
    }
    Ok(())
}

/// Deterministic uniform sample of `k` clients: partial Fisher-Yates over the sorted clients,
/// from the ChaCha8 stream `(seed, 2 * round + stage)`.
pub fn select_clients(
    clients: &BTreeSet<ClientId>,
    k: usize,
    seed: u64,
    round: u64,
    stage: Stage,
) -> BTreeSet<ClientId> {
    let mut pool: Vec<&ClientId> = clients.iter().collect();
    let k = k.min(pool.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(round.wrapping_mul(2).wrapping_add(match stage {
        Stage::Fit => 0,
        Stage::Evaluate => 1,
    }));
    for i in 0..k {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    pool[..k].iter().map(|c| (*c).clone()).collect()
}

/// Flower's `weighted_loss_avg`: `sum n_k loss_k / sum n_k`; also returns `sum n_k`.
/// Accumulates in f64 in the iterator's order (the machine passes client order).
pub fn weighted_loss_avg(results: impl Iterator<Item = (u64, f64)>) -> (f64, u64) {
    let mut total = 0u64;
    let mut sum = 0.0f64;
    for (n, loss) in results {
        total += n;
        sum += n as f64 * loss;
    }
    (if total == 0 { 0.0 } else { sum / total as f64 }, total)
}

/// Each metric averaged over the clients that report it, weighted by their num_examples.
fn weighted_metrics<'a>(results: impl Iterator<Item = (u64, &'a Metrics)>) -> Metrics {
    let mut acc: BTreeMap<&'a str, (f64, u64)> = BTreeMap::new();
    for (n, m) in results {
        for (k, v) in m {
            let e = acc.entry(k.as_str()).or_insert((0.0, 0));
            e.0 += n as f64 * v;
            e.1 += n;
        }
    }
    acc.into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(k, (s, n))| (k.to_owned(), s / n as f64))
        .collect()
}

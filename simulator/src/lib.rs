//! Deterministic discrete-event simulation.
pub mod gitops;

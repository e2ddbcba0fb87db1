//! The simulator's one integration-test binary.

mod gitops;
mod gitops_models;

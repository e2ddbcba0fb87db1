//! The simulator's one integration-test binary.

mod gitops;

//! Integration tests of the harness: scenario errors, schemas, reports (JUnit against its XSD,
//! HTML in a real browser), the runner on the sim backend, baselines.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod baseline;
mod browser;
mod errors;
mod flower;
mod junit;
mod local;
mod runner;
mod schema;
mod support;

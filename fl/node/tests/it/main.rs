//! fl-node's one integration-test binary; each module is one area.

mod aggregate;
mod export;
mod node;
mod postgres;
mod s3;

//! fl-node's one integration-test binary; each module is one area.

mod export;
mod node;

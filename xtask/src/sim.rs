//! `cargo xtask sim`.

use anyhow::{Result, bail};

pub fn run(_args: Vec<String>) -> Result<()> {
    bail!("`cargo xtask sim` is not built yet")
}

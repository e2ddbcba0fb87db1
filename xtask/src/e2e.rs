//! `cargo xtask e2e`.

use anyhow::{Result, bail};

pub fn run(_args: Vec<String>) -> Result<()> {
    bail!("`cargo xtask e2e` is not built yet")
}

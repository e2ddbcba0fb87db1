//! `cargo xtask setup`.

use anyhow::{Result, bail};

pub fn run(_args: Vec<String>) -> Result<()> {
    bail!("`cargo xtask setup` is not built yet")
}

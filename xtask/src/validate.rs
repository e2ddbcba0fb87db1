//! `cargo xtask validate`.

use anyhow::{Result, bail};

pub fn run(_args: Vec<String>) -> Result<()> {
    bail!("`cargo xtask validate` is not built yet")
}

//! `fl aggregate`: the offline audit path.

use anyhow::{Result, bail};

pub fn run(_args: Vec<String>) -> Result<()> {
    bail!("`fl aggregate` is not built yet")
}

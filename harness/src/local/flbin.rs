//! Finding the `fl` binary: `HARNESS_FL_BIN` if set, else next to the running executable (or
//! its parent: test binaries live in `target/<profile>/deps/`), else built once with
//! `cargo build -p fl-node` in the workspace.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the `fl` binary to run.
pub const FL_BIN_ENV: &str = "HARNESS_FL_BIN";

/// Where `fl` was found and how.
#[derive(Debug, Clone)]
pub struct FlBinary {
    pub path: PathBuf,
    /// `HARNESS_FL_BIN`, `next to <exe>` or `built with cargo build -p fl-node`.
    pub how: String,
}

/// `fl` without building it: the env override or next to the running executable.
pub fn find_fl() -> Result<FlBinary, String> {
    if let Some(p) = std::env::var_os(FL_BIN_ENV) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(FlBinary {
                how: format!("{FL_BIN_ENV}={}", path.display()),
                path,
            })
        } else {
            Err(format!(
                "{FL_BIN_ENV}={} does not name a file",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("failed to find the running executable: {e}"))?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join(format!("fl{}", std::env::consts::EXE_SUFFIX));
        if cand.is_file() {
            return Ok(FlBinary {
                how: format!("next to {}", exe.display()),
                path: cand,
            });
        }
        looked.push(cand.display().to_string());
    }
    Err(format!(
        "no `fl` binary at {} (build it with `cargo build -p fl-node` or set {FL_BIN_ENV})",
        looked.join(" or ")
    ))
}

/// `fl`, found or built (once per process) with `cargo build -p fl-node` in `workspace_root`.
pub fn find_or_build_fl(workspace_root: &Path) -> Result<FlBinary, String> {
    static BUILT: OnceLock<Result<FlBinary, String>> = OnceLock::new();
    if let Ok(b) = find_fl() {
        return Ok(b);
    }
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = std::process::Command::new(&cargo)
                .args(["build", "-p", "fl-node", "--bin", "fl"])
                .current_dir(workspace_root)
                .output()
                .map_err(|e| format!("failed to run `cargo build -p fl-node`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`cargo build -p fl-node` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            find_fl()
                .map(|b| FlBinary {
                    how: format!("built with `cargo build -p fl-node`, {}", b.how),
                    path: b.path,
                })
                .map_err(|e| format!("`cargo build -p fl-node` succeeded but {e}"))
        })
        .clone()
}

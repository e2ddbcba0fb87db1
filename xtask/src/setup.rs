//! `cargo xtask setup <what>`: install what a backend or the test suite needs, with the system
//! package manager. Idempotent: installed packages are detected and left alone.

use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask setup <what>

  ci     what the test suite and CI need: chromium (the report.html browser test) and
         libxml2-utils (xmllint, the junit.xml schema test)
";

/// Debian packages per target.
const CI_PACKAGES: &[(&str, &str)] = &[
    ("chromium", "headless browser for the report.html test"),
    ("libxml2-utils", "xmllint for the JUnit XML schema test"),
];

pub fn run(args: Vec<String>) -> Result<()> {
    let Some(what) = args.first() else {
        eprint!("{USAGE}");
        bail!("`cargo xtask setup` needs a target");
    };
    match what.as_str() {
        "ci" => install(CI_PACKAGES),
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "local" | "flower" | "containers" | "kvm" => bail!(
            "`cargo xtask setup {what}`: no backend that needs it is built yet (only `sim` exists, and it needs nothing)"
        ),
        other => {
            eprint!("{USAGE}");
            bail!("unknown setup target `{other}` (expected `ci`)")
        }
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn install(pkgs: &[(&str, &str)]) -> Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "this machine has no dpkg/apt-get: install {} by hand",
            pkgs.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
        );
    }
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| *p)
        .collect();
    for (p, why) in pkgs {
        let state = if missing.contains(p) {
            "missing"
        } else {
            "installed"
        };
        println!("setup: {p:<14} {state:<9} ({why})");
    }
    if missing.is_empty() {
        println!("setup: nothing to install");
        return Ok(());
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd: Vec<&str> = sudo.to_vec();
        cmd.push("apt-get");
        cmd.extend_from_slice(args);
        println!("setup: {}", cmd.join(" "));
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("failed to run `{}`", cmd.join(" ")))?;
        if !status.success() {
            bail!("`{}` failed with {status}", cmd.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    apt(&args)?;
    let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still missing: {}",
            still.join(", ")
        );
    }
    println!("setup: installed {}", missing.join(", "));
    Ok(())
}

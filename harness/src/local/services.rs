//! The coordinator's real backing services on the local backend: PostgreSQL for its round
//! metadata (`fl coordinator --database postgres://...`) and an S3-compatible object store for
//! its models and updates (`--store s3://...`), both on 127.0.0.1 and free ports, with their
//! data in the case's temp dir and their logs next to the other processes'.
//!
//! - PostgreSQL: Debian's `postgresql` package (`cargo xtask setup local`), `initdb` into the
//!   temp dir, then the `postgres` server itself under the supervisor (so it is ended by PID
//!   like everything else). PostgreSQL refuses to run as root; as root the backend runs it as
//!   the system user [`PG_USER`], created on first use.
//! - S3: moto's server (PyPI `moto[server]`, in the venv `cargo xtask setup local` makes under
//!   `target/tools/s3`). One bucket per case; the coordinator's data dir becomes a cache.
//!
//! [`Need::Auto`] (a developer machine) uses them when installed and says loudly when not, falling
//! back to SQLite and the data dir; [`Need::Required`] (`CI=true`) makes a missing one an error.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::http;
use super::supervisor::{Spec, Supervisor, free_port};

/// The system user PostgreSQL runs as when the harness runs as root.
pub const PG_USER: &str = "fl-harness";
/// The bucket each case's coordinator stores into.
pub const BUCKET: &str = "fl-models";
/// How long a service may take to answer after it started (moto imports boto in ~2-4 s on a
/// loaded 2-core machine; PostgreSQL is ready in well under a second).
const READY_TIMEOUT_MS: u64 = 60_000;
const POLL_MS: u64 = 50;
/// Immediate shutdown (SIGQUIT, PostgreSQL docs "Shutting Down the Server") still removes the
/// server's shared memory; SIGKILL after this long.
const PG_STOP_WAIT_MS: u64 = 5_000;

/// Whether the backing services must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Use them where installed; otherwise SQLite and the data dir, said in `fl.start`.
    Auto,
    /// A missing service is an error (CI).
    Required,
    /// SQLite and the data dir only.
    Off,
}

impl Need {
    /// `FL_HARNESS_SERVICES=off|auto|required` if set (anything else is ignored with a
    /// warning), else `Required` under `CI=true`, else `Auto`.
    pub fn from_env() -> Self {
        match std::env::var("FL_HARNESS_SERVICES").as_deref() {
            Ok("off") => return Self::Off,
            Ok("auto") => return Self::Auto,
            Ok("required") => return Self::Required,
            Ok(other) => eprintln!(
                "local backend: FL_HARNESS_SERVICES=`{other}` is not off, auto or required; ignored"
            ),
            Err(_) => {}
        }
        if crate::in_ci() {
            Self::Required
        } else {
            Self::Auto
        }
    }
}

/// The S3 store the coordinator writes to, as `fl` flags.
#[derive(Debug, Clone)]
pub struct S3 {
    pub addr: SocketAddr,
    pub prefix: String,
}

impl S3 {
    /// `--store s3://BUCKET/PREFIX --store-option ...` for `fl coordinator` and `fl export-round`.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--store".to_string(),
            format!("s3://{BUCKET}/{}", self.prefix),
        ];
        for opt in [
            format!("endpoint=http://{}", self.addr),
            "allow_http=true".to_string(),
            "region=us-east-1".to_string(),
            // moto accepts any credentials; the coordinator signs every request with these.
            "access_key_id=fl-harness".to_string(),
            "secret_access_key=fl-harness".to_string(),
        ] {
            v.push("--store-option".to_string());
            v.push(opt);
        }
        v
    }
}

/// What runs for one case.
#[derive(Debug, Default)]
pub struct Services {
    /// `postgres://...` when PostgreSQL runs.
    pub database: Option<String>,
    pub s3: Option<S3>,
    /// One line per service: what runs, or why it does not.
    pub notes: Vec<String>,
    /// Time to stand them up, ms.
    pub startup_ms: u64,
}

impl Services {
    /// The coordinator's (and `fl export-round`'s) flags for these services.
    pub fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(db) = &self.database {
            v.extend(["--database".to_string(), db.clone()]);
        }
        if let Some(s3) = &self.s3 {
            v.extend(s3.args());
        }
        v
    }

    /// Starts what `need` asks for under `sup`, data under `dir`.
    pub fn start(
        need: Need,
        sup: &mut Supervisor,
        dir: &Path,
        root: &Path,
        prefix: &str,
    ) -> Result<Self, String> {
        let t0 = Instant::now();
        let mut s = Services::default();
        if need == Need::Off {
            s.notes
                .push("metadata in SQLite, blobs in the data dir (services off)".into());
            return Ok(s);
        }
        let missing = |what: &str, why: String, s: &mut Services| -> Result<(), String> {
            if need == Need::Required {
                return Err(format!(
                    "{what} is required here (CI=true) but {why}; `cargo xtask setup local` installs it"
                ));
            }
            let line = format!(
                "NOT USED: {what}: {why} (run `cargo xtask setup local`); falling back to {}",
                if what.starts_with("PostgreSQL") {
                    "SQLite in the data dir"
                } else {
                    "blobs in the data dir"
                }
            );
            eprintln!("local backend: {line}");
            s.notes.push(line);
            Ok(())
        };
        // moto takes seconds to import; it starts first and is waited for last, so PostgreSQL's
        // initdb and start overlap with it.
        let moto = find_moto(root);
        let s3_port = match &moto {
            Some(bin) => Some(spawn_s3(sup, bin)?),
            None => None,
        };
        match find_pg_bin() {
            None => missing(
                "PostgreSQL",
                "no initdb/postgres on PATH or under /usr/lib/postgresql".into(),
                &mut s,
            )?,
            Some(bin) => {
                let url = start_postgres(sup, dir, &bin)?;
                s.notes.push(format!(
                    "metadata in PostgreSQL {url} ({})",
                    bin.join("postgres").display()
                ));
                s.database = Some(url);
            }
        }
        match s3_port {
            None => missing(
                "S3 (moto_server)",
                "no moto_server on PATH or in target/tools/s3".into(),
                &mut s,
            )?,
            Some(addr) => {
                let s3 = wait_s3(sup, addr, prefix)?;
                s.notes.push(format!(
                    "models and updates in s3://{BUCKET}/{} at http://{} (moto)",
                    s3.prefix, s3.addr
                ));
                s.s3 = Some(s3);
            }
        }
        s.startup_ms = t0.elapsed().as_millis() as u64;
        Ok(s)
    }

    /// Stops PostgreSQL gracefully so it frees its shared memory (the supervisor SIGKILLs the
    /// rest).
    pub fn stop(sup: &mut Supervisor) {
        if sup.is_running("postgres") {
            let _ = sup.stop_with("postgres", libc::SIGQUIT, PG_STOP_WAIT_MS);
        }
    }
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Debian keeps the server binaries out of PATH, one folder per major version.
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        dirs.extend(v.into_iter().rev());
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

fn find_moto(root: &Path) -> Option<PathBuf> {
    let venv = root.join("target/tools/s3/bin/moto_server");
    std::iter::once(venv)
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.join("moto_server")),
        )
        .find(|p| p.exists())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str, user: &str) -> Result<u32, String> {
    let o = Command::new("id")
        .args([flag, user])
        .output()
        .map_err(|e| format!("failed to run `id {flag} {user}`: {e}"))?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("`id {flag} {user}` printed no id"))
}

/// The (uid, gid) PostgreSQL runs as: ours, or [`PG_USER`]'s when we are root.
fn pg_user() -> Result<Option<(u32, u32)>, String> {
    if !is_root() {
        return Ok(None);
    }
    if id_of("-u", PG_USER).is_err() {
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(PG_USER)
            .status()
            .map_err(|e| format!("failed to run useradd for {PG_USER}: {e}"))?;
        if !st.success() && id_of("-u", PG_USER).is_err() {
            return Err(format!(
                "PostgreSQL refuses to run as root and `useradd {PG_USER}` failed ({st})"
            ));
        }
    }
    Ok(Some((id_of("-u", PG_USER)?, id_of("-g", PG_USER)?)))
}

fn start_postgres(sup: &mut Supervisor, dir: &Path, bin: &Path) -> Result<String, String> {
    let user = pg_user()?;
    let base = dir.join("postgres");
    let data = base.join("data");
    std::fs::create_dir_all(&base)
        .map_err(|e| format!("failed to create {}: {e}", base.display()))?;
    if let Some((uid, gid)) = user {
        // The case dir is 0700 root: let the server's user through to its own folder only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("failed to open {} to {PG_USER}: {e}", dir.display()))?;
        std::os::unix::fs::chown(&base, Some(uid), Some(gid))
            .map_err(|e| format!("failed to give {} to {PG_USER}: {e}", base.display()))?;
    }
    let mut init = Command::new(bin.join("initdb"));
    init.args(["-D", &data.display().to_string()])
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .current_dir(&base);
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(&mut init, uid);
        std::os::unix::process::CommandExt::gid(&mut init, gid);
    }
    let out = init
        .output()
        .map_err(|e| format!("failed to run {}: {e}", bin.join("initdb").display()))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let port = free_port().map_err(|e| format!("no free port for PostgreSQL: {e}"))?;
    sup.start_as(
        "postgres",
        Spec {
            program: bin.join("postgres"),
            args: vec![
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                base.display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
            ],
        },
        user,
    )
    .map_err(|e| e.to_string())?;
    let ready = bin.join("pg_isready");
    let t0 = Instant::now();
    loop {
        if !sup.is_running("postgres") {
            return Err(format!(
                "postgres exited at start:\n{}",
                sup.log_tail("postgres", 15)
            ));
        }
        let up = if ready.exists() {
            Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        } else {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        };
        if up {
            return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
        }
        if t0.elapsed() > Duration::from_millis(READY_TIMEOUT_MS) {
            return Err(format!(
                "PostgreSQL did not accept connections within {READY_TIMEOUT_MS} ms:\n{}",
                sup.log_tail("postgres", 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

fn spawn_s3(sup: &mut Supervisor, bin: &Path) -> Result<SocketAddr, String> {
    let port = free_port().map_err(|e| format!("no free port for the S3 server: {e}"))?;
    sup.start(
        "s3",
        Spec {
            program: bin.to_path_buf(),
            args: vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(([127, 0, 0, 1], port).into())
}

fn wait_s3(sup: &mut Supervisor, addr: SocketAddr, prefix: &str) -> Result<S3, String> {
    let t0 = Instant::now();
    // Creating the bucket is also the readiness probe.
    loop {
        if !sup.is_running("s3") {
            return Err(format!(
                "the S3 server exited at start:\n{}",
                sup.log_tail("s3", 15)
            ));
        }
        match http::request(
            "PUT",
            addr,
            &format!("/{BUCKET}"),
            &[],
            Some(&[]),
            Duration::from_secs(5),
        ) {
            Ok((s, _)) if (200..300).contains(&s) => {
                return Ok(S3 {
                    addr,
                    prefix: prefix.to_string(),
                });
            }
            Ok((s, body)) => {
                return Err(format!(
                    "creating bucket {BUCKET} on the S3 server answered {s}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(e) if t0.elapsed() > Duration::from_millis(READY_TIMEOUT_MS) => {
                return Err(format!(
                    "the S3 server did not answer within {READY_TIMEOUT_MS} ms ({e}):\n{}",
                    sup.log_tail("s3", 15)
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(POLL_MS)),
        }
    }
}

//! The coordinator with its round metadata in a real PostgreSQL (started here with `initdb` and
//! `pg_ctl` as a non-root user, on 127.0.0.1 and a free port, in a temp dir): SIGKILL mid-round
//! and restart keep every acknowledged update once, and `fl export-round --database` reads it.
//! Without PostgreSQL binaries: fails under `CI=true`, else prints a loud SKIPPED line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::node::{Cluster, fl, require};

/// The non-root user PostgreSQL runs as (initdb refuses root).
const PG_USER: &str = "fltest";

struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_pg_user(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.dir.path().join("db").display().to_string(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

fn as_pg_user(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        dirs.extend(v.into_iter().rev());
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn start_postgres() -> Result<Postgres, String> {
    let bin = find_bin_dir().ok_or("no initdb/pg_ctl on PATH or under /usr/lib/postgresql")?;
    if is_root()
        && !Command::new("id")
            .arg(PG_USER)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        let s = Command::new("useradd")
            .args(["--system", "--no-create-home", PG_USER])
            .status()
            .map_err(|e| e.to_string())?;
        if !s.success() {
            return Err(format!("useradd {PG_USER} failed"));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if is_root() {
        let s = Command::new("chown")
            .args(["-R", PG_USER])
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        assert!(s.success(), "chown of the postgres temp dir failed");
    }
    let db = dir.path().join("db");
    let out = as_pg_user(&bin.join("initdb"))
        .args([
            "-D",
            &db.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1",
        dir.path().display()
    );
    let out = as_pg_user(&bin.join("pg_ctl"))
        .args([
            "-D",
            &db.display().to_string(),
            "-o",
            &opts,
            "-l",
            &dir.path().join("pg.log").display().to_string(),
            "-w",
            "start",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.path().join("pg.log")).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Postgres { dir, bin, port })
}

#[test]
fn postgres_metadata_survives_sigkill_and_feeds_export_round() {
    let Some(pg) = require(
        "postgres_metadata_survives_sigkill_and_feeds_export_round",
        "PostgreSQL",
        start_postgres(),
    ) else {
        return;
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let mut c = Cluster::all_of_abc(2, &["--database", &url]);
    c.abc_workers(&["--straggle-ms", "2000"]);
    let before = c.wait_for_acks(1, 2);
    c.sigkill_coordinator();
    // Nothing of the metadata is in the data dir: it is all in PostgreSQL.
    assert!(!c.dir.path().join("data/meta.sqlite").exists());
    c.start_coordinator();
    let v = c.wait_for("2 rounds", Duration::from_secs(60), |v| {
        v["finished"] == true
    });
    let r1 = v["history"][0]["accepted"].as_object().unwrap();
    assert_eq!(r1.len(), 3);
    for (client, u) in before["current"]["accepted"].as_object().unwrap() {
        assert_eq!(
            r1[client]["update_id"], u["update_id"],
            "{client}'s acknowledged update changed"
        );
    }
    let out = c.dir.path().join("export");
    let o = fl()
        .args(["export-round", "--data-dir"])
        .arg(c.dir.path().join("data"))
        .args(["--database", &url, "--round", "1", "--to"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors"))
            .count(),
        3
    );
    c.sigkill_coordinator();
    drop(pg);
}

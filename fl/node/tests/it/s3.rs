//! The coordinator with its models and updates in S3 (`--store s3://...`) against a real
//! S3-compatible server (moto's, from PyPI, installed by `cargo xtask setup ci`; started here on
//! 127.0.0.1 and a free port): SIGKILL mid-round, then a restart on an EMPTY data dir keeps every
//! acknowledged update exactly once (they were in the bucket before they were acknowledged),
//! and `fl export-round --store` on yet another empty dir feeds `fl aggregate` to the
//! coordinator's digest. Without the server: fails under `CI=true`, else a loud SKIPPED line.

// Process tests measure wall time for their own timeouts (not the sans-IO core).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::node::{Cluster, fl, install_crypto_provider, require};

const BUCKET: &str = "fl-models";

/// The S3 server process, killed by PID on drop.
struct S3Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` on PATH, or in the venv `cargo xtask setup ci` makes under `target/tools/s3`.
fn find_moto() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/s3/bin/moto_server");
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("moto_server"))
        .chain([venv])
        .find(|p| p.exists())
}

fn start_s3() -> Result<S3Server, String> {
    let bin = find_moto().ok_or(
        "no moto_server on PATH or in target/tools/s3 (run `cargo xtask setup ci`)".to_owned(),
    )?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("s3.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let s3 = S3Server {
        child,
        port,
        _dir: dir,
    };
    install_crypto_provider();
    let http = reqwest::blocking::Client::new();
    let t0 = Instant::now();
    // Creating the bucket is also the readiness probe.
    loop {
        match http.put(format!("http://127.0.0.1:{port}/{BUCKET}")).send() {
            Ok(r) if r.status().is_success() => return Ok(s3),
            Ok(r) => return Err(format!("creating bucket {BUCKET}: HTTP {}", r.status())),
            Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(format!("the S3 server never answered: {e}")),
        }
    }
}

/// The coordinator's flags for `s3://BUCKET/<prefix>` on the test server.
fn store_args(port: u16, prefix: &str) -> Vec<String> {
    let mut v = vec!["--store".to_owned(), format!("s3://{BUCKET}/{prefix}")];
    for opt in [
        format!("endpoint=http://127.0.0.1:{port}"),
        "allow_http=true".to_owned(),
        "region=us-east-1".to_owned(),
        "access_key_id=test".to_owned(),
        "secret_access_key=test".to_owned(),
    ] {
        v.push("--store-option".to_owned());
        v.push(opt);
    }
    v
}

/// Keys under `prefix` in the bucket (ListObjectsV2, parsed just enough).
fn list_keys(port: u16, prefix: &str) -> Vec<String> {
    let body = reqwest::blocking::get(format!(
        "http://127.0.0.1:{port}/{BUCKET}?list-type=2&prefix={prefix}"
    ))
    .unwrap()
    .text()
    .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn s3_store_keeps_acknowledged_updates_across_sigkill_on_an_empty_data_dir() {
    let Some(s3) = require(
        "s3_store_keeps_acknowledged_updates_across_sigkill_on_an_empty_data_dir",
        "an S3 server",
        start_s3(),
    ) else {
        return;
    };
    let meta = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", meta.path().join("meta.sqlite").display());
    let store = store_args(s3.port, "run-1");
    let mut extra = vec!["--database", &db];
    extra.extend(store.iter().map(String::as_str));
    let mut c = Cluster::all_of_abc(2, &extra);
    c.abc_workers(&["--straggle-ms", "2000"]);
    let before = c.wait_for_acks(1, 2);
    // Acknowledged means in the bucket already.
    let acked = list_keys(s3.port, "run-1/updates/1/");
    assert_eq!(acked.len(), 2, "bucket after 2 acks: {acked:?}");
    c.sigkill_coordinator();
    // The node's disk is gone: only the bucket and the database remain.
    std::fs::remove_dir_all(c.dir.path().join("data")).unwrap();
    c.start_coordinator();
    let v = c.wait_for("2 rounds", Duration::from_secs(90), |v| {
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
    let keys = list_keys(s3.port, "run-1/");
    let count = |p: &str| keys.iter().filter(|k| k.starts_with(p)).count();
    assert_eq!(count("run-1/updates/1/"), 3, "{keys:?}");
    assert_eq!(count("run-1/updates/2/"), 3, "{keys:?}");
    // The initial model and one per round.
    assert_eq!(count("run-1/models/"), 3, "{keys:?}");
    assert_eq!(count("run-1/tmp/"), 0, "temporary files leaked: {keys:?}");

    // The audit path from a machine that never saw the run: an empty data dir, the bucket.
    let audit = tempfile::tempdir().unwrap();
    let out = audit.path().join("export");
    let o = fl()
        .args(["export-round", "--data-dir"])
        .arg(audit.path().join("cache"))
        .args(["--database", &db, "--round", "2", "--to"])
        .arg(&out)
        .args(&store)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = v["history"][1]["global_digest"].as_str().unwrap();
    let o = fl()
        .args(["aggregate", "--strategy", "fedavg", "--updates"])
        .arg(&out)
        .arg("--global")
        .arg(out.join("global/base.safetensors"))
        .args(["--round", "2", "--out"])
        .arg(audit.path().join("recomputed.safetensors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains(want),
        "fl aggregate printed {stdout}, the coordinator {want}"
    );
    c.sigkill_coordinator();
}

/// A model over the multipart threshold (8 MiB) goes up in parts, and comes back whole when a
/// restarted coordinator on an empty data dir serves it.
#[test]
fn a_large_model_goes_up_in_parts_and_is_served_from_the_bucket_after_a_restart() {
    let Some(s3) = require(
        "a_large_model_goes_up_in_parts_and_is_served_from_the_bucket_after_a_restart",
        "an S3 server",
        start_s3(),
    ) else {
        return;
    };
    let meta = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", meta.path().join("meta.sqlite").display());
    let store = store_args(s3.port, "big");
    // 64 x 40000 + 40000 x 10 weights and biases: about 11.4 MiB of f32, two 8 MiB parts.
    let mut extra = vec!["--model", "mlp-64-40000-10", "--database", &db];
    extra.extend(store.iter().map(String::as_str));
    let mut c = Cluster::new(&["a"], &extra);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let fetch = |c: &Cluster| {
        let r = http
            .get(c.url("/api/v1/fl/model/latest"))
            .header("x-api-key", "admin-key")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap().to_vec()
    };
    let before = fetch(&c);
    assert!(before.len() > 8 << 20, "model is {} bytes", before.len());
    c.sigkill_coordinator();
    std::fs::remove_dir_all(c.dir.path().join("data")).unwrap();
    c.start_coordinator();
    let after = fetch(&c);
    assert!(before == after, "the model fetched from the bucket differs");
    let keys = list_keys(s3.port, "big/models/");
    assert_eq!(keys.len(), 1);
    // A multipart upload's ETag is `<md5 of the parts' md5s>-<parts>`.
    let head = http
        .head(format!("http://127.0.0.1:{}/{BUCKET}/{}", s3.port, keys[0]))
        .send()
        .unwrap();
    let etag = head.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.ends_with("-2\""), "not a 2-part upload: ETag {etag}");
    c.sigkill_coordinator();
}

#[test]
fn a_bad_store_url_or_option_is_refused_at_start_naming_it() {
    for (args, want) in [
        (vec!["--store", "gs://bucket"], "expected s3://BUCKET"),
        (vec!["--store", "s3://"], "the bucket name is empty"),
        (
            vec!["--store", "s3://b", "--store-option", "endpiont=http://x"],
            "`endpiont` is not an S3 setting",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = fl()
            .args([
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: stderr {err}");
    }
}

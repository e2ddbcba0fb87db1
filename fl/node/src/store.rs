//! Durable storage: model and update bytes in a local directory, round metadata in SQLite.
//!
//! Layout under `--data-dir`:
//! ```text
//! meta.sqlite                       round metadata (state of the round machine, models, rounds)
//! models/<digest>.safetensors       every global model, named by its digest
//! updates/<round>/<client>-<id>.safetensors   accepted updates (id = sha256 of the body)
//! strategy/after-<round>.safetensors          strategy state (momentum, moments) after a round
//! tmp/                              uploads being received (never read as data)
//! ```
//! Every file is written to `tmp/`, fsynced, renamed into place and its directory fsynced, so a
//! file under a final name is complete; a round's aggregates (global model, strategy state),
//! which can be computed again from durable inputs, are fsynced after the commit that names
//! them instead of before (`Blobs::write_aggregate`). Metadata commits use SQLite's
//! `synchronous = FULL`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use fl_core::round::CoordinatorState;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The blob side: paths and durable writes. With `--store s3://BUCKET[/PREFIX]` the bucket is
/// where blobs are durable and the data dir is a cache of it: every blob is written locally
/// (tmp, fsync, rename), then put to the bucket before the caller goes on (an upload is
/// acknowledged only after that), and a blob missing locally (a fresh data dir after a restart
/// elsewhere) is fetched from the bucket before it is read.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
    remote: Option<Remote>,
}

/// An S3 bucket (any S3-compatible store) holding the blobs under their data-dir-relative keys.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Blobs at least this large go up as a multipart upload in parts of this size (S3's minimum
/// part size is 5 MiB; AWS S3 docs, "Amazon S3 multipart upload limits"), read from the file a
/// part at a time so a large model is never held whole in memory.
const MULTIPART_PART_BYTES: usize = 8 << 20;

impl Remote {
    /// `s3://BUCKET[/PREFIX]`; credentials, region and endpoint come from the standard
    /// `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT` for an S3-compatible server, `AWS_ALLOW_HTTP=true` for a
    /// plain-HTTP one).
    /// `options` are object_store's S3 settings by name (`endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, ...), over the environment's.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .with_context(|| format!("--store {url}: expected s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("--store {url}: the bucket name is empty (expected s3://BUCKET[/PREFIX])");
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            let key: AmazonS3ConfigKey = k.parse().with_context(|| {
                format!("--store-option {k}={v}: `{k}` is not an S3 setting (endpoint, region, access_key_id, secret_access_key, allow_http, ...)")
            })?;
            builder = builder.with_config(key, v);
        }
        let store = builder
            .build()
            .with_context(|| format!("--store {url}: configuring the S3 client"))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: ObjPath::from(prefix.trim_matches('/')),
            url: url.to_owned(),
        })
    }

    /// `s3://BUCKET/KEY` for messages.
    fn show(&self, key: &ObjPath) -> String {
        let bucket = self.url["s3://".len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        format!("s3://{bucket}/{key}")
    }

    fn key(&self, rel: &Path) -> Result<ObjPath> {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        for c in rel.components() {
            parts.push(
                c.as_os_str()
                    .to_str()
                    .with_context(|| format!("blob path {} is not UTF-8", rel.display()))?
                    .to_owned(),
            );
        }
        Ok(ObjPath::from_iter(parts))
    }

    async fn put_file(&self, local: &Path, key: &ObjPath) -> Result<()> {
        let ctx = || format!("putting {} to {}", local.display(), self.show(key));
        let len = tokio::fs::metadata(local).await.with_context(ctx)?.len();
        if len < MULTIPART_PART_BYTES as u64 {
            let bytes = tokio::fs::read(local).await.with_context(ctx)?;
            self.store
                .put(key, PutPayload::from(bytes))
                .await
                .with_context(ctx)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(key).await.with_context(ctx)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_BYTES);
        let mut f = tokio::fs::File::open(local).await.with_context(ctx)?;
        let mut buf = vec![0u8; MULTIPART_PART_BYTES];
        loop {
            let n = f.read(&mut buf).await.with_context(ctx)?;
            if n == 0 {
                break;
            }
            // At most two parts in flight: memory stays bounded whatever the blob's size.
            w.wait_for_capacity(2).await.with_context(ctx)?;
            w.write(&buf[..n]);
        }
        w.finish().await.with_context(ctx)?;
        Ok(())
    }

    /// Streams `key` into `tmp`, fsynced. `Ok(false)` when the bucket has no such key.
    async fn get_file(&self, key: &ObjPath, tmp: &Path) -> Result<bool> {
        let ctx = || format!("getting {}", self.show(key));
        let got = match self.store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e).with_context(ctx),
        };
        let mut f = tokio::fs::File::create(tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk.with_context(ctx)?)
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        // A failed background write shows on flush, not on sync_all (tokio-rs/tokio#6005).
        f.flush()
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .await
            .with_context(|| format!("fsync {}", tmp.display()))?;
        Ok(true)
    }

    async fn exists(&self, key: &ObjPath) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("head {}", self.show(key))),
        }
    }
}

/// Runs `f` to completion from sync code: inside the coordinator's multi-thread runtime without
/// stalling its other tasks, or on a private runtime in a command that has none.
fn block_on<F: std::future::Future<Output = Result<T>>, T>(f: F) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => tokio::task::block_in_place(|| h.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the object store")?
            .block_on(f),
    }
}

impl Blobs {
    /// Opens the store for a reader such as `fl export-round` (creates only `tmp/`, for blobs
    /// fetched from the bucket).
    pub fn at(root: &Path, store: Option<&str>, options: &[(String, String)]) -> Result<Self> {
        let remote = store.map(|u| Remote::open(u, options)).transpose()?;
        if remote.is_some() {
            std::fs::create_dir_all(root.join("tmp"))
                .with_context(|| format!("creating {}", root.join("tmp").display()))?;
        }
        Ok(Self {
            root: root.to_owned(),
            remote,
        })
    }

    /// Opens the store for the coordinator: creates the layout and clears `tmp/`.
    pub fn open(root: &Path, store: Option<&str>, options: &[(String, String)]) -> Result<Self> {
        let remote = store.map(|u| Remote::open(u, options)).transpose()?;
        for d in ["models", "updates", "strategy", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        // Leftovers of uploads interrupted by a crash were never acknowledged: drop them.
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_owned(),
            remote,
        })
    }

    /// Where blobs are durable, for messages: the bucket URL or the data dir.
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => r.url.clone(),
            None => self.root.display().to_string(),
        }
    }

    fn key(&self, remote: &Remote, local: &Path) -> Result<ObjPath> {
        let rel = local.strip_prefix(&self.root).with_context(|| {
            format!(
                "{} is not under the data dir {}",
                local.display(),
                self.root.display()
            )
        })?;
        remote.key(rel)
    }

    /// Makes a complete local blob durable in the bucket (nothing to do without one).
    pub fn persist(&self, local: &Path) -> Result<()> {
        let Some(r) = &self.remote else {
            return Ok(());
        };
        let key = self.key(r, local)?;
        block_on(r.put_file(local, &key))
    }

    /// Makes sure the blob is in the local cache, fetching it from the bucket if needed.
    pub fn ensure_local(&self, local: &Path) -> Result<()> {
        if local.exists() {
            return Ok(());
        }
        let Some(r) = &self.remote else {
            bail!("blob {} is missing from the data dir", local.display());
        };
        let key = self.key(r, local)?;
        let tmp = self.tmp_path();
        if !block_on(r.get_file(&key, &tmp))? {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "blob {} is missing from the data dir and from {}",
                local.display(),
                r.url
            );
        }
        commit(&tmp, local)
    }

    /// Whether the blob exists locally or in the bucket.
    pub fn exists(&self, local: &Path) -> Result<bool> {
        if local.exists() {
            return Ok(true);
        }
        match &self.remote {
            Some(r) => {
                let key = self.key(r, local)?;
                block_on(r.exists(&key))
            }
            None => Ok(false),
        }
    }

    /// Memory-maps a blob, fetching it from the bucket first when the cache lacks it.
    pub fn map(&self, local: &Path) -> Result<memmap2::Mmap> {
        self.ensure_local(local)?;
        crate::coordinator::map_file(local)
    }

    pub fn model_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("models")
            .join(format!("{digest}.safetensors"))
    }

    pub fn update_path(&self, round: u64, client: &str, update_id: &str) -> PathBuf {
        self.root
            .join("updates")
            .join(round.to_string())
            .join(format!("{client}-{update_id}.safetensors"))
    }

    pub fn strategy_state_path(&self, round: u64) -> PathBuf {
        self.root
            .join("strategy")
            .join(format!("after-{round}.safetensors"))
    }

    /// A fresh temporary path (unique per call within the process).
    pub fn tmp_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// Writes a model durably at `dest`, tensor by tensor from its own buffers (no
    /// serialised copy of the whole model). Returns the file's length.
    pub fn write_model_durable(&self, dest: &Path, model: &fl_core::ModelView<'_>) -> Result<u64> {
        let mut len = 0;
        let dir = self.write_file(dest, true, |f| {
            len = model.write_safetensors(f)?;
            Ok(())
        })?;
        sync_dir(&dir)?;
        Ok(len)
    }

    /// Writes a round's new global model under its digest (`model_path`) without waiting for
    /// the disk: neither its data nor the rename is fsynced here. A round's aggregates are
    /// derived from durable inputs (its accepted updates, its base model and the state before
    /// it), so a power cut that loses one loses nothing the coordinator cannot compute again on
    /// restart (`App::recover_newest`); the caller makes them durable after the commit that
    /// names them (`make_durable`), off the round's critical path (bench `round`: the model's
    /// fsync and its directory's were the largest share of the serial work after the last
    /// upload). The digest (SHA-256 over the whole model) is computed on a second thread while
    /// the file is written. Returns the digest (hex), the file's length and its path.
    pub fn write_aggregate(
        &self,
        model: &fl_core::ModelView<'_>,
    ) -> Result<(String, u64, PathBuf)> {
        let tmp = self.tmp_path();
        let mut len = 0;
        let (digest, written) = std::thread::scope(|s| {
            let digest = s.spawn(|| model.digest().to_hex());
            let written = self.write_tmp(&tmp, false, |f| {
                len = model.write_safetensors(f)?;
                Ok(())
            });
            (digest.join(), written)
        });
        let digest = digest.map_err(|_| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("computing the digest of the model panicked")
        })?;
        written?;
        let dest = self.model_path(&digest);
        self.place(&tmp, &dest)?;
        Ok((digest, len, dest))
    }

    /// [`Blobs::write_aggregate`] for an aggregate stored at a known path (a strategy state).
    pub fn write_aggregate_at(&self, dest: &Path, model: &fl_core::ModelView<'_>) -> Result<()> {
        self.write_file(dest, false, |f| model.write_safetensors(f).map(|_| ()))
            .map(|_| ())
    }

    /// Writes whatever `write` puts into a temporary file, fsyncs it if `sync`, renames it into
    /// place and puts it in the bucket; the temporary file is removed on failure. Returns the
    /// directory it was renamed into, whose fsync makes the name durable.
    fn write_file(
        &self,
        dest: &Path,
        sync: bool,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<PathBuf> {
        let tmp = self.tmp_path();
        self.write_tmp(&tmp, sync, write)?;
        self.place(&tmp, dest)
    }

    /// Creates `tmp`, fills it with `write` and fsyncs it if `sync`; removes it on failure.
    fn write_tmp(
        &self,
        tmp: &Path,
        sync: bool,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let r = (|| {
            let mut f = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            write(&mut f).with_context(|| format!("writing {}", tmp.display()))?;
            if sync {
                f.sync_all()
                    .with_context(|| format!("fsync {}", tmp.display()))?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        r
    }

    /// Renames the complete `tmp` to `dest` (removing it on failure) and puts it in the bucket.
    /// Returns the directory to fsync.
    fn place(&self, tmp: &Path, dest: &Path) -> Result<PathBuf> {
        let dir = rename_into(tmp, dest).inspect_err(|_| {
            let _ = std::fs::remove_file(tmp);
        })?;
        self.persist(dest)?;
        Ok(dir)
    }
}

/// Runs blocking `f` (a SQLite commit waits for its fsync) so that it does not stall the
/// runtime's other tasks: on a multi-thread runtime the worker hands them off first
/// (`block_in_place`); elsewhere (tests, one-shot commands) it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Fsyncs directories (see `rename_into`) one after another: on one journalling file system
/// the first commits the journal that holds the others' renames too, so the rest return
/// without waiting for the disk again.
pub fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    dirs.iter().try_for_each(|d| sync_dir(d))
}

/// Renames a complete, fsynced temporary file into place and fsyncs the directory.
pub fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    let dir = rename_into(tmp, dest)?;
    sync_dir(&dir)
}

/// Renames a complete, fsynced temporary file into place; the rename is durable only once
/// the returned directory is fsynced (`sync_dir`), which the caller does before it commits
/// anything that names the file (the coordinator: once per group commit, for every upload of
/// the batch, instead of once per upload). A directory this creates is durable on return
/// (its parent fsynced), so the later fsync of the returned one is all the rename needs.
pub fn rename_into(tmp: &Path, dest: &Path) -> Result<PathBuf> {
    let dir = dest
        .parent()
        .context("destination has no parent directory")?;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    std::fs::rename(tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(dir.to_owned())
}

/// Makes complete files under their final names durable: each file's data, then the
/// directories holding them (their names), each directory once.
pub fn make_durable(files: &[PathBuf]) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for f in files {
        File::open(f)
            .and_then(|h| h.sync_all())
            .with_context(|| format!("fsync {}", f.display()))?;
        if let Some(d) = f.parent() {
            dirs.insert(d.to_owned());
        }
    }
    dirs.iter().try_for_each(|d| sync_dir(d))
}

/// Makes the entries of directory `dir` (renames, creations) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// A stored global model.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelRow {
    pub digest: String,
    /// The round that produced it (0 = the initial model).
    pub round: u64,
    pub size_bytes: u64,
    pub created_ms: u64,
}

/// What one metadata commit writes, in one transaction: the round machine's state without its
/// history, the rounds completed since the last commit (the history lives in the `rounds`
/// table, one row per round, so a commit's size does not grow with the round count), and the
/// global models stored since then.
pub struct Commit<'a> {
    pub config: &'a str,
    pub state: &'a CoordinatorState,
    /// History records already in the `rounds` table (the first `saved_rounds`).
    pub saved_rounds: usize,
    pub models: &'a [ModelRow],
    pub now_ms: u64,
}

/// The state as stored: every field but `history`, which is written as `[]` (the destructuring
/// is exhaustive, so a new field of the state is a compile error here, not a silent loss).
fn state_json(state: &CoordinatorState) -> Result<String> {
    let CoordinatorState {
        round,
        phase,
        clients,
        global_digest,
        initial_central,
        current,
        history: _,
        next_timer,
    } = state;
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        round: &'a u64,
        phase: &'a fl_core::round::Phase,
        clients: &'a std::collections::BTreeSet<fl_core::round::ClientId>,
        global_digest: &'a str,
        initial_central: &'a Option<fl_core::round::CentralEvaluation>,
        current: &'a Option<fl_core::round::RoundRecord>,
        history: [(); 0],
        next_timer: &'a u64,
    }
    Ok(serde_json::to_string(&Stored {
        round,
        phase,
        clients,
        global_digest,
        initial_central,
        current,
        history: [],
        next_timer,
    })?)
}

impl Commit<'_> {
    fn rows(&self) -> Result<(String, Vec<(i64, String)>)> {
        let rounds = self.state.history[self.saved_rounds.min(self.state.history.len())..]
            .iter()
            .map(|r| Ok((r.round as i64, serde_json::to_string(r)?)))
            .collect::<Result<_>>()?;
        Ok((state_json(self.state)?, rounds))
    }
}

/// Parses a stored state; an empty `history` (the current format) is filled from the `rounds`
/// records, which must be rounds 1, 2, ... in order.
fn restore_state(state: &str, rounds: Vec<String>) -> Result<CoordinatorState> {
    let mut s: CoordinatorState =
        serde_json::from_str(state).context("parsing stored coordinator state")?;
    if s.history.is_empty() {
        for (i, r) in rounds.iter().enumerate() {
            let rec: fl_core::round::RoundRecord = serde_json::from_str(r)
                .with_context(|| format!("parsing the stored record of round {}", i + 1))?;
            s.history.push(rec);
        }
    }
    Ok(s)
}

/// Round metadata: SQLite (embedded default) or PostgreSQL.
pub enum Meta {
    Sqlite(Mutex<Connection>),
    Postgres(crate::pg::Pg),
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coordinator_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    digest TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
";

impl Meta {
    /// Opens `sqlite://PATH`, a bare path, or `postgres://...`.
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Meta::Postgres(crate::pg::Pg::connect(url).await?));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        let conn =
            Connection::open(path).with_context(|| format!("opening sqlite database {path}"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("sqlite journal_mode")?;
        conn.pragma_update(None, "synchronous", "FULL")
            .context("sqlite synchronous")?;
        conn.execute_batch(SQLITE_SCHEMA)
            .context("creating sqlite schema")?;
        Ok(Meta::Sqlite(Mutex::new(conn)))
    }

    fn sqlite(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self {
            Meta::Sqlite(c) => c.lock().unwrap_or_else(|e| e.into_inner()),
            Meta::Postgres(_) => unreachable!("sqlite() on a postgres store"),
        }
    }

    /// The stored configuration and the round machine's state (its history rebuilt from the
    /// `rounds` table).
    pub async fn load_state(&self) -> Result<Option<(String, CoordinatorState)>> {
        let (stored, rounds) = match self {
            Meta::Postgres(pg) => (pg.load_state().await?, pg.load_rounds().await?),
            Meta::Sqlite(_) => {
                let c = self.sqlite();
                let stored = c
                    .query_row(
                        "SELECT config, state FROM coordinator_state WHERE id = 1",
                        [],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    )
                    .optional()
                    .context("reading coordinator state")?;
                let mut st = c
                    .prepare("SELECT record FROM rounds ORDER BY round")
                    .context("reading round records")?;
                let rounds = st
                    .query_map([], |r| r.get::<_, String>(0))
                    .context("reading round records")?
                    .collect::<Result<Vec<_>, _>>()
                    .context("reading round records")?;
                (stored, rounds)
            }
        };
        match stored {
            Some((config, state)) => Ok(Some((config, restore_state(&state, rounds)?))),
            None => Ok(None),
        }
    }

    /// Stores the machine's state, its newly completed rounds and new models durably, in one
    /// transaction (fsynced on commit).
    pub async fn commit(&self, c: &Commit<'_>) -> Result<()> {
        let (state, rounds) = c.rows()?;
        match self {
            Meta::Postgres(pg) => {
                pg.commit(c.config, &state, &rounds, c.models, c.now_ms)
                    .await
            }
            Meta::Sqlite(_) => blocking(|| {
                let mut conn = self.sqlite();
                let tx = conn
                    .transaction()
                    .context("starting a metadata transaction")?;
                tx.execute(
                    "INSERT INTO coordinator_state (id, config, state, updated_ms) VALUES (1, ?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET config = ?1, state = ?2, updated_ms = ?3",
                    params![c.config, state, c.now_ms as i64],
                )
                .context("saving coordinator state")?;
                for (round, record) in &rounds {
                    tx.execute(
                        "INSERT INTO rounds (round, record) VALUES (?1, ?2) ON CONFLICT(round) DO UPDATE SET record = ?2",
                        params![round, record],
                    )
                    .context("recording round")?;
                }
                for m in c.models {
                    tx.execute(
                        "INSERT OR IGNORE INTO models (digest, round, size_bytes, created_ms) VALUES (?1, ?2, ?3, ?4)",
                        params![m.digest, m.round as i64, m.size_bytes as i64, m.created_ms as i64],
                    )
                    .context("recording model")?;
                }
                tx.commit().context("committing metadata")?;
                Ok(())
            }),
        }
    }

    pub async fn put_model(&self, m: &ModelRow) -> Result<()> {
        match self {
            Meta::Postgres(pg) => pg.put_model(m).await,
            Meta::Sqlite(_) => {
                self.sqlite()
                    .execute(
                        "INSERT OR IGNORE INTO models (digest, round, size_bytes, created_ms) VALUES (?1, ?2, ?3, ?4)",
                        params![m.digest, m.round as i64, m.size_bytes as i64, m.created_ms as i64],
                    )
                    .context("recording model")?;
                Ok(())
            }
        }
    }

    pub async fn list_models(&self) -> Result<Vec<ModelRow>> {
        match self {
            Meta::Postgres(pg) => pg.list_models().await,
            Meta::Sqlite(_) => {
                let c = self.sqlite();
                let mut st = c
                    .prepare("SELECT digest, round, size_bytes, created_ms FROM models ORDER BY round, created_ms, digest")
                    .context("listing models")?;
                let rows = st
                    .query_map([], |r| {
                        Ok(ModelRow {
                            digest: r.get(0)?,
                            round: r.get::<_, i64>(1)? as u64,
                            size_bytes: r.get::<_, i64>(2)? as u64,
                            created_ms: r.get::<_, i64>(3)? as u64,
                        })
                    })
                    .context("listing models")?;
                Ok(rows
                    .collect::<Result<Vec<_>, _>>()
                    .context("listing models")?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Drives a real round machine through `rounds` one-client rounds.
    fn machine(rounds: u64) -> fl_core::round::Coordinator {
        use fl_core::round::{ClientId, Coordinator, Event, RoundConfig, UpdateId};
        let cfg = RoundConfig {
            num_rounds: 10,
            min_fit_clients: 1,
            min_available_clients: 1,
            fraction_evaluate: 0.0,
            ..RoundConfig::default()
        };
        let mut c = Coordinator::new(cfg).unwrap();
        c.on_event(
            0,
            Event::Start {
                global_digest: "g0".into(),
            },
        )
        .unwrap();
        c.on_event(
            1,
            Event::ClientRegistered {
                client: ClientId("w".into()),
            },
        )
        .unwrap();
        for r in 1..=rounds {
            c.on_event(
                10 * r,
                Event::UpdateReceived {
                    client: ClientId("w".into()),
                    round: r,
                    update_id: UpdateId(format!("u{r}")),
                    num_examples: 3,
                    metrics: Default::default(),
                },
            )
            .unwrap();
            c.on_event(
                10 * r + 1,
                Event::AggregationDone {
                    round: r,
                    global_digest: format!("g{r}"),
                    metrics: Default::default(),
                },
            )
            .unwrap();
        }
        assert_eq!(c.history().len() as u64, rounds);
        c
    }

    #[tokio::test]
    async fn sqlite_commits_keep_the_history_in_rounds_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.sqlite").display());
        let row = ModelRow {
            digest: "g1".into(),
            round: 1,
            size_bytes: 10,
            created_ms: 5,
        };
        let (m1, m3) = (machine(1), machine(3));
        {
            let m = Meta::open(&url).await.unwrap();
            assert_eq!(m.load_state().await.unwrap(), None);
            let commit = |state, saved_rounds, models| Commit {
                config: "c",
                state,
                saved_rounds,
                models,
                now_ms: 1,
            };
            m.commit(&commit(m1.state(), 0, std::slice::from_ref(&row)))
                .await
                .unwrap();
            // Rounds 2 and 3 only are written now; the model again is ignored.
            m.commit(&commit(m3.state(), 1, std::slice::from_ref(&row)))
                .await
                .unwrap();
            let stored: String = m
                .sqlite()
                .query_row("SELECT state FROM coordinator_state", [], |r| r.get(0))
                .unwrap();
            assert!(stored.contains("\"history\":[]"), "{stored}");
        }
        let m = Meta::open(&url).await.unwrap();
        let (config, state) = m.load_state().await.unwrap().unwrap();
        assert_eq!(config, "c");
        assert_eq!(&state, m3.state());
        assert_eq!(m.list_models().await.unwrap(), vec![row]);
    }

    #[test]
    fn durable_write_lands_complete_and_tmp_is_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path(), None, &[]).unwrap();
        std::fs::write(b.tmp_path(), b"half").unwrap();
        let b = Blobs::open(dir.path(), None, &[]).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let p = b.update_path(3, "w1", "abc");
        let d = b.write_file(&p, true, |f| f.write_all(b"bytes")).unwrap();
        assert_eq!(d, p.parent().unwrap());
        sync_dir(&d).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bytes");
    }
}

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
//! file under a final name is complete. Metadata commits use SQLite's `synchronous = FULL`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

/// The blob side: paths and durable writes.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// Opens the store without touching `tmp/` (for readers such as `fl export-round`).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// Opens the store for the coordinator: creates the layout and clears `tmp/`.
    pub fn open(root: &Path) -> Result<Self> {
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
        })
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

    /// Writes `bytes` durably at `dest` (tmp, fsync, rename, fsync dir).
    pub fn write_durable(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path();
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        drop(f);
        commit(&tmp, dest)
    }
}

/// Renames a complete, fsynced temporary file into place and fsyncs the directory.
pub fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .context("destination has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::rename(tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))?;
    Ok(())
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

    pub async fn load_state(&self) -> Result<Option<(String, String)>> {
        match self {
            Meta::Postgres(pg) => pg.load_state().await,
            Meta::Sqlite(_) => Ok(self
                .sqlite()
                .query_row(
                    "SELECT config, state FROM coordinator_state WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .context("reading coordinator state")?),
        }
    }

    /// Stores the machine's whole state durably (one transaction, fsynced on commit).
    pub async fn save_state(&self, config: &str, state: &str, now_ms: u64) -> Result<()> {
        match self {
            Meta::Postgres(pg) => pg.save_state(config, state, now_ms).await,
            Meta::Sqlite(_) => {
                self.sqlite()
                    .execute(
                        "INSERT INTO coordinator_state (id, config, state, updated_ms) VALUES (1, ?1, ?2, ?3)
                         ON CONFLICT(id) DO UPDATE SET config = ?1, state = ?2, updated_ms = ?3",
                        params![config, state, now_ms as i64],
                    )
                    .context("saving coordinator state")?;
                Ok(())
            }
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

    pub async fn put_round(&self, round: u64, record: &str) -> Result<()> {
        match self {
            Meta::Postgres(pg) => pg.put_round(round, record).await,
            Meta::Sqlite(_) => {
                self.sqlite()
                    .execute(
                        "INSERT INTO rounds (round, record) VALUES (?1, ?2) ON CONFLICT(round) DO UPDATE SET record = ?2",
                        params![round as i64, record],
                    )
                    .context("recording round")?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_state_models_and_rounds_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.sqlite").display());
        {
            let m = Meta::open(&url).await.unwrap();
            assert_eq!(m.load_state().await.unwrap(), None);
            m.save_state("c1", "s1", 1).await.unwrap();
            m.save_state("c2", "s2", 2).await.unwrap();
            let row = ModelRow {
                digest: "d".into(),
                round: 0,
                size_bytes: 10,
                created_ms: 5,
            };
            m.put_model(&row).await.unwrap();
            m.put_model(&row).await.unwrap();
            m.put_round(1, "{}").await.unwrap();
        }
        let m = Meta::open(&url).await.unwrap();
        assert_eq!(
            m.load_state().await.unwrap(),
            Some(("c2".into(), "s2".into()))
        );
        assert_eq!(m.list_models().await.unwrap().len(), 1);
    }

    #[test]
    fn durable_write_lands_complete_and_tmp_is_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        std::fs::write(b.tmp_path(), b"half").unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let p = b.update_path(3, "w1", "abc");
        b.write_durable(&p, b"bytes").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bytes");
    }
}

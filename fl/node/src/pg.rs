//! Round metadata in PostgreSQL (`--database postgres://...`): the same three tables as the
//! SQLite store. A commit returns after the WAL is flushed (PostgreSQL's default
//! `synchronous_commit = on`), so an acknowledged upload's state is durable.

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::store::ModelRow;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coordinator_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    digest TEXT PRIMARY KEY,
    round BIGINT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round BIGINT PRIMARY KEY,
    record TEXT NOT NULL
);
";

pub struct Pg {
    client: Client,
}

impl Pg {
    pub async fn connect(url: &str) -> Result<Self> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::error!("postgres connection: {e}");
            }
        });
        client
            .batch_execute(SCHEMA)
            .await
            .context("creating the postgres schema")?;
        Ok(Self { client })
    }

    pub async fn load_state(&self) -> Result<Option<(String, String)>> {
        let row = self
            .client
            .query_opt(
                "SELECT config, state FROM coordinator_state WHERE id = 1",
                &[],
            )
            .await
            .context("reading coordinator state")?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn load_rounds(&self) -> Result<Vec<String>> {
        let rows = self
            .client
            .query("SELECT record FROM rounds ORDER BY round", &[])
            .await
            .context("reading round records")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One transaction: the state, the new round records and the new models (see
    /// `store::Commit`). Every statement runs on this one connection, between BEGIN and COMMIT.
    pub async fn commit(
        &self,
        config: &str,
        state: &str,
        rounds: &[(i64, String)],
        models: &[ModelRow],
        now_ms: u64,
    ) -> Result<()> {
        self.client
            .batch_execute("BEGIN")
            .await
            .context("starting a metadata transaction")?;
        let r = async {
            self.client
                .execute(
                    "INSERT INTO coordinator_state (id, config, state, updated_ms) VALUES (1, $1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET config = EXCLUDED.config, state = EXCLUDED.state,
                     updated_ms = EXCLUDED.updated_ms",
                    &[&config, &state, &(now_ms as i64)],
                )
                .await
                .context("saving coordinator state")?;
            for (round, record) in rounds {
                self.client
                    .execute(
                        "INSERT INTO rounds (round, record) VALUES ($1, $2)
                         ON CONFLICT (round) DO UPDATE SET record = EXCLUDED.record",
                        &[round, record],
                    )
                    .await
                    .context("recording round")?;
            }
            for m in models {
                self.put_model(m).await?;
            }
            self.client
                .batch_execute("COMMIT")
                .await
                .context("committing metadata")
        }
        .await;
        if r.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        r
    }

    pub async fn put_model(&self, m: &ModelRow) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO models (digest, round, size_bytes, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO NOTHING",
                &[
                    &m.digest,
                    &(m.round as i64),
                    &(m.size_bytes as i64),
                    &(m.created_ms as i64),
                ],
            )
            .await
            .context("recording model")?;
        Ok(())
    }

    pub async fn list_models(&self) -> Result<Vec<ModelRow>> {
        let rows = self
            .client
            .query("SELECT digest, round, size_bytes, created_ms FROM models ORDER BY round, created_ms, digest", &[])
            .await
            .context("listing models")?;
        Ok(rows
            .iter()
            .map(|r| ModelRow {
                digest: r.get(0),
                round: r.get::<_, i64>(1) as u64,
                size_bytes: r.get::<_, i64>(2) as u64,
                created_ms: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }
}

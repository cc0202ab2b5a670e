//! HTTP event ingest: `POST /api/events/{source}` writes JSON events into the table a
//! configured source maps them to, for senders that can only call webhooks (Shopify's
//! order webhooks, a browser's `trackEvent`). The rows are ordinary writes to the
//! table, so the KPIs over it count them like any other.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | `[ingest]`: sources, their column mappings and limits, checked at load |
//! | [`schema`] | a source's table as the database has it: columns, types, what must be mapped |
//! | [`mapping`] | one JSON event → one COPY text row, and why an event cannot be one |
//! | [`batch`] | a body → events → one COPY in one transaction; database refusals located |
//! | [`error`] | the refusals as JSON errors with the event's `index` and `field` |
//!
//! Requests hold a connection from a pool of their own (not the API's shared query
//! connection): a transaction needs a connection to itself.

pub mod batch;
pub mod config;
pub mod error;
pub mod mapping;
pub mod schema;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::ApiError;
use crate::Config;
use config::SourceConfig;
use error::IngestError;
use schema::{ResolveError, Target};

/// `application_name` of the ingest connections.
pub const INGEST_APP_NAME: &str = "pg_kpi_notifier_ingest";

/// The configured sources and the connections they write through.
pub struct Ingest {
    sources: Vec<Source>,
    pool: Pool,
}

struct Source {
    config: SourceConfig,
    /// Resolved on first use (or by the start-up check), again after the table changed.
    target: Mutex<Option<Arc<Target>>>,
}

impl Source {
    fn key(&self, index: usize) -> String {
        format!("ingest.sources[{index}] ({:?})", self.config.name)
    }
}

impl Ingest {
    pub fn new(config: &Config) -> Result<Ingest, String> {
        let pg = crate::db::pg_config(config, INGEST_APP_NAME)?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                // Checks the connection is open, without a round trip.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.ingest.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(
                config.ingest.acquire_timeout_ms,
            )))
            .create_timeout(Some(Duration::from_millis(
                config.database.connect_timeout_ms,
            )))
            .build()
            .map_err(|e| format!("ingest connection pool: {e}"))?;
        let sources = config
            .ingest
            .sources
            .iter()
            .map(|s| Source {
                config: s.clone(),
                target: Mutex::new(None),
            })
            .collect();
        Ok(Ingest { sources, pool })
    }

    /// The source named `name`: its index and its config.
    pub fn source(&self, name: &str) -> Option<(usize, &SourceConfig)> {
        self.sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.config.name == name)
            .map(|(i, s)| (i, &s.config))
    }

    /// Converts and writes one request's body for source `index`; returns the number
    /// of events written. Nothing is written unless every event is.
    pub async fn ingest(&self, index: usize, body: &[u8]) -> Result<u64, IngestError> {
        let source = &self.sources[index];
        let events = batch::parse(body, source.config.max_events)?;
        let mut client = self.client().await?;
        let target = self.target(index, &client).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let rows = batch::encode(&target, &events)?;
        let e = match batch::write(&mut client, &target, &rows).await {
            Ok(n) => return Ok(n),
            Err(e) => e,
        };
        if batch::schema_changed(&e) {
            // Resolve again next time: the change may be undone by then, or be named
            // precisely by the check.
            client.statement_cache.clear();
            *lock(&source.target) = None;
            return Err(batch::refusal(e, None, &target));
        }
        if batch::refused_row(&e) && !batch::located(&e) {
            if let Some((index, e, column)) = batch::locate(&mut client, &target, &rows).await {
                return Err(batch::refusal(e, Some((index, column)), &target));
            }
        }
        Err(batch::refusal(e, None, &target))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, IngestError> {
        self.pool.get().await.map_err(|e| {
            IngestError::Api(match e {
                PoolError::Backend(e) => ApiError::from_db(e),
                PoolError::Timeout(_) => ApiError::DatabaseUnavailable(
                    "no ingest connection became free in time (ingest.max_connections)".into(),
                ),
                other => ApiError::DatabaseUnavailable(format!("ingest connection: {other}")),
            })
        })
    }

    async fn target(
        &self,
        index: usize,
        client: &tokio_postgres::Client,
    ) -> Result<Arc<Target>, IngestError> {
        let source = &self.sources[index];
        if let Some(t) = lock(&source.target).as_ref() {
            return Ok(t.clone());
        }
        match schema::resolve(client, &source.key(index), &source.config).await {
            Ok(t) => {
                let t = Arc::new(t);
                *lock(&source.target) = Some(t.clone());
                Ok(t)
            }
            Err(ResolveError::Mismatch(m)) => Err(IngestError::Misconfigured(m)),
            Err(ResolveError::Database(e)) => Err(ApiError::from_db(e).into()),
        }
    }

    /// Checks every source against the database once it can be reached, logging the
    /// result: a mapping that does not fit its table is an error in the log at start-up,
    /// not only in the first sender's response.
    pub async fn check_all(self: Arc<Self>) {
        if self.sources.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(200);
        for index in 0..self.sources.len() {
            let source = &self.sources[index];
            loop {
                let client = match self.pool.get().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "ingest check: database not reachable yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                match self.target(index, &client).await {
                    Ok(t) => tracing::info!(
                        source = %source.config.name,
                        table = %t.table,
                        columns = t.columns.len(),
                        "ingest source ready"
                    ),
                    Err(IngestError::Misconfigured(m)) => {
                        tracing::error!("ingest source {:?} cannot write: {m}", source.config.name)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ingest check failed; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
                break;
            }
        }
    }
}

/// The lock around a resolved target; a panic while holding it cannot leave a
/// half-written `Option`, so a poisoned lock is used as it is.
fn lock(m: &Mutex<Option<Arc<Target>>>) -> std::sync::MutexGuard<'_, Option<Arc<Target>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! Pull sources: copying a table from a database where pg_kpi cannot be installed (an
//! ERP, a vendor's database) into a local table that KPIs watch (see `docs/pull.md`).
//!
//! Each `[[pull]]` job polls its remote table past a watermark of (time column, key),
//! in batches, and upserts the rows into the local target with the watermark in the
//! same local transaction. A look-back window re-read at every poll catches rows whose
//! transaction committed late, and the upsert by primary key (skipping rows that did not
//! change) makes that overlap free for the KPIs. Run by `notifier pull`, or alongside
//! `notifier serve` when its config has `[[pull]]` sections.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | a job's settings and their checks |
//! | [`plan`] | both tables resolved, and the SQL each job runs |
//! | [`job`] | the poll loop: batches, look-back, `updated_at`, rate limit, backoff |
//! | [`watermark`] | `kpi_pull.watermarks`, written with the rows |
//! | [`metrics`] | `kpi_notifier_pull_*` |
//! | [`error`] | error kinds (the metric's label) and messages |

pub mod config;
pub mod error;
pub mod job;
pub mod metrics;
pub mod plan;
pub mod watermark;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Resolves the local side of every job: the target tables must exist with the key as
/// primary key. An `Err` is a configuration mistake (`notifier pull` exits with 2).
pub async fn prepare(
    config: &Config,
    metrics: &Arc<metrics::PullMetrics>,
) -> Result<Vec<job::Job>, String> {
    if config.pull.is_empty() {
        return Ok(Vec::new());
    }
    let mut local_pg = crate::db::pg_config(config, job::PULL_APP_NAME)?;
    // The copied values are text; parse them as the remote (UTC) rendered them.
    let options = format!("{} -c TimeZone=UTC", local_pg.get_options().unwrap_or(""));
    local_pg.options(options.trim());
    let (local, connection) = local_pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("pull: local database: {}", error::describe(&e)))?;
    let conn = tokio::spawn(connection);
    let result = async {
        watermark::ensure_table(&local).await.map_err(|e| {
            format!(
                "pull: creating kpi_pull.watermarks: {}",
                error::describe(&e)
            )
        })?;
        let mut jobs = Vec::new();
        for (i, cfg) in config.pull.iter().enumerate() {
            let local_plan = plan::LocalPlan::resolve(cfg, &local)
                .await
                .map_err(|m| format!("pull[{i}] ({}): {m}", cfg.name))?;
            jobs.push(job::Job {
                metrics: metrics.job(&cfg.name),
                cfg: cfg.clone(),
                local_plan,
                local_pg: local_pg.clone(),
            });
        }
        Ok(jobs)
    }
    .await;
    drop(local);
    conn.abort();
    result
}

/// Runs the jobs until `shutdown`.
pub async fn run(jobs: Vec<job::Job>, shutdown: Shutdown) {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|j| tokio::spawn(j.run(shutdown.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Why `notifier pull` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A configuration mistake (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("pull: {0}")]
    Io(#[from] std::io::Error),
}

/// `notifier pull`: the config's `[[pull]]` jobs, with `GET /metrics` (and `/healthz`)
/// on `listen`, until `shutdown` resolves.
pub async fn command(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CommandError> {
    if config.pull.is_empty() {
        return Err(CommandError::Config(
            "notifier pull: the config has no [[pull]] job (see docs/pull.md)".into(),
        ));
    }
    let metrics = Arc::new(metrics::PullMetrics::default());
    let jobs = prepare(&config, &metrics)
        .await
        .map_err(CommandError::Config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, jobs = jobs.len(), "notifier pull started");
    let (trigger, flag) = crate::shutdown::channel();
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    let mut out = String::new();
                    m.render(&mut out);
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        )],
                        out,
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let mut graceful = flag.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { graceful.wait().await })
            .await
    });
    let runner = tokio::spawn(run(jobs, flag));
    shutdown.await;
    trigger.fire();
    let _ = runner.await;
    let _ = server.await;
    tracing::info!("notifier pull stopped");
    Ok(())
}

//! Database connections: connection settings shared by the LISTEN task and the API, and
//! the API's lazily (re)connected query connection.
//!
//! The API uses one pipelined connection rather than a pool: tokio-postgres sends
//! concurrent queries on one connection back to back, the API's queries are small, and
//! the notifier should not hold many of the database's connection slots.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::error::ApiError;

/// `application_name` of the LISTEN connection (find it in `pg_stat_activity`).
pub const LISTEN_APP_NAME: &str = "pg_kpi_notifier_listen";
/// `application_name` of the API's query connection.
pub const API_APP_NAME: &str = "pg_kpi_notifier_api";
/// `application_name` of the connection that watches `kpi.status()` (and folds when
/// the fold stalls).
pub const FOLD_WATCH_APP_NAME: &str = "pg_kpi_notifier_fold_watch";
/// `application_name` of the connection that follows alert transitions (the `alerts`
/// topic).
pub const ALERT_FEED_APP_NAME: &str = "pg_kpi_notifier_alert_feed";

/// The libpq settings for every connection the notifier opens; `app_name` is used
/// unless the URL sets one.
pub fn pg_config(config: &Config, app_name: &str) -> Result<tokio_postgres::Config, String> {
    let mut pg: tokio_postgres::Config = config
        .database_url
        .expose()
        .parse()
        .map_err(|e| format!("database_url: {e}"))?;
    if pg.get_application_name().is_none() {
        pg.application_name(app_name);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_millis(config.database.connect_timeout_ms));
    }
    // TCP keepalives notice a peer that vanished without closing (network partition,
    // killed VM) long before the OS default of two hours.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    // Append, so options from the URL survive.
    let timeout = format!(
        "-c statement_timeout={}",
        config.database.statement_timeout_ms
    );
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {timeout}"),
        _ => timeout,
    };
    pg.options(&options);
    Ok(pg)
}

/// The API's shared query connection, opened on first use and reopened after a drop.
pub struct ApiDb {
    pg: tokio_postgres::Config,
    client: Mutex<Option<Arc<Client>>>,
}

impl ApiDb {
    pub fn new(pg: tokio_postgres::Config) -> ApiDb {
        ApiDb {
            pg,
            client: Mutex::new(None),
        }
    }

    /// A live client, connecting if needed.
    pub async fn client(&self) -> Result<Arc<Client>, ApiError> {
        // Held across the connect so concurrent requests after a drop share one attempt.
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let (client, connection) = self
            .pg
            .connect(NoTls)
            .await
            .map_err(|e| ApiError::DatabaseUnavailable(format!("connect: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API database connection closed");
            }
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_added_without_losing_the_url_options() {
        let c = Config {
            database_url: crate::config::Secret(
                "postgresql://u@h/db?options=-c%20search_path%3Dx".into(),
            ),
            ..Config::default()
        };
        let pg = pg_config(&c, API_APP_NAME).unwrap();
        assert_eq!(pg.get_application_name(), Some(API_APP_NAME));
        let o = pg.get_options().unwrap();
        assert!(
            o.contains("search_path=x") && o.contains("statement_timeout=10000"),
            "{o}"
        );
    }
}

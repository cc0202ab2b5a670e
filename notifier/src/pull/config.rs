//! `[[pull]]`: one job per remote table copied into a local table (see `docs/pull.md`).
//!
//! What can be checked without a database is checked at load. The local target is
//! checked when the jobs start (a mistake there is a startup error); the remote table
//! and its columns are resolved each time a job connects, and a mismatch there is
//! logged, counted and retried, since the remote may be fixed without restarting us.

use serde::{Deserialize, Serialize};

use crate::config::{valid_kpi_name, Secret};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PullJob {
    /// Names the job in logs, metrics and `kpi_pull.watermarks`.
    pub name: String,
    /// Connection string or URL of the remote database. It is only read from: every
    /// session is `default_transaction_read_only`.
    pub remote_url: Secret,
    /// The remote table (or view), schema-qualified or on the remote's search path.
    pub remote_table: String,
    /// The columns copied, named the same in both tables; empty = every column of the
    /// local target table.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The watermark's time column (timestamptz, timestamp or date). Rows whose time is
    /// NULL are not copied.
    pub time_column: String,
    /// The key breaking ties within one timestamp: the local table's primary key.
    pub key_columns: Vec<String>,
    /// When set, a second watermark on (updated_at, key) copies rows updated remotely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_column: Option<String>,
    /// The local table the KPIs watch: it must exist, with `key_columns` as its
    /// primary key.
    pub target_table: String,
    /// Rows per remote query (and per local transaction).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// At most this many rows read from the remote per second; 0 = no limit.
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Wait this long between polls once caught up (milliseconds).
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Each poll re-reads the rows this far behind the watermark, which catches a
    /// transaction that commits after a later one with an older time (milliseconds).
    /// Costs about (rows per second × look-back) rows read per poll.
    #[serde(default = "defaults::look_back_ms")]
    pub look_back_ms: u64,
    /// Re-read the look-back window at most this often (milliseconds; at most every
    /// poll). A row committing up to `look_back_ms - look_back_interval_ms` (minus a
    /// poll) late is caught; a longer interval reads the remote less.
    #[serde(default = "defaults::look_back_interval_ms")]
    pub look_back_interval_ms: u64,
    /// First delay after an error; it doubles up to `retry_max_ms` (milliseconds).
    #[serde(default = "defaults::retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// `statement_timeout` of the remote queries (milliseconds).
    #[serde(default = "defaults::statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

mod defaults {
    pub fn batch_size() -> usize {
        1_000
    }
    pub fn poll_interval_ms() -> u64 {
        1_000
    }
    pub fn look_back_ms() -> u64 {
        10_000
    }
    pub fn look_back_interval_ms() -> u64 {
        1_000
    }
    pub fn retry_min_ms() -> u64 {
        200
    }
    pub fn retry_max_ms() -> u64 {
        30_000
    }
    pub fn statement_timeout_ms() -> u64 {
        30_000
    }
}

/// Checks every job; the message names the key (`pull[0].columns: …`).
pub fn validate(jobs: &[PullJob]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, j) in jobs.iter().enumerate() {
        let at = |key: &str, m: String| Err(format!("pull[{i}].{key}: {m}"));
        if !valid_kpi_name(&j.name) {
            return at(
                "name",
                format!("{:?} is not a name ([a-z_][a-z0-9_]*)", j.name),
            );
        }
        if !names.insert(&j.name) {
            return at("name", format!("{:?} is used by two jobs", j.name));
        }
        if let Err(e) = j.remote_url.expose().parse::<tokio_postgres::Config>() {
            return at("remote_url", e.to_string());
        }
        if j.remote_table.trim().is_empty() || j.target_table.trim().is_empty() {
            return at(
                "remote_table",
                "remote_table and target_table are required".into(),
            );
        }
        if j.key_columns.is_empty() {
            return at("key_columns", "at least one key column is needed".into());
        }
        if !j.columns.is_empty() {
            let ordering = std::iter::once(&j.time_column)
                .chain(&j.key_columns)
                .chain(&j.updated_at_column);
            for c in ordering {
                if !j.columns.contains(c) {
                    return at(
                        "columns",
                        format!("{c:?} is a watermark column and must be copied"),
                    );
                }
            }
        }
        if j.batch_size == 0 || j.batch_size > 100_000 {
            return at("batch_size", "must be 1 to 100000".into());
        }
        if j.retry_min_ms == 0 || j.retry_max_ms < j.retry_min_ms {
            return at(
                "retry_min_ms",
                "need 0 < retry_min_ms <= retry_max_ms".into(),
            );
        }
        if j.look_back_ms > 0 && j.look_back_interval_ms >= j.look_back_ms {
            return at(
                "look_back_interval_ms",
                format!(
                    "must be less than look_back_ms ({}), or no late row is ever caught",
                    j.look_back_ms
                ),
            );
        }
        if j.poll_interval_ms == 0 || j.statement_timeout_ms == 0 {
            return at(
                "poll_interval_ms",
                "poll_interval_ms and statement_timeout_ms must be > 0".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job() -> PullJob {
        toml::from_str(
            r#"name = "orders"
            remote_url = "host=127.0.0.1 user=erp"
            remote_table = "public.orders"
            time_column = "created_at"
            key_columns = ["id"]
            target_table = "orders""#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_mistakes() {
        let j = job();
        assert_eq!(j.batch_size, 1_000);
        assert!(validate(std::slice::from_ref(&j)).is_ok());
        let e = validate(&[j.clone(), j.clone()]).unwrap_err();
        assert!(e.contains("used by two jobs"), "{e}");
        let mut bad = j.clone();
        bad.columns = vec!["id".into()];
        let e = validate(&[bad]).unwrap_err();
        assert!(
            e.starts_with("pull[0].columns") && e.contains("created_at"),
            "{e}"
        );
        let mut bad = j.clone();
        bad.batch_size = 0;
        assert!(validate(&[bad]).unwrap_err().contains("batch_size"));
        let mut bad = j.clone();
        bad.look_back_interval_ms = bad.look_back_ms;
        assert!(validate(&[bad])
            .unwrap_err()
            .contains("look_back_interval_ms"));
        let mut bad = j;
        bad.key_columns.clear();
        assert!(validate(&[bad]).unwrap_err().contains("key_columns"));
    }
}

//! `kpi_pull.watermarks`: where each job has got to, stored in the local database and
//! written in the same transaction as the rows it covers, so a crash, a lost remote or
//! a failed commit never leaves rows without their watermark or the reverse.

use tokio_postgres::{Client, GenericClient};

use super::plan::Mark;

/// Creates the schema and table when missing (once, before the jobs start: two
/// concurrent `CREATE … IF NOT EXISTS` can still collide).
pub async fn ensure_table(local: &Client) -> Result<(), tokio_postgres::Error> {
    // Looked up first: `IF NOT EXISTS` alone would log two notices at every start.
    let exists: bool = local
        .query_one("SELECT to_regclass('kpi_pull.watermarks') IS NOT NULL", &[])
        .await?
        .get(0);
    if exists {
        return Ok(());
    }
    local
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS kpi_pull;
             CREATE TABLE IF NOT EXISTS kpi_pull.watermarks (
                 job text PRIMARY KEY,
                 -- the time-column cursor: the last row's time and key, as text
                 t text,
                 key text[],
                 t_epoch float8,
                 -- the updated_at cursor
                 u text,
                 u_key text[],
                 u_epoch float8,
                 updated timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
}

/// Both cursors of a job; `None` = not started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watermarks {
    pub t: Option<Mark>,
    pub u: Option<Mark>,
}

fn mark(t: Option<String>, key: Option<Vec<String>>, epoch: Option<f64>) -> Option<Mark> {
    Some(Mark {
        t: t?,
        key: key?,
        epoch: epoch.unwrap_or(0.0),
    })
}

pub async fn load(
    local: &impl GenericClient,
    job: &str,
) -> Result<Watermarks, tokio_postgres::Error> {
    let row = local
        .query_opt(
            "SELECT t, key, t_epoch, u, u_key, u_epoch FROM kpi_pull.watermarks WHERE job = $1",
            &[&job],
        )
        .await?;
    Ok(match row {
        None => Watermarks::default(),
        Some(r) => Watermarks {
            t: mark(r.get(0), r.get(1), r.get(2)),
            u: mark(r.get(3), r.get(4), r.get(5)),
        },
    })
}

/// Stores the time cursor (`updated = false`) or the updated_at cursor.
pub async fn store(
    local: &impl GenericClient,
    job: &str,
    updated: bool,
    m: &Mark,
) -> Result<(), tokio_postgres::Error> {
    let sql = if updated {
        "INSERT INTO kpi_pull.watermarks AS w (job, u, u_key, u_epoch) VALUES ($1, $2, $3, $4)
         ON CONFLICT (job) DO UPDATE SET u = EXCLUDED.u, u_key = EXCLUDED.u_key,
             u_epoch = EXCLUDED.u_epoch, updated = now()"
    } else {
        "INSERT INTO kpi_pull.watermarks AS w (job, t, key, t_epoch) VALUES ($1, $2, $3, $4)
         ON CONFLICT (job) DO UPDATE SET t = EXCLUDED.t, key = EXCLUDED.key,
             t_epoch = EXCLUDED.t_epoch, updated = now()"
    };
    local
        .execute(sql, &[&job, &m.t, &m.key, &m.epoch])
        .await
        .map(|_| ())
}

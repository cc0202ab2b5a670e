//! A job resolved against both databases: the local target's columns, types and
//! primary key (at start), the remote columns' types (at each connect), and the SQL of
//! every query the job runs.
//!
//! Values travel as text: the remote renders each column with its output function
//! (`col::text`, in a session with `TimeZone=UTC` and `DateStyle=ISO`) and the local
//! side casts it back with the target column's type, so any type with a lossless text
//! form (all built-in ones, enums, arrays) copies without a per-type codec here.

use tokio_postgres::Client;

use super::config::PullJob;
use super::error::PullError;

/// Quotes a possibly schema-qualified name, part by part.
pub fn quote_path(name: &str) -> String {
    name.split('.').map(quote).collect::<Vec<_>>().join(".")
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A position past which a cursor reads: the ordering columns' values as text, and the
/// time as Unix seconds (for the lag).
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub t: String,
    pub key: Vec<String>,
    pub epoch: f64,
}

/// What the local side needs: checked once at start.
#[derive(Debug, Clone)]
pub struct LocalPlan {
    /// The copied columns, in the order of the remote select list.
    pub columns: Vec<String>,
    /// `INSERT … SELECT FROM unnest($1::text[], …) ON CONFLICT (pk) DO UPDATE … WHERE
    /// (…) IS DISTINCT FROM (…)`. A re-read row that did not change is not updated: every
    /// UPDATE of a table with KPIs costs the fold a −1/+1 delta pair, so the look-back's
    /// overlap must not touch rows it already has.
    pub upsert: String,
}

/// The local table `name`'s columns (attnum order, generated ones left out): name and
/// `format_type`.
async fn local_columns(c: &Client, rel: &str) -> Result<Vec<(String, String)>, String> {
    let rows = c
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
             AND attgenerated = '' ORDER BY attnum",
            &[&rel],
        )
        .await
        .map_err(|e| super::error::describe(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

impl LocalPlan {
    /// Checks the local target table and builds the upsert; the message says what to
    /// fix.
    pub async fn resolve(job: &PullJob, local: &Client) -> Result<LocalPlan, String> {
        let t = &job.target_table;
        let rel: Option<String> = local
            .query_one("SELECT to_regclass($1)::text", &[t])
            .await
            .map_err(|e| super::error::describe(&e))?
            .get(0);
        let Some(rel) = rel else {
            return Err(format!(
                "target_table {t:?} does not exist in the local database; create it (with \
                 primary key ({})) before starting the pull",
                job.key_columns.join(", ")
            ));
        };
        let pk: Vec<String> = local
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
                &[&rel],
            )
            .await
            .map_err(|e| super::error::describe(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (mut have, mut want) = (pk.clone(), job.key_columns.clone());
        have.sort();
        want.sort();
        if pk.is_empty() {
            return Err(format!(
                "target_table {rel} has no primary key; the pull upserts by primary key: \
                 ALTER TABLE {rel} ADD PRIMARY KEY ({})",
                job.key_columns.join(", ")
            ));
        }
        if have != want {
            return Err(format!(
                "target_table {rel} has the primary key ({}), but key_columns is ({}); they \
                 must be the same columns",
                pk.join(", "),
                job.key_columns.join(", ")
            ));
        }
        let all = local_columns(local, &rel).await?;
        let columns = if job.columns.is_empty() {
            all.iter().map(|(n, _)| n.clone()).collect()
        } else {
            job.columns.clone()
        };
        let mut types = Vec::new();
        for c in &columns {
            match all.iter().find(|(n, _)| n == c) {
                Some((_, ty)) => types.push(ty.clone()),
                None => return Err(format!("target_table {rel} has no column {c:?}")),
            }
        }
        for c in std::iter::once(&job.time_column).chain(&job.updated_at_column) {
            if !columns.contains(c) {
                return Err(format!("target_table {rel} has no column {c:?}"));
            }
        }
        let cols = columns.iter().map(|c| quote(c)).collect::<Vec<_>>();
        let casts = types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("s.c{i}::{ty}"))
            .collect::<Vec<_>>();
        let arrays = (1..=cols.len())
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>();
        let aliases = (0..cols.len()).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let non_key: Vec<&String> = columns
            .iter()
            .filter(|c| !job.key_columns.contains(c))
            .collect();
        let conflict = if non_key.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let set = non_key
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let old = non_key
                .iter()
                .map(|c| format!("t.{}", quote(c)))
                .collect::<Vec<_>>();
            let new = non_key
                .iter()
                .map(|c| format!("EXCLUDED.{}", quote(c)))
                .collect::<Vec<_>>();
            // ROW(…): with one column, `(a) IS DISTINCT FROM (b)` is a scalar compare,
            // which is what we want too; ROW keeps both cases one form.
            format!(
                "DO UPDATE SET {set} WHERE ROW({}) IS DISTINCT FROM ROW({})",
                old.join(", "),
                new.join(", ")
            )
        };
        let upsert = format!(
            "INSERT INTO {rel} AS t ({cols}) SELECT {casts} FROM unnest({arrays}) AS s({aliases}) \
             ON CONFLICT ({pk}) {conflict}",
            cols = cols.join(", "),
            casts = casts.join(", "),
            arrays = arrays.join(", "),
            aliases = aliases.join(", "),
            pk = job
                .key_columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
        );
        Ok(LocalPlan { columns, upsert })
    }
}

/// One cursor over the remote table: by (time, key) or by (updated_at, key).
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The ordering columns' positions in the select list: the cursor column first.
    pub positions: Vec<usize>,
    /// `"c", "k1", …`
    order: String,
    /// The same, each `DESC`.
    order_desc: String,
    /// `$N::text::type, …` with `{}` for N, one per ordering column.
    types: Vec<String>,
    column: String,
}

/// The remote side: resolved at each connect.
#[derive(Debug, Clone)]
pub struct RemotePlan {
    select: String,
    pub time: Cursor,
    pub updated: Option<Cursor>,
}

impl RemotePlan {
    pub async fn resolve(
        job: &PullJob,
        local: &LocalPlan,
        remote: &Client,
    ) -> Result<RemotePlan, PullError> {
        let t = &job.remote_table;
        let rel: Option<String> = remote
            .query_one("SELECT to_regclass($1)::text", &[t])
            .await
            .map_err(|e| PullError::remote(&e))?
            .get(0);
        let Some(rel) = rel else {
            return Err(PullError::new(
                "remote_schema",
                format!("remote_table {t:?} does not exist in the remote database"),
            ));
        };
        let mut types = Vec::new();
        let mut missing = Vec::new();
        for c in &local.columns {
            let row = remote
                .query_opt(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = $1::text::regclass AND attname = $2 AND attnum > 0 \
                     AND NOT attisdropped",
                    &[&rel, c],
                )
                .await
                .map_err(|e| PullError::remote(&e))?;
            match row {
                Some(r) => types.push(r.get::<_, String>(0)),
                None => missing.push(c.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(PullError::new(
                "remote_schema",
                format!(
                    "remote table {rel} has no column {}; nothing is copied until it has",
                    missing
                        .iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let pos = |c: &str| local.columns.iter().position(|x| x == c).unwrap_or(0);
        for c in std::iter::once(&job.time_column).chain(&job.updated_at_column) {
            let ty = &types[pos(c)];
            if !matches!(
                ty.as_str(),
                "timestamp with time zone" | "timestamp without time zone" | "date"
            ) {
                return Err(PullError::new(
                    "remote_schema",
                    format!(
                        "remote column {c:?} of {rel} is {ty}, not a timestamptz, timestamp or date"
                    ),
                ));
            }
        }
        let cursor = |col: &str| {
            let ord: Vec<&str> = std::iter::once(col)
                .chain(job.key_columns.iter().map(String::as_str))
                .collect();
            Cursor {
                positions: ord.iter().map(|c| pos(c)).collect(),
                order: ord.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
                order_desc: ord
                    .iter()
                    .map(|c| format!("{} DESC", quote(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                types: ord.iter().map(|c| types[pos(c)].clone()).collect(),
                column: quote(col),
            }
        };
        let time = cursor(&job.time_column);
        let updated = job.updated_at_column.as_deref().map(cursor);
        // Aliased: a bare `ORDER BY "id"` would otherwise sort by the output column
        // `"id"::text`, as text ('100' < '98').
        let select = local
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}::text AS _pull_c{i}", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(RemotePlan {
            select: format!(
                "SELECT {select}, extract(epoch FROM {{col}})::float8 AS _pull_epoch FROM {rel}"
            ),
            time,
            updated,
        })
    }

    /// The query reading the newest row on `cursor`.
    pub fn newest(&self, cursor: &Cursor) -> String {
        format!(
            "{} WHERE {} IS NOT NULL ORDER BY {} LIMIT 1",
            self.select.replace("{col}", &cursor.column),
            cursor.column,
            cursor.order_desc
        )
    }

    /// The query reading one batch of `cursor`: rows past `after` (exclusive), up to
    /// `upto` (inclusive), with the cursor column at least `since - look_back`; each
    /// bound optional. Returns the SQL and its text parameters; `$1` is the limit.
    pub fn batch(
        &self,
        cursor: &Cursor,
        limit: usize,
        after: Option<&Mark>,
        upto: Option<&Mark>,
        since: Option<(&Mark, u64)>,
    ) -> (String, Vec<String>) {
        let mut params = vec![limit.to_string()];
        let mut conds = vec![format!("{} IS NOT NULL", cursor.column)];
        let row = |m: &Mark, params: &mut Vec<String>| {
            let vals: Vec<String> = std::iter::once(&m.t)
                .chain(&m.key)
                .zip(&cursor.types)
                .map(|(v, ty)| {
                    params.push(v.clone());
                    format!("${}::text::{ty}", params.len())
                })
                .collect();
            vals.join(", ")
        };
        if let Some(m) = after {
            let r = row(m, &mut params);
            conds.push(format!("({}) > ({r})", cursor.order));
        }
        if let Some(m) = upto {
            let r = row(m, &mut params);
            conds.push(format!("({}) <= ({r})", cursor.order));
        }
        if let Some((m, ms)) = since {
            params.push(m.t.clone());
            params.push(format!("{ms} milliseconds"));
            conds.push(format!(
                "{} >= ${}::text::{} - ${}::text::interval",
                cursor.column,
                params.len() - 1,
                cursor.types[0],
                params.len()
            ));
        }
        let sql = format!(
            "{} WHERE {} ORDER BY {} LIMIT $1::text::bigint",
            self.select.replace("{col}", &cursor.column),
            conds.join(" AND "),
            cursor.order
        );
        (sql, params)
    }
}

//! The objects behind each KPI, generated from its definition:
//!
//! - `kpi._agg_<id>`: folded state per bucket and dimension values;
//! - `kpi._state_<id>`: that state plus the not-yet-folded deltas, decoded (exact);
//! - `kpi._agg_<id>_r<t>` and `kpi._state_<id>_r<t>`: the same for tier `t` (rollups,
//!   and the dimensionless totals tiers, whose rows sum over all dimension values);
//! - `kpi.<name>`: the user's view, finalized values per bucket and dimensions.
//!
//! Only normalized SQL deparsed by Postgres (see `expr`) and quoted identifiers are
//! put into these statements.

use crate::catalog::Kpi;
use crate::measures::Kind;

/// `CREATE TABLE` and index of the aggregate table; `lz4`: whether the server supports
/// lz4 TOAST compression.
pub fn create_agg_table(k: &Kpi, t: usize, lz4: bool) -> String {
    let mut cols = vec!["bucket timestamptz NOT NULL".to_string()];
    for (d, ty) in k.tier_dim_cols(t).iter().zip(&k.dimension_types) {
        cols.push(format!("{d} {ty}"));
    }
    cols.push("_n bigint NOT NULL".into());
    for (i, m) in k.measures.iter().enumerate() {
        for (c, t) in m.state_columns(i) {
            // Sums and counts start at zero; min/max and sketches are NULL when empty.
            let zeroed =
                t == "bigint" || (t == "numeric" && matches!(m.kind, Kind::Sum | Kind::Avg));
            let default = if zeroed { " NOT NULL DEFAULT 0" } else { "" };
            cols.push(format!("{c} {t}{default}"));
        }
    }
    for (i, m) in k.measures.iter().enumerate() {
        if let Some((c, ty, expr)) = m.cached_column(i) {
            cols.push(format!("{c} {ty} GENERATED ALWAYS AS ({expr}) STORED"));
        }
    }
    // Sketches are compressed with lz4 where the server has it: a dense HLL is 12 KB of
    // near-random bits that pglz, the default, spends a lot of CPU failing to shrink on
    // every fold that rewrites the row (5 % of all CPU under a one-row INSERT load).
    // Storing them uncompressed instead pushed rows of two mid-sized sketches out of
    // line, and reads then paid a TOAST fetch per bucket.
    let storage: Vec<String> = k
        .measures
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.state_columns(i))
        .filter(|(_, ty)| lz4 && *ty == "bytea")
        .map(|(c, _)| format!("ALTER COLUMN {c} SET COMPRESSION lz4"))
        .collect();
    let storage = if storage.is_empty() {
        String::new()
    } else {
        format!("ALTER TABLE {} {};", k.agg_table_of(t), storage.join(", "))
    };
    let key = agg_key(k, t);
    format!(
        "CREATE TABLE {agg} ({cols});
         {storage}
         CREATE UNIQUE INDEX ON {agg} ({key}) NULLS NOT DISTINCT;
         COMMENT ON TABLE {agg} IS {comment};",
        agg = k.agg_table_of(t),
        cols = cols.join(", "),
        key = key.join(", "),
        comment = crate::catalog::quote_literal(&format!("pg_kpi: folded state of KPI {}", k.name)),
    )
}

/// The unique key of tier `t`'s aggregate table, as index expressions: the bucket and
/// each dimension, text dimensions through `kpi._dim_key` so that values too long for a
/// btree entry still fit (see `sql/bootstrap.sql`). The fold's `ON CONFLICT` names the
/// same expressions.
pub fn agg_key(k: &Kpi, t: usize) -> Vec<String> {
    let mut key = vec!["bucket".to_string()];
    for (d, ty) in k.tier_dim_cols(t).iter().zip(&k.dimension_types) {
        key.push(if is_text_like(ty) {
            format!("(kpi._dim_key({d}::text))")
        } else {
            d.clone()
        });
    }
    key
}

/// Types whose equality is the equality of their text form, so a key over the text is
/// exact (`character` compares without trailing spaces, as its cast to text drops them).
/// Others, such as citext, keep the plain column in the key.
fn is_text_like(ty: &str) -> bool {
    matches!(ty, "text" | "character varying" | "character")
}

/// The columns of tier `t`'s state view, in order (shared by both branches of its UNION).
fn state_columns(k: &Kpi, t: usize) -> Vec<String> {
    let mut cols = vec!["bucket".to_string()];
    cols.extend(k.tier_dim_cols(t));
    cols.push("_n".into());
    for (i, m) in k.measures.iter().enumerate() {
        cols.extend(m.state_columns(i).into_iter().map(|(c, _)| c));
        if m.has_dirty() {
            cols.push(format!("_m{i}_dirty"));
        }
    }
    cols
}

/// Decoding of one delta entry `x` into tier `t`'s state view columns. For a tier
/// wider than the KPI's bucket the captured bucket is re-binned into the tier's; a
/// dimensionless tier leaves the dimension values out.
pub fn decode_entry_columns(k: &Kpi, t: usize) -> Vec<String> {
    let bucket = "kpi._bucket_ts((x->>0)::bigint)".to_string();
    let mut cols = vec![if k.tiers[t].bucket_us == k.bucket_us {
        bucket
    } else {
        format!(
            "date_bin({}, {bucket}, '2000-01-01 00:00:00+00'::timestamptz)",
            k.width_sql(t)
        )
    }];
    if k.tiers[t].dims {
        for (j, ty) in k.dimension_types.iter().enumerate() {
            cols.push(format!("(x->1->>{j})::{ty}"));
        }
    }
    cols.push("(x->>2)::bigint".into());
    for (i, m) in k.measures.iter().enumerate() {
        cols.extend(m.decode_sql(i));
        if let Some(d) = m.dirty_decode_sql(i) {
            cols.push(d);
        }
    }
    cols
}

pub fn create_state_view(k: &Kpi, t: usize) -> String {
    let names = state_columns(k, t);
    let agg_cols: Vec<String> = names
        .iter()
        .map(|c| {
            if c.ends_with("_dirty") {
                format!("false AS {c}")
            } else {
                c.clone()
            }
        })
        .collect();
    let decoded: Vec<String> = decode_entry_columns(k, t)
        .into_iter()
        .zip(&names)
        .map(|(e, n)| format!("{e} AS {n}"))
        .collect();
    // The finalized values cached beside each sketch: pending deltas have none.
    let mut agg_cols = agg_cols;
    let mut decoded = decoded;
    for (i, m) in k.measures.iter().enumerate() {
        if let Some((c, ty, _)) = m.cached_column(i) {
            decoded.push(format!("NULL::{ty} AS {c}"));
            agg_cols.push(c);
        }
    }
    format!(
        "CREATE VIEW {state} AS
           SELECT {agg_cols} FROM {agg}
           UNION ALL
           SELECT {decoded} FROM kpi._pending({id}) AS t(x);",
        state = k.state_view_of(t),
        agg = k.agg_table_of(t),
        agg_cols = agg_cols.join(", "),
        decoded = decoded.join(", "),
        id = k.id,
    )
}

/// `r.dim IS NOT DISTINCT FROM s.dim` for every dimension (source row vs. group).
pub fn same_dims_pred(k: &Kpi) -> String {
    k.dim_cols()
        .iter()
        .map(|d| format!(" AND r.{d} IS NOT DISTINCT FROM s.{d}"))
        .collect()
}

pub fn create_view(k: &Kpi) -> String {
    let mut cols = vec!["s.bucket".to_string()];
    cols.extend(k.dim_cols().iter().map(|d| format!("s.{d}")));
    let group: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
    let width = format!("{}::interval", crate::catalog::quote_literal(&k.bucket));
    let hi = format!("s.bucket + {width}");
    let dims = same_dims_pred(k);
    for (i, m) in k.measures.iter().enumerate() {
        // A stored measure keeps its own type; a formula computes in numeric (so a
        // ratio of two counts is not an integer division).
        let cast = if m.kind == Kind::Derived {
            "::numeric"
        } else {
            ""
        };
        let sql = crate::derived::measure_sql(k, i, &mut |j| {
            let rescan = k.rescan_sql(j, "s.bucket", &hi, &dims);
            format!(
                "({}){cast}",
                k.measures[j].finalize_sql(j, rescan.as_deref())
            )
        });
        cols.push(format!("{sql} AS {}", pgrx::spi::quote_identifier(&m.name)));
    }
    format!(
        "CREATE VIEW {view} AS SELECT {cols} FROM {state} s GROUP BY {group} HAVING sum(s._n) <> 0;
         COMMENT ON VIEW {view} IS {comment};",
        view = k.view(),
        cols = cols.join(", "),
        state = k.state_view(),
        group = group.join(", "),
        comment = crate::catalog::quote_literal(&format!(
            "pg_kpi KPI {} over {} (exact at read time)",
            k.name, k.source_sql
        )),
    )
}

/// One scan of the source filling the aggregate table of tier `t`.
pub fn backfill(k: &Kpi, t: usize) -> String {
    let dims = k.tier_dim_cols(t);
    let mut cols = vec!["bucket".to_string()];
    cols.extend(dims.iter().cloned());
    cols.push("_n".into());
    let mut sel = vec![k.tier_bucket_of_row_sql("r", t)];
    sel.extend(dims.iter().map(|d| format!("r.{d}")));
    sel.push("count(*)".into());
    for (i, m) in k.measures.iter().enumerate() {
        for (c, _) in m.state_columns(i) {
            sel.push(m.backfill_agg(&c));
            cols.push(c);
        }
    }
    let group: Vec<String> = (1..=1 + dims.len()).map(|i| i.to_string()).collect();
    let only = if k.partitioned { "" } else { "ONLY " };
    format!(
        "INSERT INTO {agg} ({cols}) SELECT {sel} FROM {only}{src} r WHERE {counted} GROUP BY {group}",
        agg = k.agg_table_of(t),
        cols = cols.join(", "),
        sel = sel.join(", "),
        src = k.source_sql,
        counted = k.counted_rows_sql("r"),
        group = group.join(", "),
    )
}

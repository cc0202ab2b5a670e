//! The fold: drain the delta buffer, merge it into the aggregate tables, repair min/max
//! where rows were removed, apply retention, bump versions, and NOTIFY once.
//!
//! All of it is one transaction. Folds are serialized by an advisory lock, so the fold
//! worker, `kpi.fold()` and TRUNCATE rebuilds never interleave. Alert rules are
//! evaluated here too, right after the merge, on exactly the KPIs that changed (see
//! `alerts`).
//!
//! The merges run in a subtransaction (`subxact`), and if that fails, each KPI in one
//! of its own: a KPI whose merge fails is rolled back alone, its deltas go back into the
//! buffer (so its view stays exact and nothing is lost), and it is retried with backoff
//! (`quarantine`), while every other KPI folds and notifies as usual.

use crate::catalog::Kpi;
use crate::ddl;
use crate::deltas::{self, ByKpi, Merged};
use crate::errors::{KpiError, KpiResult};
use crate::prepared;
use crate::quarantine;
use crate::subxact::isolated;
use crate::workers::health;
use pgrx::prelude::*;

/// Key of the advisory lock serializing folds ("pg_kpi" in ASCII).
const FOLD_LOCK: i64 = 0x70675f6b7069;

/// NOTIFY payloads must stay under Postgres's 8000-byte limit.
const MAX_PAYLOAD: usize = 7900;

pub fn lock_folds() -> KpiResult<()> {
    prepared::run(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[FOLD_LOCK.into()],
        |_| Ok(()),
    )
}

/// Locks every KPI source (and its partitions) against TRUNCATE, then takes the fold
/// lock. TRUNCATE rebuilds lock in the same order (table first, fold lock second), so
/// the two can never deadlock.
fn lock_sources_then_folds() -> KpiResult<()> {
    let sources: Vec<String> = prepared::run(
        "SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
           FROM kpi.definitions d
           JOIN pg_catalog.pg_class c ON c.oid = d.source
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
        &[],
        |rows| {
            rows.map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Into::into)
        },
    )?;
    if !sources.is_empty() {
        Spi::run(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            sources.join(", ")
        ))?;
    }
    lock_folds()
}

/// Folds everything pending; returns the number of delta rows folded.
pub fn fold() -> KpiResult<i64> {
    let start = unsafe { pg_sys::GetCurrentTimestamp() };
    lock_sources_then_folds()?;
    let (drained_rows, per_kpi) = drain()?;
    let ids: Vec<i32> = per_kpi.keys().copied().collect();
    // Deltas of KPIs dropped since they were captured are simply discarded.
    let kpis = if ids.is_empty() {
        Vec::new()
    } else {
        Kpi::by_ids(&ids)?
    };
    quarantine::keep_only(&kpis.iter().map(|k| k.id).collect::<Vec<_>>());
    // All merges in one subtransaction first: one subtransaction per KPI would cost a
    // subtransaction ID each, and more than 64 in one transaction overflow the
    // snapshot's cache of them, slowing every other backend while the fold runs. Only
    // when that fails (or a KPI is held back already) is each KPI merged on its own, to
    // find which one fails.
    let all_at_once = if quarantine::failing().is_empty() {
        isolated(|| merge_all(&kpis, &per_kpi)).ok()
    } else {
        None
    };
    let mut touched = match all_at_once {
        Some(touched) => touched,
        None => merge_each(&kpis, &per_kpi)?,
    };
    // Current-state KPIs sample their new values; overdue KPIs whose deadline passed
    // changed without a write (`crate::state`).
    crate::state::samples::record(&kpis, &touched)?;
    touched.extend(crate::state::overdue::passed(&touched)?);
    // Bucketed KPIs whose last hour (or day-ago, week-ago, today) moved over rows.
    touched.extend(crate::slide::crossed(&touched)?);
    if retention_due() {
        apply_retention()?;
        crate::api::rebuild::drop_retired()?;
    }
    if !touched.is_empty() {
        let mut versions = bump_versions(&touched)?;
        // A rebuild's hidden definition is announced once it is swapped in.
        versions.retain(|(name, _)| !crate::api::rebuild::is_hidden(name));
        if !versions.is_empty() {
            notify_versions(&versions)?;
        }
    }
    crate::alerts::in_fold(&touched)?;
    let end = unsafe { pg_sys::GetCurrentTimestamp() };
    health::record_fold(start, end, &quarantine::failing());
    Ok(drained_rows)
}

/// Merges every KPI's entries; returns the ids of the KPIs merged.
fn merge_all(kpis: &[Kpi], per_kpi: &ByKpi) -> KpiResult<Vec<i32>> {
    let mut touched = Vec::with_capacity(kpis.len());
    for kpi in kpis {
        if let Some(entries) = per_kpi.get(&kpi.id) {
            merge_kpi(kpi, entries)?;
            touched.push(kpi.id);
        }
    }
    Ok(touched)
}

/// Merges each KPI's entries in a subtransaction of its own; a KPI whose merge fails
/// (or is held back, see `quarantine`) gets its entries back into the buffer. Returns
/// the ids of the KPIs merged.
fn merge_each(kpis: &[Kpi], per_kpi: &ByKpi) -> KpiResult<Vec<i32>> {
    let mut touched = Vec::with_capacity(kpis.len());
    for kpi in kpis {
        let Some(entries) = per_kpi.get(&kpi.id) else {
            continue;
        };
        let merged = quarantine::due(kpi.id)
            && match isolated(|| merge_kpi(kpi, entries)) {
                Ok(()) => {
                    quarantine::succeeded(kpi);
                    true
                }
                Err(message) => {
                    quarantine::failed(kpi, &message);
                    false
                }
            };
        if merged {
            touched.push(kpi.id);
        } else {
            // Back into the buffer, merged into one batch: pending again, read by the
            // KPI's view as before, and folded once the merge works.
            deltas::buffer::append(&deltas::encode(entries))?;
        }
    }
    Ok(touched)
}

/// Merges one KPI's drained entries into each of its tiers.
fn merge_kpi(kpi: &Kpi, entries: &[(deltas::Group, deltas::Entry)]) -> KpiResult<()> {
    let entries = deltas::json::array_text(entries.iter());
    for t in 0..kpi.tiers.len() {
        merge(kpi, t, &entries)?;
    }
    Ok(())
}

/// Empties the delta buffer; returns how many batches it held and their entries,
/// merged per group and grouped by KPI.
fn drain() -> KpiResult<(i64, ByKpi)> {
    let batches: Vec<Vec<u8>> =
        prepared::run("DELETE FROM kpi.deltas RETURNING batch", &[], |rows| {
            rows.map(|r| r.get::<Vec<u8>>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Into::into)
        })?;
    let mut merged = Merged::default();
    for batch in &batches {
        merged.extend(deltas::decode(batch).map_err(KpiError::internal)?);
    }
    Ok((batches.len() as i64, merged.by_kpi()))
}

/// The key of tier `t`'s aggregate rows.
fn key_cols(k: &Kpi, t: usize) -> Vec<String> {
    let mut cols = vec!["bucket".to_string()];
    cols.extend(k.tier_dim_cols(t));
    cols
}

/// Merges one KPI's drained entries (a jsonb array) into tier `t`'s aggregate table.
fn merge(k: &Kpi, t: usize, entries: &str) -> KpiResult<()> {
    let keys = key_cols(k, t);
    let mut names = keys.clone();
    names.push("_n".into());
    let mut merged = keys.clone();
    merged.push("sum(_n)::bigint".into());
    let mut sets = vec!["_n = a._n + excluded._n".to_string()];
    let mut decoded_names = names.clone();
    for (i, m) in k.measures.iter().enumerate() {
        for (c, _) in m.state_columns(i) {
            names.push(c.clone());
            decoded_names.push(c);
        }
        merged.extend(m.merge_aggs(i));
        sets.extend(m.upsert_sets(i));
        if m.has_dirty() {
            decoded_names.push(format!("_m{i}_dirty"));
        }
    }
    let decoded: Vec<String> = ddl::decode_entry_columns(k, t)
        .into_iter()
        .zip(&decoded_names)
        .map(|(e, n)| format!("{e} AS {n}"))
        .collect();
    let source = format!(
        "(SELECT {} FROM jsonb_array_elements($1::jsonb) AS t(x))",
        decoded.join(", ")
    );
    let upsert = format!(
        "INSERT INTO {agg} AS a ({names}) SELECT {merged} FROM {source} e GROUP BY {keys}
         ON CONFLICT ({target}) DO UPDATE SET {sets}",
        agg = k.agg_table_of(t),
        names = names.join(", "),
        merged = merged.join(", "),
        keys = keys.join(", "),
        target = ddl::agg_key(k, t).join(", "),
        sets = sets.join(", "),
    );
    prepared::run(&upsert, &[entries.into()], |_| Ok(()))?;

    // min/max/count_distinct: a removal may have taken the extreme (or the last copy of
    // a value) away, and these states cannot subtract it: rescan those groups.
    let dirty: Vec<String> = k
        .measures
        .iter()
        .enumerate()
        .filter(|(_, m)| m.has_dirty())
        .map(|(i, _)| format!("_m{i}_dirty"))
        .collect();
    if !dirty.is_empty() {
        // One grouped scan of the source over the dirty buckets' time range, rather than
        // one scan per dirty group.
        let dims = k.tier_dim_cols(t);
        let mut rescans = Vec::new();
        let mut sets = Vec::new();
        for (i, m) in k.measures.iter().enumerate() {
            if let (Some(agg), Some(expr)) = (m.rescan_agg(), m.expr.as_deref()) {
                rescans.push(format!("{} AS v{i}", agg.replace("{}", expr)));
                sets.push(format!("{} = x.v{i}", m.rescan_column(i)));
            }
        }
        let mut rkeys = vec![format!("{} AS bucket", k.tier_bucket_of_row_sql("r", t))];
        rkeys.extend(dims.iter().map(|d| format!("r.{d}")));
        let group_by: Vec<String> = (1..=rkeys.len()).map(|n| n.to_string()).collect();
        let on: Vec<String> = keys
            .iter()
            .map(|c| format!("r.{c} IS NOT DISTINCT FROM g.{c}"))
            .collect();
        let x_cols: Vec<String> = keys
            .iter()
            .map(|c| format!("g.{c}"))
            .chain(
                k.measures
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.rescan_agg().is_some())
                    .map(|(i, _)| format!("r.v{i}")),
            )
            .collect();
        let join: Vec<String> = keys
            .iter()
            .map(|c| format!("s.{c} IS NOT DISTINCT FROM x.{c}"))
            .collect();
        let only = if k.partitioned { "" } else { "ONLY " };
        let range = k.time_range_sql(
            "r",
            "(SELECT min(bucket) FROM g)",
            &format!("(SELECT max(bucket) FROM g) + {}", k.width_sql(t)),
        );
        let repair = format!(
            "WITH g AS MATERIALIZED (SELECT DISTINCT {keys} FROM {source} e WHERE {dirty}),
                  r AS MATERIALIZED (SELECT {rkeys}, {rescans} FROM {only}{src} r
                         WHERE {counted} AND {range} GROUP BY {group_by})
             UPDATE {agg} s SET {sets}
               FROM (SELECT {x_cols} FROM g LEFT JOIN r ON {on}) x
              WHERE s.bucket = x.bucket AND {join}",
            keys = keys.join(", "),
            dirty = dirty.join(" OR "),
            rkeys = rkeys.join(", "),
            rescans = rescans.join(", "),
            src = k.source_sql,
            counted = k.counted_rows_sql("r"),
            group_by = group_by.join(", "),
            agg = k.agg_table_of(t),
            sets = sets.join(", "),
            x_cols = x_cols.join(", "),
            on = on.join(" AND "),
            join = join.join(" AND "),
        );
        prepared::run(&repair, &[entries.into()], |_| Ok(()))?;
    }
    // Not while a rebuild builds: its relative upserts can leave a group at zero rows
    // whose other states the pending deltas still complete.
    if crate::state::is_overdue(k) && !crate::api::rebuild::is_hidden(&k.name) {
        forget_closed(k, t, &source, entries)?;
    }
    Ok(())
}

/// An overdue KPI's aggregate table is its queue of open rows' deadlines; a closed row
/// leaves its (deadline, dimensions) group at zero rows. Left there, every read of the
/// count and every probe for the next deadline would walk past the closed rows, so the
/// queue would grow with every order ever shipped. A group at zero rows holds nothing
/// (reads skip it: `HAVING sum(_n) <> 0`), whatever the measures, so it is deleted;
/// only groups a removal reached this fold are looked at, through the key index.
fn forget_closed(k: &Kpi, t: usize, source: &str, entries: &str) -> KpiResult<()> {
    let delete = format!(
        "DELETE FROM {agg} a
          USING (SELECT DISTINCT e.bucket FROM {source} e WHERE e._n <= 0) z
          WHERE a.bucket = z.bucket AND a._n = 0",
        agg = k.agg_table_of(t),
    );
    prepared::run(&delete, &[entries.into()], |_| Ok(()))
}

thread_local! {
    static LAST_RETENTION: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Retention needs no more than one pass a second; folds can run fifty times a second.
fn retention_due() -> bool {
    LAST_RETENTION.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            last.set(Some(std::time::Instant::now()));
        }
        due
    })
}

/// Drops buckets older than each tier's retention; a KPI whose DELETE fails is skipped
/// (and reported) without failing the fold. All KPIs in one subtransaction, and each in
/// one of its own only when that fails (see `fold`).
fn apply_retention() -> KpiResult<()> {
    let kpis = Kpi::all()?;
    if isolated(|| kpis.iter().try_for_each(retain)).is_ok() {
        return Ok(());
    }
    for kpi in &kpis {
        if let Err(message) = isolated(|| retain(kpi)) {
            health::record_error(&format!("retention of KPI \"{}\": {message}", kpi.name));
        }
    }
    Ok(())
}

/// Drops one KPI's buckets older than each tier's retention.
fn retain(kpi: &Kpi) -> KpiResult<()> {
    crate::state::samples::retain(kpi)?;
    for (t, tier) in kpi.tiers.iter().enumerate() {
        if let Some(retention) = &tier.retention {
            Spi::run_with_args(
                &format!(
                    "DELETE FROM {} WHERE bucket < now() - $1::interval",
                    kpi.agg_table_of(t)
                ),
                &[retention.as_str().into()],
            )?;
        }
    }
    Ok(())
}

/// Increments the versions of the given KPIs; returns (name, new version).
pub fn bump_versions(ids: &[i32]) -> KpiResult<Vec<(String, i64)>> {
    prepared::run(
        "UPDATE kpi.definitions SET version = version + 1 WHERE id = ANY($1) RETURNING name, version",
        &[ids.to_vec().into()],
        |rows| {
            rows.map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<i64>(2)?.unwrap_or_default(),
                ))
            })
            .collect()
        },
    )
}

/// Tells listeners to reload everything (`{"seq":N,"overflow":true}`): sent when a KPI
/// is dropped, which a version map cannot express.
pub fn notify_reload() -> KpiResult<()> {
    let seq = next_seq()?;
    let payload = format!("{{\"seq\":{seq},\"overflow\":true}}");
    Spi::run_with_args(
        "SELECT pg_catalog.pg_notify('kpi_changes', $1)",
        &[payload.as_str().into()],
    )?;
    Ok(())
}

/// One `kpi_changes` NOTIFY: `{"seq":N,"kpis":{"name":version,…}}`, or
/// `{"seq":N,"overflow":true}` when that would not fit in a payload.
pub fn notify_versions(versions: &[(String, i64)]) -> KpiResult<()> {
    // Derived KPIs change with their components.
    let versions = crate::derived::across::with_derived(versions)?;
    let seq = next_seq()?;
    let kpis: Vec<String> = versions
        .iter()
        .map(|(name, v)| format!("{}:{v}", serde_json::Value::String(name.clone())))
        .collect();
    let mut payload = format!("{{\"seq\":{seq},\"kpis\":{{{}}}}}", kpis.join(","));
    if payload.len() > MAX_PAYLOAD {
        payload = format!("{{\"seq\":{seq},\"overflow\":true}}");
    }
    prepared::run(
        "SELECT pg_catalog.pg_notify('kpi_changes', $1)",
        &[payload.as_str().into()],
        |_| Ok(()),
    )
}

fn next_seq() -> KpiResult<i64> {
    prepared::run("SELECT nextval('kpi.notify_seq')", &[], |mut rows| {
        Ok(rows
            .next()
            .and_then(|r| r.get::<i64>(1).ok().flatten())
            .unwrap_or_default())
    })
}

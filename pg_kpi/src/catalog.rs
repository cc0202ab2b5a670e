//! The catalog: a KPI's definition as stored in `kpi.definitions`, and the names and
//! SQL fragments derived from it.

use crate::errors::{KpiError, KpiResult};
use crate::measures::Measure;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

#[derive(Clone, Debug)]
pub struct Kpi {
    pub id: i32,
    pub name: String,
    pub source: pg_sys::Oid,
    /// Schema-qualified, quoted source name, valid whatever the search_path.
    pub source_sql: String,
    pub partitioned: bool,
    pub time_column: String,
    pub time_type: pg_sys::Oid,
    pub measures: Vec<Measure>,
    pub dimensions: Vec<String>,
    pub dimension_types: Vec<String>,
    pub filter: Option<String>,
    pub bucket: String,
    pub bucket_us: i64,
    pub owner: pg_sys::Oid,
    pub version: i64,
    /// Storage tiers: tier 0 is the KPI's own bucket and retention, then its rollups,
    /// finest first; then, for a KPI with dimensions, a dimensionless copy of each
    /// (see [`Tier::dims`]).
    pub tiers: Vec<Tier>,
    /// Current-state and overdue KPIs (`crate::state`): their rows' time expression.
    pub special: Option<crate::state::Special>,
}

/// One storage tier of a KPI: a bucket width and how long its buckets are kept.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Tier {
    pub bucket: String,
    pub bucket_us: i64,
    pub retention: Option<String>,
    pub retention_us: Option<i64>,
    /// Whether the tier keeps one row per dimension values, or one row per bucket for
    /// all of them. The dimensionless tiers are derived, never stored in the catalog:
    /// reads without a dimension filter (a dashboard's totals) read one row per bucket
    /// instead of one per combination of dimension values, 12× fewer for 4 regions ×
    /// 3 channels, for one more upsert per fold.
    #[serde(skip, default = "dimensioned")]
    pub dims: bool,
}

fn dimensioned() -> bool {
    true
}

const SELECT_0_2: &str = "
SELECT d.id, d.name, d.source::oid, format('%I.%I', n.nspname, c.relname), c.relkind = 'p',
       d.time_column, d.time_type::oid, d.measures::text, d.dimensions,
       d.dimension_types::text[], d.filter, d.bucket::text,
       (extract(epoch FROM d.bucket) * 1000000)::bigint, d.retention::text, d.owner::oid, d.version,
       (extract(epoch FROM d.retention) * 1000000)::bigint, d.rollups::text,
       dk.kind, dk.time_expr, (extract(epoch FROM dk.resolution) * 1000000)::bigint, dk.history::text
  FROM kpi.definitions d
  LEFT JOIN kpi.definition_kinds dk ON dk.kpi = d.id
  JOIN pg_catalog.pg_class c ON c.oid = d.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// The same over a 0.1.0 catalog, which has no current-state or overdue KPIs.
const SELECT_0_1: &str = "
SELECT d.id, d.name, d.source::oid, format('%I.%I', n.nspname, c.relname), c.relkind = 'p',
       d.time_column, d.time_type::oid, d.measures::text, d.dimensions,
       d.dimension_types::text[], d.filter, d.bucket::text,
       (extract(epoch FROM d.bucket) * 1000000)::bigint, d.retention::text, d.owner::oid, d.version,
       (extract(epoch FROM d.retention) * 1000000)::bigint, d.rollups::text,
       NULL::text, NULL::text, NULL::bigint, NULL::text
  FROM kpi.definitions d
  JOIN pg_catalog.pg_class c ON c.oid = d.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

thread_local! {
    static CATALOG_0_2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CATALOG_0_3: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this database's pg_kpi catalog is 0.2.0's (`kpi.definition_kinds`,
/// `kpi.rebuilds`). A server gets the new library before `ALTER EXTENSION pg_kpi UPDATE`
/// runs in each of its databases, and until then the library must work on the older
/// catalog: writers' captures, folds, reads and drops keep going, without the new kinds.
pub fn catalog_0_2() -> bool {
    has_catalog(
        &CATALOG_0_2,
        "SELECT to_regclass('kpi.definition_kinds') IS NOT NULL
            AND to_regclass('kpi.rebuilds') IS NOT NULL",
    )
}

/// Whether this database's catalog is 0.3.0's (`kpi.derived`), as [`catalog_0_2`].
pub fn catalog_0_3() -> bool {
    has_catalog(
        &CATALOG_0_3,
        "SELECT to_regclass('kpi.derived') IS NOT NULL",
    )
}

/// Once seen, a newer catalog stays (a downgrade is not a thing), so it is checked again
/// only while it is missing.
fn has_catalog(seen: &'static std::thread::LocalKey<std::cell::Cell<bool>>, sql: &str) -> bool {
    seen.with(|seen| {
        if !seen.get() {
            // Read-only, in the caller's snapshot: the read functions run this, and they
            // must not make their transaction a writer (tests/tests/read_snapshot.rs).
            let found = crate::prepared::select_one::<bool>(sql, &[])
                .ok()
                .flatten()
                .unwrap_or(false);
            seen.set(found);
        }
        seen.get()
    })
}

/// The catalog query for the catalog this database has (see [`catalog_0_2`]).
fn select_sql() -> &'static str {
    if catalog_0_2() {
        SELECT_0_2
    } else {
        SELECT_0_1
    }
}

fn from_row(r: pgrx::spi::SpiHeapTupleData) -> KpiResult<Kpi> {
    let measures_json: String = r.get(8)?.unwrap_or_default();
    let measures = serde_json::from_str(&measures_json)
        .map_err(|e| KpiError::internal(format!("corrupt measures in catalog: {e}")))?;
    let rollups: Vec<Tier> =
        serde_json::from_str(&r.get::<String>(18)?.unwrap_or_else(|| "[]".into()))
            .map_err(|e| KpiError::internal(format!("corrupt rollups in catalog: {e}")))?;
    let mut tiers = vec![Tier {
        bucket: r.get(12)?.unwrap_or_default(),
        bucket_us: r.get(13)?.unwrap_or(60_000_000),
        retention: r.get(14)?,
        retention_us: r.get(17)?,
        dims: true,
    }];
    tiers.extend(rollups);
    let dimensions: Vec<String> = r.get(9)?.unwrap_or_default();
    if !dimensions.is_empty() {
        let totals: Vec<Tier> = tiers
            .iter()
            .map(|t| Tier {
                dims: false,
                ..t.clone()
            })
            .collect();
        tiers.extend(totals);
    }
    Ok(Kpi {
        special: crate::state::Special::from_columns(
            r.get(19)?,
            r.get(20)?,
            r.get(21)?,
            r.get(22)?,
        ),
        tiers,
        id: r.get(1)?.unwrap_or_default(),
        name: r.get(2)?.unwrap_or_default(),
        source: r.get(3)?.unwrap_or(pg_sys::InvalidOid),
        source_sql: r.get(4)?.unwrap_or_default(),
        partitioned: r.get(5)?.unwrap_or(false),
        time_column: r.get(6)?.unwrap_or_default(),
        time_type: r.get(7)?.unwrap_or(pg_sys::InvalidOid),
        measures,
        dimensions,
        dimension_types: r.get(10)?.unwrap_or_default(),
        filter: r.get(11)?,
        bucket: r.get(12)?.unwrap_or_default(),
        bucket_us: r.get(13)?.unwrap_or(60_000_000),
        owner: r.get(15)?.unwrap_or(pg_sys::InvalidOid),
        version: r.get(16)?.unwrap_or_default(),
    })
}

impl Kpi {
    /// The KPI `name` as the calling statement sees it (a read-only lookup: the read
    /// functions' snapshot; not what the same statement has just written).
    pub fn by_name(name: &str) -> KpiResult<Kpi> {
        // A rebuild's hidden definition is nobody's KPI.
        if crate::api::rebuild::is_hidden(name) {
            return Err(KpiError::undefined_kpi(name));
        }
        // Every read function runs this: keep its plan.
        crate::prepared::select(
            &format!("{} WHERE d.name = $1", select_sql()),
            &[name.into()],
            |mut rows| match rows.next() {
                Some(row) => from_row(row),
                None => Err(KpiError::undefined_kpi(name)),
            },
        )
    }

    pub fn by_ids(ids: &[i32]) -> KpiResult<Vec<Kpi>> {
        // Every fold runs this: keep its plan.
        crate::prepared::run(
            &format!("{} WHERE d.id = ANY($1) ORDER BY d.id", select_sql()),
            &[ids.to_vec().into()],
            |rows| rows.map(from_row).collect(),
        )
    }

    pub fn all() -> KpiResult<Vec<Kpi>> {
        Spi::connect(|c| {
            c.select(&format!("{} ORDER BY d.id", select_sql()), None, &[])?
                .map(from_row)
                .collect()
        })
    }

    pub fn state_view(&self) -> String {
        self.state_view_of(0)
    }

    /// The aggregate table of tier `t` (`kpi._agg_<id>`, rollups `kpi._agg_<id>_r<t>`).
    pub fn agg_table_of(&self, t: usize) -> String {
        match t {
            0 => format!("kpi._agg_{}", self.id),
            t => format!("kpi._agg_{}_r{t}", self.id),
        }
    }

    pub fn state_view_of(&self, t: usize) -> String {
        match t {
            0 => format!("kpi._state_{}", self.id),
            t => format!("kpi._state_{}_r{t}", self.id),
        }
    }

    /// Tier `t`'s bucket width as an SQL interval literal.
    pub fn width_sql(&self, t: usize) -> String {
        format!("{}::interval", quote_literal(&self.tiers[t].bucket))
    }

    /// The bucket of source row `r` in tier `t`.
    pub fn tier_bucket_of_row_sql(&self, r: &str, t: usize) -> String {
        format!(
            "date_bin({}, {}, '2000-01-01 00:00:00+00'::timestamptz)",
            self.width_sql(t),
            self.time_tz_sql(r)
        )
    }

    /// The finest tier with dimensions that keeps data `span_us` back from now and whose
    /// bucket divides `step_us` (when given); the longest-kept such tier when none keeps
    /// that far. [`Kpi::totals_of`] gives its dimensionless copy.
    pub fn pick_tier(&self, span_us: i64, step_us: Option<i64>) -> usize {
        let fits = |t: &Tier| t.dims && step_us.is_none_or(|s| s % t.bucket_us == 0);
        let keeps = |t: &Tier| t.retention_us.is_none_or(|r| span_us <= r);
        if let Some(t) = self.tiers.iter().position(|t| fits(t) && keeps(t)) {
            return t;
        }
        (0..self.tiers.len())
            .filter(|&t| fits(&self.tiers[t]))
            .max_by_key(|&t| self.tiers[t].retention_us.unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// The dimensionless copy of tier `t` (`t` itself when the KPI has no dimensions):
    /// the same buckets summed over all dimension values.
    pub fn totals_of(&self, t: usize) -> usize {
        let stored = self.tiers.iter().filter(|t| t.dims).count();
        if self.tiers.len() > stored && t < stored {
            t + stored
        } else {
            t
        }
    }

    /// The quoted dimension columns that tier `t` keeps.
    pub fn tier_dim_cols(&self, t: usize) -> Vec<String> {
        if self.tiers[t].dims {
            self.dim_cols()
        } else {
            Vec::new()
        }
    }

    pub fn view(&self) -> String {
        format!("kpi.{}", quote_identifier(&self.name))
    }

    pub fn measure_index(&self, name: &str) -> KpiResult<usize> {
        self.measures
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| {
                KpiError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("KPI \"{}\" has no measure \"{name}\"", self.name),
                    format!(
                        "Its measures are: {}.",
                        self.measures
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    pub fn dimension_index(&self, name: &str) -> KpiResult<usize> {
        self.dimensions
            .iter()
            .position(|d| d == name)
            .ok_or_else(|| {
                KpiError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("KPI \"{}\" has no dimension \"{name}\"", self.name),
                    if self.dimensions.is_empty() {
                        "This KPI has no dimensions.".to_string()
                    } else {
                        format!("Its dimensions are: {}.", self.dimensions.join(", "))
                    },
                )
            })
    }

    /// Quoted dimension column names.
    pub fn dim_cols(&self) -> Vec<String> {
        self.dimensions.iter().map(quote_identifier).collect()
    }

    /// The time of source row alias `r`: its time column, or the expression of a
    /// current-state or overdue KPI (unqualified: the queries using it read the source
    /// alone, as for filters).
    pub fn time_sql(&self, r: &str) -> String {
        match &self.special {
            Some(s) => format!("({})", s.time_expr),
            None => format!("{r}.{}", quote_identifier(&self.time_column)),
        }
    }

    /// The time column of source row alias `r` as a timestamptz (timestamp is read as UTC).
    pub fn time_tz_sql(&self, r: &str) -> String {
        let col = self.time_sql(r);
        if self.time_type == pg_sys::TIMESTAMPTZOID {
            col
        } else if self.time_type == pg_sys::TIMESTAMPOID {
            format!("({col} AT TIME ZONE 'UTC')")
        } else {
            format!("({col}::timestamp AT TIME ZONE 'UTC')")
        }
    }

    /// Rows of `r` that the KPI counts: finite time, and the filter.
    pub fn counted_rows_sql(&self, r: &str) -> String {
        let col = self.time_sql(r);
        let mut sql = format!("{col} IS NOT NULL AND isfinite({col})");
        if let Some(f) = &self.filter {
            sql.push_str(&format!(" AND ({f})"));
        }
        sql
    }

    /// Rows of `r` whose bucket is in `[lo, hi)` (timestamptz SQL expressions),
    /// written so an index on a timestamptz time column can be used.
    pub fn time_range_sql(&self, r: &str, lo: &str, hi: &str) -> String {
        if self.time_type == pg_sys::TIMESTAMPTZOID {
            let col = self.time_sql(r);
            format!("{col} >= ({lo}) AND {col} < ({hi})")
        } else {
            let b = self.tier_bucket_of_row_sql(r, 0);
            format!("{b} >= ({lo}) AND {b} < ({hi})")
        }
    }

    /// Scalar subquery recomputing (min/max/count_distinct) measure `i` from the source for rows in
    /// `[lo, hi)` matching `dims_pred` (which refers to source alias `r`).
    pub fn rescan_sql(&self, i: usize, lo: &str, hi: &str, dims_pred: &str) -> Option<String> {
        let m = &self.measures[i];
        let agg = m.rescan_agg()?;
        let expr = m.expr.as_deref()?;
        let only = if self.partitioned { "" } else { "ONLY " };
        let agg = agg.replace("{}", expr);
        Some(format!(
            "SELECT {agg} FROM {only}{} r WHERE {} AND {}{}",
            self.source_sql,
            self.counted_rows_sql("r"),
            self.time_range_sql("r", lo, hi),
            dims_pred
        ))
    }
}

pub fn quote_literal(s: &str) -> String {
    pgrx::spi::quote_literal(s)
}

//! Source tables and KPI definitions shared by the end-to-end tests.
//!
//! A [`KpiSpec`] is the single description of a KPI from which the tests derive the
//! `kpi.create(...)` call, the query that reads its view, and the GROUP BY query that
//! recomputes it from the source (the oracle), so the three can never drift apart.

use postgres::Client;

/// Every generated `created_at` is within a few hours of this instant, so 1-minute
/// buckets hold several rows each and 1-hour buckets hold many.
pub const BASE_TIME: &str = "2024-01-01 00:00:00+00";

/// The bucket origin of the contract (`date_bin(bucket, t, origin)`).
pub const BUCKET_ORIGIN: &str = "2000-01-01 00:00:00+00";

/// Columns written by inserts and COPY, in this order.
pub const ORDER_COLUMNS: &str = "created_at, region, channel, status, amount, quantity, latency_ms";

/// Creates `orders` (plain) and `orders_p` (range partitioned by `created_at` into
/// three 20-minute partitions and a default one that catches everything else,
/// including rows from before `BASE_TIME`).
pub fn create_orders_tables(client: &mut Client) {
    let columns = "created_at timestamptz NOT NULL,
        region text,
        channel text,
        status text,
        amount numeric(12,2),
        quantity int,
        latency_ms double precision";
    let sql = format!(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, {columns});
         CREATE TABLE orders_p (id bigserial, {columns}, PRIMARY KEY (id, created_at))
             PARTITION BY RANGE (created_at);
         CREATE TABLE orders_p0 PARTITION OF orders_p
             FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-01-01 00:20:00+00');
         CREATE TABLE orders_p1 PARTITION OF orders_p
             FOR VALUES FROM ('2024-01-01 00:20:00+00') TO ('2024-01-01 00:40:00+00');
         CREATE TABLE orders_p2 PARTITION OF orders_p
             FOR VALUES FROM ('2024-01-01 00:40:00+00') TO ('2024-01-01 01:00:00+00');
         CREATE TABLE orders_p_default PARTITION OF orders_p DEFAULT;"
    );
    client
        .batch_execute(&sql)
        .unwrap_or_else(|e| panic!("create orders tables: {}", crate::describe_error(&e)));
}

/// The kind of a measure, as named in the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// `count_distinct(expr)`: a HyperLogLog sketch, approximate (see [`Measure::is_sketch`]).
    CountDistinct,
    /// `percentile(expr, q)`: a DDSketch, approximate; `q` is [`Measure::quantile`].
    Percentile,
}

#[derive(Clone, Debug)]
pub struct Measure {
    pub name: String,
    pub kind: Kind,
    /// The argument expression; `None` only for `count(*)`.
    pub expr: Option<String>,
    /// The quantile q of a [`Kind::Percentile`] measure, `None` for every other kind.
    pub quantile: Option<f64>,
}

impl Measure {
    /// A measure of any kind but [`Kind::Percentile`] (which needs a quantile: use
    /// [`Measure::percentile`]).
    pub fn new(name: &str, kind: Kind, expr: &str) -> Measure {
        assert!(
            kind != Kind::Percentile,
            "use Measure::percentile for percentile measures"
        );
        Measure {
            name: name.to_string(),
            kind,
            expr: (kind != Kind::CountStar).then(|| expr.to_string()),
            quantile: None,
        }
    }

    pub fn count_star(name: &str) -> Measure {
        Measure::new(name, Kind::CountStar, "*")
    }

    /// `name = percentile(expr, q)`.
    pub fn percentile(name: &str, expr: &str, q: f64) -> Measure {
        Measure {
            name: name.to_string(),
            kind: Kind::Percentile,
            expr: Some(expr.to_string()),
            quantile: Some(q),
        }
    }

    /// Sketch measures are approximate by design: the oracle checks them within the
    /// contract's error bounds ([`KpiSpec::sketch_check_sql`]), not by equality.
    pub fn is_sketch(&self) -> bool {
        matches!(self.kind, Kind::CountDistinct | Kind::Percentile)
    }

    fn call(&self, function_for: impl Fn(Kind) -> &'static str) -> String {
        let arg = self.expr.as_deref().unwrap_or("*");
        format!("{}({arg})", function_for(self.kind))
    }

    /// `name = kind(expr)` as written in `kpi.create(measures => ...)`.
    pub fn definition(&self) -> String {
        if let (Kind::Percentile, Some(q)) = (self.kind, self.quantile) {
            let arg = self.expr.as_deref().unwrap_or_default();
            return format!("{} = percentile({arg}, {q})", self.name);
        }
        let call = self.call(|k| match k {
            Kind::CountStar | Kind::Count => "count",
            Kind::Sum => "sum",
            Kind::Avg => "avg",
            Kind::Min => "min",
            Kind::Max => "max",
            Kind::CountDistinct => "count_distinct",
            // Handled above: a percentile always has a quantile.
            Kind::Percentile => unreachable!("percentile without a quantile"),
        });
        format!("{} = {call}", self.name)
    }

    /// The aggregate in the GROUP BY recomputation, cast to the type the contract
    /// promises for the view column. Arguments are cast to numeric before aggregating
    /// so that sums and averages of floats are computed exactly, as the contract's
    /// `numeric` results imply.
    fn oracle_expr(&self) -> String {
        let arg = self.expr.as_deref().unwrap_or("*");
        match self.kind {
            Kind::CountStar => "count(*)::bigint".to_string(),
            Kind::Count => format!("count({arg})::bigint"),
            Kind::Sum => format!("sum(({arg})::numeric)"),
            // avg's scale is an implementation detail; compare 10 decimals.
            Kind::Avg => format!("round(avg(({arg})::numeric), 10)"),
            Kind::Min => format!("min(({arg})::numeric)"),
            Kind::Max => format!("max(({arg})::numeric)"),
            // The contract counts the distinct text forms of the values (`expr::text`):
            // 2.50 and 2.5 are one numeric value but two text forms.
            Kind::CountDistinct => format!("count(DISTINCT ({arg})::text)::bigint"),
            // The exact value the sketch approximates. NaN and ±infinity are not counted
            // (contract); `abs(x) < 'Infinity'` is false for exactly those and NULL,
            // because Postgres sorts NaN above every other float8.
            Kind::Percentile => format!(
                "percentile_disc({}) WITHIN GROUP (ORDER BY ({arg})::float8) \
                 FILTER (WHERE abs(({arg})::float8) < 'Infinity'::float8)",
                self.quantile.expect("percentile without a quantile")
            ),
        }
    }

    fn view_expr(&self) -> String {
        match self.kind {
            Kind::Avg => format!("round({}, 10)", self.name),
            _ => self.name.clone(),
        }
    }

    /// The view column type the contract promises (`format_type` spelling).
    pub fn view_type(&self) -> &'static str {
        match self.kind {
            Kind::CountStar | Kind::Count | Kind::CountDistinct => "bigint",
            Kind::Percentile => "double precision",
            _ => "numeric",
        }
    }
}

/// The SQL type of a KPI's time column, which decides how it maps to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeType {
    Timestamptz,
    /// `timestamp without time zone`, read as UTC.
    Timestamp,
    /// `date`, read as midnight UTC.
    Date,
}

#[derive(Clone, Debug)]
pub struct KpiSpec {
    pub name: String,
    pub source: String,
    pub time_column: String,
    pub time_type: TimeType,
    pub measures: Vec<Measure>,
    pub dimensions: Vec<String>,
    pub filter: Option<String>,
    pub bucket: String,
}

/// Quotes a string as an SQL literal (standard_conforming_strings is on by default).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl KpiSpec {
    /// The `measures => ...` argument.
    pub fn measures_arg(&self) -> String {
        self.measures
            .iter()
            .map(Measure::definition)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `dimensions => ...` argument as a text[] literal.
    pub fn dimensions_arg(&self) -> String {
        format!("{{{}}}", self.dimensions.join(","))
    }

    /// `SELECT kpi.create(...)` with every argument named, as users write it.
    pub fn create_sql(&self) -> String {
        let mut args = vec![
            format!("name => {}", lit(&self.name)),
            format!("source => {}", lit(&self.source)),
            format!("time_column => {}", lit(&self.time_column)),
            format!("measures => {}", lit(&self.measures_arg())),
            format!("dimensions => {}", lit(&self.dimensions_arg())),
            format!("bucket => {}", lit(&self.bucket)),
        ];
        if let Some(filter) = &self.filter {
            args.push(format!("filter => {}", lit(filter)));
        }
        format!("SELECT kpi.create({})", args.join(", "))
    }

    /// Creates the KPI, panicking with the server's full error on failure.
    pub fn create(&self, client: &mut Client) {
        let sql = self.create_sql();
        if let Err(e) = client.batch_execute(&sql) {
            panic!("{sql}\nfailed: {}", crate::describe_error(&e));
        }
    }

    fn time_expr(&self) -> String {
        let col = &self.time_column;
        match self.time_type {
            TimeType::Timestamptz => col.clone(),
            TimeType::Timestamp => format!("({col} AT TIME ZONE 'UTC')"),
            TimeType::Date => format!("({col}::timestamp AT TIME ZONE 'UTC')"),
        }
    }

    /// The measures checked by equality (every kind but the sketches).
    pub fn exact_measures(&self) -> impl Iterator<Item = &Measure> {
        self.measures.iter().filter(|m| !m.is_sketch())
    }

    /// The sketch measures, checked within their error bounds.
    pub fn sketch_measures(&self) -> impl Iterator<Item = &Measure> {
        self.measures.iter().filter(|m| m.is_sketch())
    }

    /// Reads the KPI's view with the columns in contract order (avg rounded), exact
    /// measures only: sketch measures are approximate and compared by
    /// [`KpiSpec::sketch_check_sql`] instead.
    pub fn view_sql(&self) -> String {
        let mut cols = vec!["bucket".to_string()];
        cols.extend(self.dimensions.iter().cloned());
        cols.extend(self.exact_measures().map(Measure::view_expr));
        format!("SELECT {} FROM kpi.{}", cols.join(", "), self.name)
    }

    /// One row, two arrays: every exact measure read with `kpi.value` over `window`
    /// without a dimension filter (the dimensionless tier, for a KPI with dimensions),
    /// and the same recomputed from the source over the same buckets. Equal when right
    /// (numeric equality: the scales may differ).
    pub fn totals_check_sql(&self, window: &str) -> String {
        let bin = |t: &str| {
            format!(
                "date_bin({}::interval, {t}, {}::timestamptz)",
                lit(&self.bucket),
                lit(BUCKET_ORIGIN)
            )
        };
        let read: Vec<String> = self
            .exact_measures()
            .map(|m| {
                let v = format!(
                    "kpi.value({}, {}, {}::interval)",
                    lit(&self.name),
                    lit(&m.name),
                    lit(window)
                );
                match m.kind {
                    Kind::Avg => format!("round({v}, 10)"),
                    _ => v,
                }
            })
            .collect();
        let exact: Vec<String> = self
            .exact_measures()
            .map(|m| format!("({})::numeric", m.oracle_expr()))
            .collect();
        let mut conditions = vec![
            format!("isfinite({})", self.time_column),
            format!(
                "{} >= {}",
                bin(&self.time_expr()),
                bin(&format!("now() - {}::interval", lit(window)))
            ),
            format!(
                "{} < {} + {}::interval",
                bin(&self.time_expr()),
                bin("now()"),
                lit(&self.bucket)
            ),
        ];
        if let Some(filter) = &self.filter {
            conditions.push(format!("({filter})"));
        }
        format!(
            "SELECT ARRAY[{}]::numeric[]::text, (SELECT ARRAY[{}]::text FROM {} WHERE {}),
                    ARRAY[{}]::numeric[] IS NOT DISTINCT FROM
                    (SELECT ARRAY[{}] FROM {} WHERE {})",
            read.join(", "),
            exact.join(", "),
            self.source,
            conditions.join(" AND "),
            read.join(", "),
            exact.join(", "),
            self.source,
            conditions.join(" AND "),
        )
    }

    /// Recomputes the KPI's exact measures from its source with GROUP BY: what
    /// [`KpiSpec::view_sql`] must equal.
    pub fn oracle_sql(&self) -> String {
        self.recompute_sql(self.exact_measures().map(Measure::oracle_expr).collect())
    }

    /// `SELECT bucket, <dimensions>, <measure columns> FROM <source> ... GROUP BY`.
    /// Rows whose time is NULL or infinite are not counted (contract).
    fn recompute_sql(&self, measure_columns: Vec<String>) -> String {
        let mut cols = vec![format!(
            "date_bin({}::interval, {}, {}::timestamptz) AS bucket",
            lit(&self.bucket),
            self.time_expr(),
            lit(BUCKET_ORIGIN)
        )];
        cols.extend(self.dimensions.iter().cloned());
        cols.extend(measure_columns);
        let mut conditions = vec![format!("isfinite({})", self.time_column)];
        if let Some(filter) = &self.filter {
            conditions.push(format!("({filter})"));
        }
        let group_by = (1..=1 + self.dimensions.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {} FROM {} WHERE {} GROUP BY {group_by}",
            cols.join(", "),
            self.source,
            conditions.join(" AND ")
        )
    }

    /// Pairs each view row's sketch measures with their exact recomputation, one output
    /// row per view row (bucket × dimension values):
    /// `key text, in_view bigint, in_oracle bigint, <view value, exact value> per
    /// sketch measure (float8, in [`KpiSpec::sketch_measures`] order)`.
    /// `in_view`/`in_oracle` count the group's rows on each side (1 and 1 when both
    /// have it). `None` when the KPI has no sketch measure.
    ///
    /// A UNION ALL grouped by the key rather than a FULL JOIN: the dimensions may be
    /// NULL, and a FULL JOIN cannot use `IS NOT DISTINCT FROM`, while GROUP BY treats
    /// NULLs as equal.
    pub fn sketch_check_sql(&self) -> Option<String> {
        let sketches: Vec<&Measure> = self.sketch_measures().collect();
        if sketches.is_empty() {
            return None;
        }
        let key_cols: Vec<String> = std::iter::once("bucket".to_string())
            .chain(self.dimensions.iter().cloned())
            .collect();
        let side = |tag: &str, exprs: Vec<String>| {
            let values: Vec<String> = exprs
                .iter()
                .zip(&sketches)
                .map(|(e, m)| format!("({e})::float8 AS {}", m.name))
                .collect();
            format!(
                "SELECT {tag} AS side, {}, {}",
                key_cols.join(", "),
                values.join(", ")
            )
        };
        let view = format!(
            "{} FROM kpi.{}",
            side("'v'", sketches.iter().map(|m| m.name.clone()).collect()),
            self.name
        );
        let oracle_names: Vec<String> = sketches.iter().map(|m| m.name.clone()).collect();
        let oracle = format!(
            "{} FROM ({}) o",
            side("'o'", oracle_names),
            self.recompute_sql(
                sketches
                    .iter()
                    .map(|m| format!("{} AS {}", m.oracle_expr(), m.name))
                    .collect()
            )
        );
        let key = key_cols
            .iter()
            .map(|c| format!("coalesce({c}::text, 'NULL')"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cols = vec![
            format!("concat_ws(' | ', {key})"),
            "count(*) FILTER (WHERE side = 'v')".to_string(),
            "count(*) FILTER (WHERE side = 'o')".to_string(),
        ];
        for m in &sketches {
            cols.push(format!("max({}) FILTER (WHERE side = 'v')", m.name));
            cols.push(format!("max({}) FILTER (WHERE side = 'o')", m.name));
        }
        Some(format!(
            "SELECT {} FROM ({view} UNION ALL {oracle}) u GROUP BY {} ORDER BY 1",
            cols.join(", "),
            key_cols.join(", ")
        ))
    }
}

fn orders_checkout(name: &str, source: &str, dimensions: &[&str]) -> KpiSpec {
    KpiSpec {
        name: name.to_string(),
        source: source.to_string(),
        time_column: "created_at".to_string(),
        time_type: TimeType::Timestamptz,
        measures: vec![
            Measure::count_star("orders"),
            Measure::new("timed", Kind::Count, "latency_ms"),
            Measure::new("revenue", Kind::Sum, "amount * quantity"),
            Measure::new("aov", Kind::Avg, "amount"),
            Measure::new("lo", Kind::Min, "amount"),
            Measure::new("hi", Kind::Max, "amount"),
        ],
        dimensions: dimensions.iter().map(|d| d.to_string()).collect(),
        filter: Some("status <> 'cancelled'".to_string()),
        bucket: "1 minute".to_string(),
    }
}

/// The KPIs the oracle tests maintain over `orders` and `orders_p`: every measure kind,
/// with and without dimensions and filter, and two whose few buckets collect every row
/// (the hot-row case that a naive trigger serializes on).
pub fn orders_kpis() -> Vec<KpiSpec> {
    vec![
        orders_checkout("checkout", "orders", &["region", "channel"]),
        KpiSpec {
            name: "totals".to_string(),
            source: "orders".to_string(),
            time_column: "created_at".to_string(),
            time_type: TimeType::Timestamptz,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("qty", Kind::Sum, "quantity"),
                Measure::new("avg_qty", Kind::Avg, "quantity"),
                Measure::new("fastest", Kind::Min, "latency_ms"),
                Measure::new("slowest", Kind::Max, "latency_ms"),
            ],
            dimensions: vec![],
            filter: None,
            bucket: "1 hour".to_string(),
        },
        orders_checkout("p_checkout", "orders_p", &["region"]),
        KpiSpec {
            name: "p_totals".to_string(),
            source: "orders_p".to_string(),
            time_column: "created_at".to_string(),
            time_type: TimeType::Timestamptz,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("paid", Kind::Count, "amount"),
                Measure::new("revenue", Kind::Sum, "amount"),
            ],
            dimensions: vec![],
            filter: None,
            bucket: "1 day".to_string(),
        },
    ]
}

/// KPIs with sketch measures over `orders` and `orders_p`, next to exact ones, for the
/// oracle tests (not in [`orders_kpis`], which the crash and notification tests share):
/// - `sketches`: 1-minute buckets per channel with the filter: small groups (a few rows
///   each), where a quantile's rank and HLL's sparse mode must be right;
/// - `p_sketches`: 1-hour buckets without dimensions: about a thousand rows per group,
///   percentiles of a numeric expression with negative values and zeros, and a distinct
///   count of a text expression that is NULL when either part is.
pub fn sketch_kpis() -> Vec<KpiSpec> {
    vec![
        KpiSpec {
            name: "sketches".to_string(),
            source: "orders".to_string(),
            time_column: "created_at".to_string(),
            time_type: TimeType::Timestamptz,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("amounts", Kind::CountDistinct, "amount"),
                Measure::percentile("p50", "latency_ms", 0.5),
                Measure::new("revenue", Kind::Sum, "amount"),
                Measure::percentile("p95", "latency_ms", 0.95),
            ],
            dimensions: vec!["channel".to_string()],
            filter: Some("status <> 'cancelled'".to_string()),
            bucket: "1 minute".to_string(),
        },
        KpiSpec {
            name: "p_sketches".to_string(),
            source: "orders_p".to_string(),
            time_column: "created_at".to_string(),
            time_type: TimeType::Timestamptz,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("amounts", Kind::CountDistinct, "amount"),
                Measure::new("routes", Kind::CountDistinct, "region || '/' || channel"),
                Measure::percentile("p50", "amount * quantity", 0.5),
                Measure::percentile("p95", "amount * quantity", 0.95),
                Measure::new("hi", Kind::Max, "amount * quantity"),
            ],
            dimensions: vec![],
            filter: None,
            bucket: "1 hour".to_string(),
        },
    ]
}

/// Creates the orders tables and every KPI of [`orders_kpis`]; returns the specs.
pub fn setup_orders(client: &mut Client) -> Vec<KpiSpec> {
    create_orders_tables(client);
    let kpis = orders_kpis();
    for kpi in &kpis {
        kpi.create(client);
    }
    kpis
}

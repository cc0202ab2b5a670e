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
}

#[derive(Clone, Debug)]
pub struct Measure {
    pub name: String,
    pub kind: Kind,
    /// The argument expression; `None` only for `count(*)`.
    pub expr: Option<String>,
}

impl Measure {
    pub fn new(name: &str, kind: Kind, expr: &str) -> Measure {
        Measure {
            name: name.to_string(),
            kind,
            expr: (kind != Kind::CountStar).then(|| expr.to_string()),
        }
    }

    pub fn count_star(name: &str) -> Measure {
        Measure::new(name, Kind::CountStar, "*")
    }

    fn call(&self, function_for: impl Fn(Kind) -> &'static str) -> String {
        let arg = self.expr.as_deref().unwrap_or("*");
        format!("{}({arg})", function_for(self.kind))
    }

    /// `name = kind(expr)` as written in `kpi.create(measures => ...)`.
    pub fn definition(&self) -> String {
        let call = self.call(|k| match k {
            Kind::CountStar | Kind::Count => "count",
            Kind::Sum => "sum",
            Kind::Avg => "avg",
            Kind::Min => "min",
            Kind::Max => "max",
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
            Kind::CountStar | Kind::Count => "bigint",
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

    /// Reads the KPI's view with the columns in contract order (avg rounded).
    pub fn view_sql(&self) -> String {
        let mut cols = vec!["bucket".to_string()];
        cols.extend(self.dimensions.iter().cloned());
        cols.extend(self.measures.iter().map(Measure::view_expr));
        format!("SELECT {} FROM kpi.{}", cols.join(", "), self.name)
    }

    /// Recomputes the KPI from its source with GROUP BY: what the view must equal.
    /// Rows whose time is NULL or infinite are not counted (contract).
    pub fn oracle_sql(&self) -> String {
        let mut cols = vec![format!(
            "date_bin({}::interval, {}, {}::timestamptz) AS bucket",
            lit(&self.bucket),
            self.time_expr(),
            lit(BUCKET_ORIGIN)
        )];
        cols.extend(self.dimensions.iter().cloned());
        cols.extend(self.measures.iter().map(Measure::oracle_expr));
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

/// Creates the orders tables and every KPI of [`orders_kpis`]; returns the specs.
pub fn setup_orders(client: &mut Client) -> Vec<KpiSpec> {
    create_orders_tables(client);
    let kpis = orders_kpis();
    for kpi in &kpis {
        kpi.create(client);
    }
    kpis
}

//! Randomized DML against the orders tables, for the oracle and crash tests.
//!
//! One [`run`] is one session with its own seeded RNG, so a session's sequence of
//! statements is reproducible (the interleaving of concurrent sessions is not). It mixes
//! every write path the capture must handle: single and multi-row INSERT, COPY, UPDATEs
//! that move rows between buckets, dimension values, partitions and in/out of the
//! filter, DELETE, committed and rolled-back transactions, savepoints rolled back and
//! released, statements that fail after their first rows fired triggers, and TRUNCATE.
//!
//! Errors that concurrency legitimately causes (deadlocks, rows moved to another
//! partition by a concurrent update) roll the transaction back and count as retries;
//! lost connections reconnect when the caller expects crashes; anything else is recorded
//! in the report as a failure, with the statement that caused it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::describe_error;
use crate::schema::ORDER_COLUMNS;

const REGIONS: [Option<&str>; 6] = [
    Some("eu"),
    Some("us"),
    Some("apac"),
    Some("latam"),
    Some("eu"),
    None,
];
const CHANNELS: [Option<&str>; 4] = [Some("web"), Some("app"), Some("store"), None];
const STATUSES: [Option<&str>; 6] = [
    Some("paid"),
    Some("paid"),
    Some("pending"),
    Some("cancelled"),
    Some("refunded"),
    None,
];

/// One generated order. Times are offsets from `BASE_TIME` so that rows spread over
/// about 80 one-minute buckets, every partition of `orders_p` and a little before it.
#[derive(Clone, Debug)]
pub struct OrderRow {
    pub offset_ms: i64,
    pub region: Option<&'static str>,
    pub channel: Option<&'static str>,
    pub status: Option<&'static str>,
    pub amount_cents: Option<i64>,
    pub quantity: Option<i32>,
    /// Latency in thousandths of a millisecond: three decimals convert exactly between
    /// double precision and numeric, so min/max of it compare exactly.
    pub latency_thousandths: Option<i64>,
}

fn pick<T: Copy>(rng: &mut StdRng, values: &[T]) -> T {
    values[rng.random_range(0..values.len())]
}

fn maybe<T>(rng: &mut StdRng, null_probability: f64, value: T) -> Option<T> {
    (!rng.random_bool(null_probability)).then_some(value)
}

impl OrderRow {
    pub fn random(rng: &mut StdRng) -> OrderRow {
        OrderRow {
            offset_ms: rng.random_range(-300_000..4_500_000),
            region: pick(rng, &REGIONS),
            channel: pick(rng, &CHANNELS),
            status: pick(rng, &STATUSES),
            // Some negative amounts (refunds) and NULLs: sums and min/max must cope.
            amount_cents: {
                let v = rng.random_range(-2_000..100_000);
                maybe(rng, 0.05, v)
            },
            quantity: {
                let v = rng.random_range(1..10);
                maybe(rng, 0.03, v)
            },
            latency_thousandths: {
                let v = rng.random_range(0..5_000_000);
                maybe(rng, 0.1, v)
            },
        }
    }

    /// `created_at` as text with an explicit UTC offset.
    pub fn created_at(&self) -> String {
        timestamp_text(self.offset_ms)
    }

    fn amount_text(&self) -> Option<String> {
        self.amount_cents.map(|c| {
            let sign = if c < 0 { "-" } else { "" };
            format!("{sign}{}.{:02}", c.abs() / 100, c.abs() % 100)
        })
    }

    fn latency_text(&self) -> Option<String> {
        self.latency_thousandths
            .map(|v| format!("{}.{:03}", v / 1000, v % 1000))
    }

    fn fields(&self) -> [Option<String>; 7] {
        [
            Some(self.created_at()),
            self.region.map(str::to_string),
            self.channel.map(str::to_string),
            self.status.map(str::to_string),
            self.amount_text(),
            self.quantity.map(|q| q.to_string()),
            self.latency_text(),
        ]
    }

    /// Each column as an SQL literal, in [`ORDER_COLUMNS`] order.
    pub fn sql_literals(&self) -> [String; 7] {
        self.fields().map(|f| match f {
            Some(v) => format!("'{v}'"),
            None => "NULL".to_string(),
        })
    }

    /// `(...)` for `INSERT ... VALUES`, in [`ORDER_COLUMNS`] order.
    pub fn sql_values(&self) -> String {
        format!("({})", self.sql_literals().join(", "))
    }

    /// One line of COPY text format, in [`ORDER_COLUMNS`] order.
    pub fn copy_line(&self) -> String {
        let fields: Vec<String> = self
            .fields()
            .iter()
            .map(|f| f.clone().unwrap_or_else(|| "\\N".to_string()))
            .collect();
        format!("{}\n", fields.join("\t"))
    }
}

/// `BASE_TIME` plus `offset_ms` (within a day either side), as timestamptz text.
pub fn timestamp_text(offset_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    assert!(offset_ms.abs() < DAY_MS, "offset out of range");
    let (day, ms) = if offset_ms < 0 {
        ("2023-12-31", DAY_MS + offset_ms)
    } else {
        ("2024-01-01", offset_ms)
    };
    format!(
        "{day} {:02}:{:02}:{:02}.{:03}+00",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `INSERT INTO <table> (<columns>) VALUES ...` for the given rows.
pub fn insert_sql(table: &str, rows: &[OrderRow]) -> String {
    let values: Vec<String> = rows.iter().map(OrderRow::sql_values).collect();
    format!(
        "INSERT INTO {table} ({ORDER_COLUMNS}) VALUES {}",
        values.join(", ")
    )
}

/// The COPY statement that [`OrderRow::copy_line`] lines feed.
pub fn copy_sql(table: &str) -> String {
    format!("COPY {table} ({ORDER_COLUMNS}) FROM STDIN")
}

/// COPYs `rows` into `table` on `client`; returns the rows copied.
pub fn copy_rows(
    client: &mut Client,
    table: &str,
    rows: &[OrderRow],
) -> Result<u64, postgres::Error> {
    use std::io::Write;
    let mut data = String::new();
    for row in rows {
        data.push_str(&row.copy_line());
    }
    let mut writer = client.copy_in(&copy_sql(table))?;
    // A write error means the connection broke; finish() then reports the server's error.
    let _ = writer.write_all(data.as_bytes());
    writer.finish()
}

/// What one session does.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub transactions: usize,
    /// Each transaction writes to one of these tables (so sessions never deadlock on
    /// table lock order with the TRUNCATE, which locks them all).
    pub tables: Vec<String>,
    /// At this transaction index, TRUNCATE every table (in a transaction that inserts
    /// before and after it and commits); a little earlier, the same rolled back.
    pub truncate_at: Option<usize>,
    /// Reconnect and carry on when the connection is lost (the crash tests kill
    /// backends; Postgres then restarts all of them).
    pub survive_crashes: bool,
    /// Pause between transactions, to stretch a workload over a crash.
    pub pause: Duration,
    /// Stop early once this is set (the crash tests run writers until they are done).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Config {
    pub fn new(seed: u64, transactions: usize) -> Config {
        Config {
            seed,
            transactions,
            tables: vec!["orders".to_string(), "orders_p".to_string()],
            truncate_at: None,
            survive_crashes: false,
            pause: Duration::ZERO,
            stop: None,
        }
    }
}

/// What happened in one session.
#[derive(Debug, Default)]
pub struct Report {
    pub committed: usize,
    pub rolled_back: usize,
    /// Transactions rolled back by a deadlock or serialization failure between sessions.
    pub retried: usize,
    /// The first few of those errors, to tell row-lock conflicts between sessions from
    /// anything else.
    pub retry_reasons: Vec<String>,
    /// Committed TRUNCATE transactions.
    pub truncated: usize,
    pub reconnects: usize,
    /// Unexpected errors, each with the statement that caused it.
    pub errors: Vec<String>,
}

/// A statement that failed, and its error.
struct Failure {
    sql: String,
    error: postgres::Error,
    /// Set for the TRUNCATE transaction, which holds every table exclusively and so has
    /// no legitimate reason to deadlock: any error there is a failure.
    strict: bool,
}

type Step<T = ()> = Result<T, Failure>;

struct Session<'a> {
    url: &'a str,
    cfg: &'a Config,
    client: Client,
    rng: StdRng,
    table: String,
    truncated: usize,
}

/// Connects, retrying for up to a minute (the server may be in crash recovery).
pub fn connect_retrying(url: &str) -> Result<Client, postgres::Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(url, postgres::NoTls) {
            Ok(mut c) => {
                // Bound every statement so a hang shows up as a failure, not a stuck test.
                c.batch_execute("SET statement_timeout = '60s'")?;
                return Ok(c);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_connection_loss(client: &Client, e: &postgres::Error) -> bool {
    if client.is_closed() || e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        // No server error: the socket broke.
        None => true,
    }
}

impl Session<'_> {
    fn exec(&mut self, sql: String) -> Step {
        self.client.batch_execute(&sql).map_err(|error| Failure {
            sql,
            error,
            strict: false,
        })
    }

    /// Runs a statement expected to fail with `code` after earlier rows of it already
    /// fired their triggers. Success is tolerated (an UPDATE may find no row to fail on).
    fn exec_failing(&mut self, sql: String, code: &SqlState) -> Step {
        match self.client.batch_execute(&sql) {
            Err(e) if e.code() == Some(code) => Ok(()),
            Err(error) => Err(Failure {
                sql,
                error,
                strict: false,
            }),
            Ok(()) => Ok(()),
        }
    }

    fn rows(&mut self, n: usize) -> Vec<OrderRow> {
        (0..n).map(|_| OrderRow::random(&mut self.rng)).collect()
    }

    fn insert(&mut self, n: usize) -> Step {
        let rows = self.rows(n);
        let sql = insert_sql(&self.table, &rows);
        self.exec(sql)
    }

    fn copy(&mut self) -> Step {
        let n = self.rng.random_range(5..80);
        let rows = self.rows(n);
        let table = self.table.clone();
        copy_rows(&mut self.client, &table, &rows)
            .map(|_| ())
            .map_err(|error| Failure {
                sql: format!("{} -- {n} rows", copy_sql(&table)),
                error,
                strict: false,
            })
    }

    /// The smallest and largest id in the current table (0, 0 when empty).
    fn id_range(&mut self) -> Step<(i64, i64)> {
        let sql = format!(
            "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM {}",
            self.table
        );
        let row = self.client.query_one(&sql, &[]).map_err(|error| Failure {
            sql,
            error,
            strict: false,
        })?;
        Ok((row.get(0), row.get(1)))
    }

    /// `id = X` or a short id range, somewhere among the existing rows.
    fn target(&mut self) -> Step<String> {
        let (lo, hi) = self.id_range()?;
        let x = self.rng.random_range(lo..=hi.max(lo));
        Ok(if self.rng.random_bool(0.7) {
            format!("id = {x}")
        } else {
            format!("id BETWEEN {x} AND {}", x + self.rng.random_range(1..8))
        })
    }

    fn update(&mut self) -> Step {
        let target = self.target()?;
        let region = pick(&mut self.rng, &REGIONS).map_or("NULL".to_string(), |r| format!("'{r}'"));
        let channel =
            pick(&mut self.rng, &CHANNELS).map_or("NULL".to_string(), |c| format!("'{c}'"));
        let f = OrderRow::random(&mut self.rng).sql_literals();
        let set = match self.rng.random_range(0..6) {
            // Move between buckets (and, in orders_p, partitions).
            0 => format!(
                "created_at = created_at + {} * interval '1 second'",
                self.rng.random_range(-900..900)
            ),
            1 => format!("region = {region}, channel = {channel}"),
            // In and out of the filter (NULL status is out too).
            2 => "status = CASE WHEN status = 'cancelled' THEN 'paid' \
                  WHEN status IS NULL THEN 'pending' ELSE 'cancelled' END"
                .to_string(),
            3 => format!(
                "amount = {}, quantity = {}, latency_ms = {}",
                f[4], f[5], f[6]
            ),
            4 => format!(
                "created_at = {}, region = {region}, status = {}, amount = {}",
                f[0], f[3], f[4]
            ),
            // Changes nothing a KPI sees.
            _ => "status = status".to_string(),
        };
        let sql = format!("UPDATE {} SET {set} WHERE {target}", self.table);
        self.exec(sql)
    }

    fn delete(&mut self) -> Step {
        let target = self.target()?;
        let sql = format!("DELETE FROM {} WHERE {target}", self.table);
        self.exec(sql)
    }

    /// A statement that fails after some of its rows fired triggers: their deltas must
    /// vanish with the statement.
    fn failing_statement(&mut self) -> Step {
        let (lo, hi) = self.id_range()?;
        let sql = if hi == 0 || self.rng.random_bool(0.5) {
            let rows = self.rows(3);
            format!(
                "{}, (NULL, 'eu', 'web', 'paid', 1, 1, 1)",
                insert_sql(&self.table, &rows)
            )
        } else {
            // Several rows updated, one of which violates NOT NULL.
            let x = self.rng.random_range(lo..=hi);
            format!(
                "UPDATE {} SET amount = amount + 1, \
                 created_at = CASE WHEN id = {hi} THEN NULL ELSE created_at END \
                 WHERE id BETWEEN {x} AND {} OR id = {hi}",
                self.table,
                x + 5
            )
        };
        self.exec_failing(sql, &SqlState::NOT_NULL_VIOLATION)
    }

    fn random_statement(&mut self) -> Step {
        match self.rng.random_range(0..10) {
            0..=2 => {
                let n = self.rng.random_range(1..4);
                self.insert(n)
            }
            3 => self.copy(),
            4..=7 => self.update(),
            _ => self.delete(),
        }
    }

    fn statements(&mut self, min: usize, max: usize) -> Step {
        let n = self.rng.random_range(min..=max);
        for _ in 0..n {
            self.random_statement()?;
        }
        Ok(())
    }

    fn savepoint_transaction(&mut self) -> Step<bool> {
        self.exec("BEGIN".into())?;
        self.statements(1, 2)?;
        self.exec("SAVEPOINT a".into())?;
        self.statements(1, 3)?;
        if self.rng.random_bool(0.5) {
            // A released savepoint nested in one rolled back: rolled back too.
            self.exec("SAVEPOINT b".into())?;
            self.statements(1, 2)?;
            self.exec("RELEASE SAVEPOINT b".into())?;
        }
        self.exec("ROLLBACK TO SAVEPOINT a".into())?;
        self.statements(0, 2)?;
        self.exec("SAVEPOINT c".into())?;
        self.statements(1, 2)?;
        if self.rng.random_bool(0.4) {
            self.failing_statement()?;
            self.exec("ROLLBACK TO SAVEPOINT c".into())?;
        } else {
            self.exec("RELEASE SAVEPOINT c".into())?;
        }
        self.statements(0, 2)?;
        let commit = self.rng.random_bool(0.9);
        self.exec(if commit { "COMMIT" } else { "ROLLBACK" }.into())?;
        Ok(commit)
    }

    /// TRUNCATE of every table inside a transaction that also inserts, committed or not.
    fn truncate_transaction(&mut self, commit: bool) -> Step<bool> {
        self.exec("BEGIN".into())?;
        self.insert(2)?;
        let tables = self.cfg.tables.join(", ");
        self.exec(format!("TRUNCATE {tables}"))?;
        // Rows inserted after the TRUNCATE in the same transaction must count.
        for table in self.cfg.tables.clone() {
            self.table = table;
            self.insert(3)?;
        }
        self.exec(if commit { "COMMIT" } else { "ROLLBACK" }.into())?;
        Ok(commit)
    }

    /// One transaction; `Ok(true)` if it committed.
    fn transaction(&mut self, index: usize) -> Step<bool> {
        let i = self.rng.random_range(0..self.cfg.tables.len());
        self.table = self.cfg.tables[i].clone();
        if let Some(at) = self.cfg.truncate_at {
            let strict = |f: Failure| Failure { strict: true, ..f };
            if index == at {
                let committed = self.truncate_transaction(true).map_err(strict)?;
                self.truncated += 1;
                return Ok(committed);
            }
            if index + 20 == at {
                return self.truncate_transaction(false).map_err(strict);
            }
        }
        match self.rng.random_range(0..100) {
            0..=19 => self.insert(1).map(|_| true),
            20..=29 => {
                let n = self.rng.random_range(2..20);
                self.insert(n).map(|_| true)
            }
            30..=33 => self.copy().map(|_| true),
            34..=49 => self.update().map(|_| true),
            50..=57 => self.delete().map(|_| true),
            58..=71 => {
                self.exec("BEGIN".into())?;
                self.statements(2, 5)?;
                self.exec("COMMIT".into())?;
                Ok(true)
            }
            72..=79 => {
                self.exec("BEGIN".into())?;
                self.statements(1, 4)?;
                self.exec("ROLLBACK".into())?;
                Ok(false)
            }
            80..=91 => self.savepoint_transaction(),
            92..=95 => self.failing_statement().map(|_| false),
            _ => {
                // An error aborts the whole transaction, earlier statements included.
                self.exec("BEGIN".into())?;
                self.statements(1, 3)?;
                self.failing_statement()?;
                self.exec("ROLLBACK".into())?;
                Ok(false)
            }
        }
    }
}

/// Runs one session's workload against `url`.
pub fn run(url: &str, cfg: &Config) -> Report {
    let mut report = Report::default();
    let client = match connect_retrying(url) {
        Ok(c) => c,
        Err(e) => {
            report
                .errors
                .push(format!("connect: {}", describe_error(&e)));
            return report;
        }
    };
    let mut s = Session {
        url,
        cfg,
        client,
        rng: StdRng::seed_from_u64(cfg.seed),
        table: cfg.tables[0].clone(),
        truncated: 0,
    };
    for index in 0..cfg.transactions {
        if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            break;
        }
        match s.transaction(index) {
            Ok(true) => report.committed += 1,
            Ok(false) => report.rolled_back += 1,
            Err(Failure { sql, error, strict }) => {
                if is_connection_loss(&s.client, &error) {
                    if !cfg.survive_crashes {
                        report.errors.push(format!(
                            "connection lost at: {sql}: {}",
                            describe_error(&error)
                        ));
                        return report;
                    }
                    match connect_retrying(s.url) {
                        Ok(c) => {
                            s.client = c;
                            report.reconnects += 1;
                        }
                        Err(e) => {
                            report
                                .errors
                                .push(format!("reconnect: {}", describe_error(&e)));
                            return report;
                        }
                    }
                    continue;
                }
                let retryable = error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    || error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE);
                if retryable && !strict {
                    report.retried += 1;
                    if report.retry_reasons.len() < 5 {
                        report
                            .retry_reasons
                            .push(format!("{sql} -> {}", describe_error(&error)));
                    }
                } else {
                    report
                        .errors
                        .push(format!("{sql}\n    -> {}", describe_error(&error)));
                }
                // Leave no aborted transaction behind (a no-op outside one).
                let _ = s.client.batch_execute("ROLLBACK");
                if report.errors.len() >= 10 {
                    report
                        .errors
                        .push("too many errors, session stopped".to_string());
                    return report;
                }
            }
        }
        if !cfg.pause.is_zero() {
            std::thread::sleep(cfg.pause);
        }
    }
    report.truncated = s.truncated;
    report
}

/// Runs one session per config on its own thread and returns the reports in order.
pub fn run_concurrently(url: &str, configs: &[Config]) -> Vec<Report> {
    let handles: Vec<_> = configs
        .iter()
        .cloned()
        .map(|cfg| {
            let url = url.to_string();
            std::thread::spawn(move || run(&url, &cfg))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("workload thread panicked"))
        .collect()
}

/// Every session's unexpected errors, labelled with the session.
pub fn errors(reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.errors.iter().map(move |e| format!("session {i}: {e}")))
        .collect()
}

/// Panics listing every session's unexpected errors, if any.
pub fn assert_no_errors(reports: &[Report]) {
    let errors = errors(reports);
    assert!(
        errors.is_empty(),
        "unexpected errors in the workload:\n{}",
        errors.join("\n")
    );
}

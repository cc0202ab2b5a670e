//! Bad KPI definitions: each fails with a SQLSTATE, a message and a hint, and leaves
//! nothing behind (no catalog entry, relation, trigger or function). Privileges: only a
//! source table's owner defines KPIs on it, and KPI data is readable only with a grant.

use pg_kpi_e2e::postgres::error::SqlState;
use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::schema::{self, lit};
use pg_kpi_e2e::{describe_error, Cluster};

/// A `kpi.create` call: a valid definition that each case breaks in one place.
#[derive(Clone)]
struct Def {
    name: String,
    source: String,
    time_column: String,
    measures: String,
    dimensions: String,
    filter: Option<String>,
    bucket: String,
}

impl Default for Def {
    fn default() -> Def {
        Def {
            name: "e1".into(),
            source: "public.orders".into(),
            time_column: "created_at".into(),
            measures: "n = count(*), revenue = sum(amount * quantity)".into(),
            dimensions: "{region}".into(),
            filter: None,
            bucket: "1 minute".into(),
        }
    }
}

impl Def {
    fn sql(&self) -> String {
        let mut sql = format!(
            "SELECT kpi.create(name => {}, source => {}, time_column => {}, measures => {}, \
             dimensions => {}, bucket => {}",
            lit(&self.name),
            lit(&self.source),
            lit(&self.time_column),
            lit(&self.measures),
            lit(&self.dimensions),
            lit(&self.bucket)
        );
        if let Some(filter) = &self.filter {
            sql.push_str(&format!(", filter => {}", lit(filter)));
        }
        sql.push(')');
        sql
    }
    fn name(self, v: &str) -> Def {
        Def {
            name: v.into(),
            ..self
        }
    }
    fn source(self, v: &str) -> Def {
        Def {
            source: v.into(),
            ..self
        }
    }
    fn time_column(self, v: &str) -> Def {
        Def {
            time_column: v.into(),
            ..self
        }
    }
    fn measures(self, v: &str) -> Def {
        Def {
            measures: v.into(),
            ..self
        }
    }
    fn dimensions(self, v: &str) -> Def {
        Def {
            dimensions: v.into(),
            ..self
        }
    }
    fn filter(self, v: &str) -> Def {
        Def {
            filter: Some(v.into()),
            ..self
        }
    }
    fn bucket(self, v: &str) -> Def {
        Def {
            bucket: v.into(),
            ..self
        }
    }
}

/// Everything a failed definition could leave behind, as comparable text.
fn footprint(client: &mut Client) -> String {
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(string_agg(name::text, ',' ORDER BY name), '') FROM kpi.list()),
                    (SELECT coalesce(string_agg(relname || ':' || relkind::text, ',' ORDER BY relname), '')
                       FROM pg_class WHERE relnamespace = 'kpi'::regnamespace),
                    (SELECT coalesce(string_agg(tgrelid::regclass::text || '.' || tgname, ','
                                                ORDER BY tgrelid::regclass::text, tgname), '')
                       FROM pg_trigger),
                    (SELECT coalesce(string_agg(oid::regprocedure::text, ',' ORDER BY oid::regprocedure::text), '')
                       FROM pg_proc WHERE pronamespace = 'kpi'::regnamespace),
                    (SELECT coalesce(string_agg(typname, ',' ORDER BY typname), '')
                       FROM pg_type WHERE typnamespace = 'kpi'::regnamespace)",
            &[],
        )
        .unwrap_or_else(|e| panic!("footprint: {}", describe_error(&e)));
    format!(
        "kpi.list(): [{}]\nrelations in kpi: [{}]\ntriggers: [{}]\nfunctions in kpi: [{}]\ntypes in kpi: [{}]",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3),
        row.get::<_, String>(4)
    )
}

fn kpi_names(client: &mut Client) -> Vec<String> {
    client
        .query("SELECT name::text FROM kpi.list()", &[])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Tables the smuggling attempts try to drop: they must survive every case.
const CANARIES: &str =
    "SELECT to_regclass('public.orders') IS NOT NULL AND to_regclass('public.canary') IS NOT NULL";

struct Checker<'a> {
    client: &'a mut Client,
    failures: Vec<String>,
}

impl Checker<'_> {
    /// Runs `sql` (as the current role, possibly after `SET ROLE`), which must fail with a
    /// SQLSTATE (`expected_code` if given, and never XX000, the code of an unhandled
    /// internal error or a Rust panic), a message and a hint, leaving the footprint as it was.
    fn expect_error(
        &mut self,
        label: &str,
        role: Option<&str>,
        sql: &str,
        expected_code: Option<&SqlState>,
    ) {
        self.expect_failure(label, role, sql, expected_code, true);
    }

    /// Like [`Checker::expect_error`] for errors Postgres raises itself (reading a view
    /// without a grant), which carry no hint.
    fn expect_denied(&mut self, label: &str, role: Option<&str>, sql: &str) {
        self.expect_failure(
            label,
            role,
            sql,
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            false,
        );
    }

    fn expect_failure(
        &mut self,
        label: &str,
        role: Option<&str>,
        sql: &str,
        expected_code: Option<&SqlState>,
        require_hint: bool,
    ) {
        let before = footprint(self.client);
        let kpis_before = kpi_names(self.client);
        if let Some(role) = role {
            self.client
                .batch_execute(&format!("SET ROLE {role}"))
                .expect("SET ROLE");
        }
        let result = self.client.batch_execute(sql);
        self.client.batch_execute("RESET ROLE").expect("RESET ROLE");
        match &result {
            Ok(()) => {
                self.failures
                    .push(format!("{label}: succeeded but must fail\n    {sql}"));
                // Keep the following cases independent of this one.
                for name in kpi_names(self.client) {
                    if !kpis_before.contains(&name) {
                        let _ = self
                            .client
                            .batch_execute(&format!("SELECT kpi.drop({})", lit(&name)));
                    }
                }
            }
            Err(e) => match e.as_db_error() {
                None => self
                    .failures
                    .push(format!("{label}: no server error: {e}\n    {sql}")),
                Some(db) => {
                    eprintln!("{label}: {}", describe_error(e));
                    let code = db.code();
                    let mut problems = Vec::new();
                    if *code == SqlState::INTERNAL_ERROR {
                        problems.push("SQLSTATE XX000 (internal error)".to_string());
                    }
                    if let Some(expected) = expected_code {
                        if code != expected {
                            problems.push(format!(
                                "SQLSTATE {} instead of {}",
                                code.code(),
                                expected.code()
                            ));
                        }
                    }
                    if db.message().trim().is_empty() {
                        problems.push("empty message".to_string());
                    }
                    if require_hint && db.hint().is_none_or(|h| h.trim().is_empty()) {
                        problems.push("no hint".to_string());
                    }
                    if !problems.is_empty() {
                        self.failures.push(format!(
                            "{label}: {}\n    {sql}\n    -> {}",
                            problems.join(", "),
                            describe_error(e)
                        ));
                    }
                }
            },
        }
        let after = footprint(self.client);
        if after != before {
            self.failures.push(format!(
                "{label}: left something behind\n    {sql}\n  before:\n{before}\n  after:\n{after}"
            ));
        }
        let intact: bool = self
            .client
            .query_one(CANARIES, &[])
            .expect("canaries")
            .get(0);
        if !intact {
            self.failures.push(format!(
                "{label}: a smuggled statement dropped a table!\n    {sql}"
            ));
            self.client
                .batch_execute("CREATE TABLE IF NOT EXISTS canary (x int)")
                .expect("recreate canary");
        }
    }

    fn expect_ok(&mut self, label: &str, role: Option<&str>, sql: &str) {
        if let Some(role) = role {
            self.client
                .batch_execute(&format!("SET ROLE {role}"))
                .expect("SET ROLE");
        }
        let result = self.client.batch_execute(sql);
        self.client.batch_execute("RESET ROLE").expect("RESET ROLE");
        if let Err(e) = result {
            self.failures.push(format!(
                "{label}: must succeed\n    {sql}\n    -> {}",
                describe_error(&e)
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} failures:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn setup(cluster: &Cluster) -> Client {
    let mut client = cluster.connect();
    schema::create_orders_tables(&mut client);
    client
        .batch_execute("CREATE TABLE canary (x int); CREATE TABLE other (col int)")
        .expect("setup");
    client
}

#[test]
fn bad_definitions_fail_cleanly() {
    let cluster = Cluster::start();
    let mut client = setup(&cluster);
    let mut c = Checker {
        client: &mut client,
        failures: Vec::new(),
    };

    // Controls: the base definition is valid, and create + drop leaves no trace, so each
    // failure below is due to the one argument it changes.
    let empty = footprint(c.client);
    c.expect_ok("valid base definition", None, &Def::default().sql());
    c.expect_ok("drop", None, "SELECT kpi.drop('e1')");
    let after_drop = footprint(c.client);
    if after_drop != empty {
        c.failures.push(format!(
            "kpi.create + kpi.drop left something behind:\n  before:\n{empty}\n  after:\n{after_drop}"
        ));
    }
    let longest = "a".repeat(48);
    c.expect_ok(
        "48-character name",
        None,
        &Def::default().name(&longest).sql(),
    );
    c.expect_ok("drop", None, &format!("SELECT kpi.drop('{longest}')"));
    c.expect_ok("KPI named dup", None, &Def::default().name("dup").sql());

    let d = Def::default;
    let cases: Vec<(&str, Def)> = vec![
        ("unknown table", d().source("public.nope")),
        ("unknown column in a measure", d().measures("n = sum(nope)")),
        ("unknown time column", d().time_column("nope")),
        ("text time column", d().time_column("region")),
        ("integer time column", d().time_column("quantity")),
        ("unknown dimension column", d().dimensions("{nope}")),
        ("sum of text", d().measures("x = sum(region)")),
        ("avg of text", d().measures("x = avg(status)")),
        ("min of text", d().measures("x = min(region)")),
        ("invalid expression", d().measures("x = sum(amount +)")),
        ("unbalanced parenthesis", d().measures("x = sum(amount")),
        ("unknown measure kind", d().measures("x = median(amount)")),
        ("measure without a name", d().measures("sum(amount)")),
        ("empty measures", d().measures("")),
        (
            "measure over another table's column",
            d().measures("x = sum(other.col)"),
        ),
        (
            "measure with a subquery",
            d().measures("x = sum((select 1 from other))"),
        ),
        (
            "measure with an aggregate inside",
            d().measures("x = sum(sum(amount))"),
        ),
        ("filter over another table", d().filter("other.col > 0")),
        (
            "filter with a subquery",
            d().filter("(select true from other limit 1)"),
        ),
        ("filter that is an integer", d().filter("quantity")),
        ("filter that is numeric", d().filter("amount * 2")),
        ("invalid filter", d().filter("status <>")),
        ("duplicate KPI name", d().name("dup")),
        (
            "duplicate measure names",
            d().measures("n = count(*), n = sum(amount)"),
        ),
        (
            "measure named like a dimension",
            d().measures("region = count(*)"),
        ),
        ("measure named bucket", d().measures("bucket = count(*)")),
        (
            "measure name with a space",
            d().measures("\"a b\" = count(*)"),
        ),
        ("uppercase name", d().name("Checkout")),
        ("name with a leading digit", d().name("1checkout")),
        ("49-character name", d().name(&"a".repeat(49))),
        ("empty name", d().name("")),
        ("name with a hyphen", d().name("check-out")),
        ("zero bucket", d().bucket("0 seconds")),
        ("negative bucket", d().bucket("-1 minute")),
        ("bucket in months", d().bucket("1 month")),
        ("bucket in years", d().bucket("1 year")),
        ("bucket mixing months and days", d().bucket("1 mon 2 days")),
        // Smuggling a second statement, or commenting out the rest, through every
        // text argument. None is a valid expression or column name on its own.
        (
            "statement smuggled through measures",
            d().measures("x = sum(amount); drop table canary; select sum(1)"),
        ),
        (
            "parenthesis break-out through measures",
            d().measures("x = sum(amount)); drop table canary; select ((1"),
        ),
        (
            "comment trick in measures",
            d().measures("x = sum(amount)) --"),
        ),
        (
            "statement smuggled through filter",
            d().filter("true); drop table canary; select (true"),
        ),
        ("comment trick in filter", d().filter("true) --")),
        (
            "quote break-out through filter",
            d().filter("status <> 'x'); drop table canary; --"),
        ),
        (
            "statement smuggled through time_column",
            d().time_column("created_at; drop table canary"),
        ),
        (
            "comment trick in time_column",
            d().time_column("created_at) --"),
        ),
        (
            "quoted identifier break-out through time_column",
            d().time_column("created_at\"; drop table canary; --"),
        ),
        (
            "statement smuggled through dimensions",
            d().dimensions("{\"region; drop table canary\"}"),
        ),
        (
            "comment trick in dimensions",
            d().dimensions("{\"region) --\"}"),
        ),
        (
            "expression as a dimension",
            d().dimensions("{\"region, (select 1)\"}"),
        ),
        (
            "statement smuggled through name",
            d().name("x; drop table canary"),
        ),
    ];
    for (label, def) in &cases {
        c.expect_error(label, None, &def.sql(), None);
    }
    c.finish();
}

#[test]
fn only_the_owner_defines_kpis() {
    let cluster = Cluster::start();
    let mut client = setup(&cluster);
    client
        .batch_execute(
            "CREATE ROLE alice;
             CREATE TABLE alice_orders (LIKE orders);
             ALTER TABLE alice_orders OWNER TO alice",
        )
        .expect("roles");
    let mut c = Checker {
        client: &mut client,
        failures: Vec::new(),
    };
    // The owner of a table may define KPIs on it without being a superuser...
    c.expect_ok(
        "owner defines a KPI on her table",
        Some("alice"),
        &Def::default()
            .name("alices")
            .source("public.alice_orders")
            .sql(),
    );
    c.expect_ok(
        "owner reads her KPI",
        Some("alice"),
        "SELECT * FROM kpi.alices",
    );
    // ...but not on somebody else's.
    c.expect_error(
        "non-owner defines a KPI on someone else's table",
        Some("alice"),
        &Def::default().sql(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
    );
    c.finish();
}

#[test]
fn kpi_data_is_readable_only_with_a_grant() {
    let cluster = Cluster::start();
    let mut client = setup(&cluster);
    client
        .batch_execute(&format!(
            "{}; CREATE ROLE bob; CREATE ROLE carol;
             INSERT INTO orders (created_at, region, amount, quantity)
               VALUES (now(), 'eu', 10, 1)",
            Def::default().name("secret").sql()
        ))
        .unwrap_or_else(|e| panic!("setup: {}", describe_error(&e)));
    let readable: bool = client
        .query_one(
            "SELECT has_table_privilege('bob', 'kpi.secret', 'SELECT')",
            &[],
        )
        .expect("has_table_privilege")
        .get(0);
    let mut c = Checker {
        client: &mut client,
        failures: Vec::new(),
    };
    if readable {
        c.failures
            .push("a fresh role has SELECT on kpi.secret (PUBLIC must have no grant)".to_string());
    }
    c.expect_denied(
        "a fresh role reads a KPI view",
        Some("bob"),
        "SELECT * FROM kpi.secret",
    );
    // The read functions must not be a way around the view's privileges.
    for (label, sql) in [
        ("kpi.value", "SELECT kpi.value('secret', 'n')"),
        ("kpi.snapshot", "SELECT kpi.snapshot('secret')"),
        (
            "kpi.series",
            "SELECT * FROM kpi.series('secret', 'n', now() - interval '1 hour')",
        ),
        ("kpi.top", "SELECT * FROM kpi.top('secret', 'n', 'region')"),
    ] {
        c.expect_error(
            &format!("a fresh role calls {label}"),
            Some("bob"),
            sql,
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        );
    }
    // A grant on the view is all a reader needs.
    c.expect_ok("grant", None, "GRANT SELECT ON kpi.secret TO carol");
    c.expect_ok(
        "a granted role reads the view",
        Some("carol"),
        "SELECT * FROM kpi.secret",
    );
    c.expect_ok(
        "a granted role calls kpi.value",
        Some("carol"),
        "SELECT kpi.value('secret', 'n')",
    );
    c.finish();
}

/// With pg_kpi preloaded, its utility hook sees every utility statement; an error raised
/// inside one (here a bad value in a COPY into a table with a KPI) must reach the client
/// as Postgres raised it: its CONTEXT naming the line and column, and no Rust backtrace.
#[test]
fn errors_in_utility_statements_keep_their_context() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE TABLE sales (ts timestamptz NOT NULL, total int NOT NULL);
             SELECT kpi.create(name => 'sales', source => 'sales', time_column => 'ts',
                               measures => 'n = count(*), total = sum(total)');",
        )
        .expect("setup");
    let mut copy = client
        .copy_in("COPY sales FROM STDIN")
        .expect("COPY starts");
    use std::io::Write;
    copy.write_all(b"2026-12-07 10:00:00+00\t1\n2026-12-07 10:01:00+00\tmany\n")
        .expect("rows sent");
    let err = copy.finish().expect_err("a bad integer");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(
        db.code(),
        &SqlState::INVALID_TEXT_REPRESENTATION,
        "{}",
        describe_error(&err)
    );
    let context = db.where_().unwrap_or_default();
    assert!(
        context.contains("line 2") && context.contains("column total"),
        "COPY's context is lost: {}",
        describe_error(&err)
    );
    assert!(
        !db.detail().unwrap_or_default().contains("backtrace"),
        "a Rust backtrace in DETAIL: {}",
        describe_error(&err)
    );
    // Nothing of the failed COPY was counted.
    let n: i64 = client
        .query_one("SELECT coalesce(sum(n), 0)::bigint FROM kpi.sales", &[])
        .expect("read")
        .get(0);
    assert_eq!(n, 0);
}

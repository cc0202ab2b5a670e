//! The Grafana dashboard of docs/grafana/pg_kpi-dashboard.json cannot rot: every SQL query
//! in it (panels, template variables, annotations) runs against a real cluster with KPIs,
//! eight days of rows and a firing alert, for every measure the repeated panels show and
//! for the 1 h / 24 h / 7 d ranges, with Grafana's macros expanded the way its PostgreSQL
//! data source expands them.

use std::path::Path;

use pg_kpi_e2e::postgres::{Client, SimpleQueryMessage};
use pg_kpi_e2e::{describe_error, Cluster};

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/pg_kpi-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// A query of the dashboard: where it is (for messages) and its SQL.
struct Query {
    place: String,
    sql: String,
}

fn queries(dash: &serde_json::Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            out.push(Query {
                place: format!("panel {title:?}"),
                sql: t["rawSql"].as_str().expect("rawSql").to_string(),
            });
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] == "query" {
            out.push(Query {
                place: format!("variable {}", var["name"]),
                sql: var["query"].as_str().expect("variable query").to_string(),
            });
        }
    }
    for a in dash["annotations"]["list"].as_array().expect("annotations") {
        out.push(Query {
            place: format!("annotation {}", a["name"]),
            sql: a["target"]["rawSql"].as_str().expect("rawSql").to_string(),
        });
    }
    out
}

/// The template variables and the dashboard's time range.
struct Vars<'a> {
    kpi: &'a str,
    measure: &'a str,
    dimension: &'a str,
    from: &'a str,
    to: &'a str,
    interval_ms: u64,
}

/// Expands Grafana's macros and variables as its PostgreSQL data source does
/// (`$__timeFrom()` is a quoted RFC 3339 literal, `$__timeFilter(c)` a BETWEEN of two).
fn expand(sql: &str, v: &Vars) -> String {
    let from = format!("'{}'", v.from);
    let to = format!("'{}'", v.to);
    let mut out = sql
        .replace("$__timeFrom()", &from)
        .replace("$__timeTo()", &to)
        .replace("$__interval_ms", &v.interval_ms.to_string())
        .replace("$__interval", &format!("{}ms", v.interval_ms));
    while let Some(start) = out.find("$__timeFilter(") {
        let rest = &out[start + "$__timeFilter(".len()..];
        let end = rest
            .find(')')
            .expect("closing parenthesis of $__timeFilter");
        let column = rest[..end].trim().to_string();
        let expanded = format!("{column} BETWEEN {from} AND {to}");
        out.replace_range(start..start + "$__timeFilter(".len() + end + 1, &expanded);
    }
    out = out
        .replace("$measure", v.measure)
        .replace("$dimension", v.dimension)
        .replace("$kpi", v.kpi);
    // What is left would reach Postgres unexpanded: an unknown macro or variable.
    let left = out
        .match_indices('$')
        .filter(|(i, _)| {
            // `$$` quotes a string; `$name` would be a variable.
            let quote = out[..*i].ends_with('$') || out[i + 1..].starts_with('$');
            !quote
                && out[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '{')
        })
        .count();
    assert_eq!(left, 0, "unexpanded $ in {out}");
    out
}

/// Runs `sql`; the rows as text cells.
fn run(client: &mut Client, place: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{place}: {}\n{sql}", describe_error(&e)));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

const SETUP: &str = "
CREATE TABLE orders (ts timestamptz NOT NULL, region text, amount numeric(10,2), user_id int,
                     latency double precision);
INSERT INTO orders
SELECT now() - i * interval '1 minute', (ARRAY['eu','us','apac'])[1 + i % 3], 1 + i % 20, i % 50,
       (i % 30) * 2.5
  FROM generate_series(0, 8 * 24 * 60) i;
SELECT kpi.create(name => 'sales', source => 'orders', time_column => 'ts',
    measures => 'orders = count(*), revenue = sum(amount), aov = avg(amount),
                 buyers = count_distinct(user_id), p95 = percentile(latency, 0.95)',
    dimensions => '{region}', bucket => '1 minute');
SELECT kpi.create_alert(name => 'sales_up', kpi => 'sales', condition => 'revenue > 0',
    \"window\" => '1 hour', severity => 'critical', group_by => 'region');
SELECT kpi.fold();
SELECT kpi.evaluate_alerts();";

#[test]
fn every_query_of_the_grafana_dashboard_runs_against_kpis() {
    let dash = dashboard();
    // Every query goes to the data source picked in the $datasource variable.
    let ds_var = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds_var["query"], "grafana-postgresql-datasource");
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {} does not use $datasource",
                panel["title"]
            );
        }
    }

    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    let queries = queries(&dash);
    let measures = ["orders", "revenue", "aov", "buyers", "p95"];
    // (range, Grafana's interval for about 1,000 points over it); the range ends a minute
    // from now, as a browser's "now" comes after the rows just written.
    let ranges = [("1 hour", 5_000), ("24 hours", 60_000), ("7 days", 600_000)];
    let mut runs = 0;
    for (range, interval_ms) in ranges {
        let bounds = run(
            &mut client,
            "time range",
            &format!(
                "SELECT to_char((now() - interval '{range}') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        to_char((now() + interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            ),
        );
        let (from, to) = (
            bounds[0][0].clone().expect("from"),
            bounds[0][1].clone().expect("to"),
        );
        for measure in measures {
            let vars = Vars {
                kpi: "sales",
                measure,
                dimension: "region",
                from: &from,
                to: &to,
                interval_ms,
            };
            for q in &queries {
                let sql = expand(&q.sql, &vars);
                let rows = run(&mut client, &q.place, &sql);
                runs += 1;
                assert!(
                    !rows.is_empty(),
                    "{} returned no rows for {measure} over {range}:\n{sql}",
                    q.place
                );
                // The panels with a comparison must have one: eight days of rows.
                if sql.contains("week_ago") && !sql.contains("snapshot") {
                    assert!(
                        rows.iter().any(|r| r[2].is_some()),
                        "{}: no week-ago value for {measure} over {range}",
                        q.place
                    );
                }
                if sql.contains("snapshot") {
                    assert!(
                        rows[0].iter().take(2).all(Option::is_some),
                        "{}: {measure} card lacks a value: {:?}",
                        q.place,
                        rows[0]
                    );
                }
            }
        }
    }
    println!("{} queries, {runs} runs", queries.len());

    // The variables offer what the panels need.
    let vars = Vars {
        kpi: "sales",
        measure: "orders",
        dimension: "region",
        from: "2000-01-01T00:00:00Z",
        to: "2000-01-01T00:00:00Z",
        interval_ms: 1000,
    };
    let var_values = |name: &str, client: &mut Client| -> Vec<String> {
        let q = queries
            .iter()
            .find(|q| q.place == format!("variable \"{name}\""))
            .unwrap_or_else(|| panic!("no variable {name}"));
        run(client, &q.place, &expand(&q.sql, &vars))
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect()
    };
    assert_eq!(var_values("kpi", &mut client), ["sales"]);
    assert_eq!(var_values("measure", &mut client), measures);
    assert_eq!(var_values("dimension", &mut client), ["region"]);

    // The alert table shows the firing alert, firing first.
    let alerts = queries
        .iter()
        .find(|q| q.sql.contains("FROM kpi.alerts"))
        .expect("an alerts panel");
    let rows = run(&mut client, &alerts.place, &expand(&alerts.sql, &vars));
    assert_eq!(rows[0][3].as_deref(), Some("firing"), "{rows:?}");
}

#[test]
fn a_query_with_an_unknown_macro_is_caught() {
    let vars = Vars {
        kpi: "sales",
        measure: "orders",
        dimension: "region",
        from: "2000-01-01T00:00:00Z",
        to: "2000-01-01T00:00:00Z",
        interval_ms: 1000,
    };
    assert_eq!(
        expand("SELECT $$x$$ WHERE $__timeFilter(ts)", &vars),
        "SELECT $$x$$ WHERE ts BETWEEN '2000-01-01T00:00:00Z' AND '2000-01-01T00:00:00Z'"
    );
    let caught = std::panic::catch_unwind(|| expand("SELECT $__unixEpochFrom()", &vars));
    assert!(caught.is_err(), "an unknown macro went through");
}

//! `POST /api/events/{source}` end to end: a real cluster with pg_kpi, the real
//! notifier on a socket, a real HTTP client (reqwest). Every bad input gets its 4xx JSON
//! error and writes nothing; accepted events are committed when the response returns
//! and the KPIs over the table count exactly them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{cluster, config, exec, pg, Notifier};
use jsonwebtoken::{encode, EncodingKey, Header};
use notifier::config::{Config, Secret, StaticToken};
use notifier::ingest::config::{ColumnSpec, SourceConfig};
use serde_json::{json, Value};

const ALL: &str = "ingest-everything-0123456789";
const SHOP: &str = "ingest-shop-only-0123456789";
const READER: &str = "kpis-reader-only-0123456789";
const JWT_SECRET: &str = "ingest-test-jwt-secret";

const SCHEMA: &str = "
    CREATE TABLE orders (
        id bigint PRIMARY KEY,
        created_at timestamptz NOT NULL,
        region varchar(8),
        total numeric(12,2) CHECK (total >= 0),
        paid boolean,
        ref uuid,
        raw jsonb);
    SELECT kpi.create(name => 'sales', source => 'orders', time_column => 'created_at',
                      measures => 'n = count(*), revenue = sum(total)',
                      dimensions => '{region}');
    CREATE TABLE clicks (at timestamptz NOT NULL DEFAULT now(), page text NOT NULL, ms int);";

fn column(path: Option<&str>, type_: Option<&str>, required: bool) -> ColumnSpec {
    ColumnSpec {
        path: path.map(str::to_string),
        type_: type_.map(str::to_string),
        required,
    }
}

fn source(name: &str, table: &str, columns: &[(&str, ColumnSpec)]) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        table: table.into(),
        extra_fields: "reject".into(),
        max_body_bytes: 64 * 1024,
        max_events: 100,
        columns: columns
            .iter()
            .map(|(c, s)| (c.to_string(), s.clone()))
            .collect(),
    }
}

fn token(name: &str, token: &str, kpis: &[&str], ingest: &[&str]) -> StaticToken {
    StaticToken {
        name: name.into(),
        token: Secret(token.into()),
        kpis: kpis.iter().map(|s| s.to_string()).collect(),
        ingest: ingest.iter().map(|s| s.to_string()).collect(),
    }
}

/// Sources: `shop_orders` (every kind of column, extra fields refused), `lenient`
/// (extra fields ignored, the whole event kept as jsonb), `small` (tight limits),
/// `broken` (a column that is not there).
fn ingest_config(cluster: &pg_kpi_e2e::Cluster) -> Config {
    let mut c = config(cluster);
    c.auth.tokens = vec![
        token("all", ALL, &[], &["*"]),
        token("shop", SHOP, &[], &["shop_orders"]),
        token("reader", READER, &["*"], &[]),
    ];
    c.auth.jwt_secret = Secret(JWT_SECRET.into());
    c.ingest.sources = vec![
        source(
            "shop_orders",
            "orders",
            &[
                ("id", column(None, Some("bigint"), true)),
                ("created_at", column(None, Some("timestamptz"), false)),
                ("region", column(Some("shipping.country"), None, false)),
                ("total", column(Some("total_price"), Some("numeric"), false)),
                ("paid", column(None, Some("boolean"), false)),
                ("ref", column(None, None, false)),
                ("raw", column(Some("meta"), Some("jsonb"), false)),
            ],
        ),
        SourceConfig {
            extra_fields: "ignore".into(),
            ..source(
                "lenient",
                "public.orders",
                &[
                    ("id", column(None, None, true)),
                    ("created_at", column(None, None, true)),
                    ("total", column(None, None, false)),
                    // The whole event: every field is taken, none is extra.
                    ("raw", column(Some("."), None, false)),
                ],
            )
        },
        SourceConfig {
            max_body_bytes: 200,
            max_events: 3,
            ..source(
                "small",
                "clicks",
                &[
                    ("page", column(None, Some("text"), true)),
                    ("ms", column(None, Some("integer"), false)),
                ],
            )
        },
        source(
            "broken",
            "orders",
            &[
                ("id", column(None, None, true)),
                ("created_at", column(None, None, true)),
                ("totl", column(None, None, false)),
            ],
        ),
    ];
    c
}

/// POSTs `body` to `/api/events/{source}` (with `?query` appended when given).
async fn post(
    n: &Notifier,
    source: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(n.url(&format!("/api/events/{source}")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, body)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

fn order(id: i64, total: &str, country: &str) -> Value {
    json!({"id": id, "created_at": now(), "total_price": total,
           "shipping": {"country": country}, "paid": true,
           "ref": "9f1c6a52-3c1e-4f4e-9d57-6a1f7f0b8e21"})
}

async fn count(cluster: &pg_kpi_e2e::Cluster, table: &str) -> i64 {
    let c = pg(cluster).await;
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Asserts a refusal: status, code, and for event errors the index and field.
#[track_caller]
fn refused(
    got: &(u16, Value),
    status: u16,
    code: &str,
    at: Option<(Option<u64>, Option<&str>)>,
    message: &str,
) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains(message), "{message:?} not in {m:?}");
    if let Some((index, field)) = at {
        assert_eq!(e["index"], json!(index), "{body}");
        assert_eq!(e["field"], json!(field), "{body}");
    }
}

#[tokio::test]
async fn every_bad_input_is_refused_and_writes_nothing() {
    let cluster = cluster().await;
    exec(&cluster, SCHEMA).await;
    let n = Notifier::start(ingest_config(&cluster)).await;
    let ok = |i| order(i, "10.00", "NO");

    // Who may send: no token, a token without the ingest scope, one scoped elsewhere.
    let body = json!([ok(1)]).to_string();
    refused(
        &post(&n, "shop_orders", None, body.clone()).await,
        401,
        "unauthorized",
        None,
        "missing bearer token",
    );
    refused(
        &post(&n, "shop_orders", Some(READER), body.clone()).await,
        403,
        "forbidden",
        None,
        "shop_orders",
    );
    refused(
        &post(&n, "lenient", Some(SHOP), body.clone()).await,
        403,
        "forbidden",
        None,
        "lenient",
    );
    refused(
        &post(&n, "nope", Some(ALL), body.clone()).await,
        404,
        "unknown_source",
        None,
        "nope",
    );

    // Bodies that are not events.
    for (bad, why) in [
        ("[{\"id\": 1,", "not valid JSON"),
        ("", "not valid JSON"),
        ("{\"id\": 1} trailing", "not valid JSON"),
        ("\"an event\"", "JSON object"),
        ("42", "JSON object"),
    ] {
        refused(
            &post(&n, "shop_orders", Some(ALL), bad).await,
            400,
            "bad_json",
            None,
            why,
        );
    }

    // Events the mapping refuses: the index of the first bad one, its field and why.
    let mut wrong_type = ok(3);
    wrong_type["total_price"] = json!(true);
    let mut missing = ok(2);
    missing.as_object_mut().unwrap().remove("id");
    let mut bad_time = ok(1);
    bad_time["created_at"] = json!("yesterday");
    let mut extra = ok(2);
    extra["coupon"] = json!("XMAS");
    let mut nested_extra = ok(1);
    nested_extra["shipping"]["city"] = json!("Oslo");
    let mut not_object = ok(1);
    not_object["shipping"] = json!("Oslo, NO");
    let mut big_int = ok(0);
    big_int["id"] = json!(1.5);
    let cases: Vec<(Vec<Value>, u64, &str, &str)> = vec![
        (
            vec![ok(10), ok(11), ok(12), wrong_type],
            3,
            "total_price",
            "expected a number or a string holding a decimal, got true",
        ),
        (vec![ok(10), ok(11), missing], 2, "id", "required"),
        (vec![ok(10), bad_time], 1, "created_at", "RFC 3339"),
        (
            vec![ok(10), ok(11), extra],
            2,
            "coupon",
            "no column takes this field",
        ),
        (vec![ok(10), nested_extra], 1, "shipping.city", "no column"),
        (
            vec![ok(10), not_object],
            1,
            "shipping.country",
            "not an object",
        ),
        (vec![big_int], 0, "id", "expected an integer"),
        (
            vec![ok(10), json!(["not", "an", "object"])],
            1,
            "",
            "JSON object",
        ),
    ];
    for (events, index, field, why) in cases {
        let field = (!field.is_empty()).then_some(field);
        refused(
            &post(&n, "shop_orders", Some(ALL), json!(events).to_string()).await,
            422,
            "bad_event",
            Some((Some(index), field)),
            why,
        );
    }
    // The same extra field is fine where extra fields are ignored.
    let mut extra = ok(20);
    extra["coupon"] = json!("XMAS");
    let (status, body) = post(&n, "lenient", Some(ALL), extra.to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 1})));
    let mut written = 1;

    // Values the database refuses: located by COPY's error context.
    let mut long_region = ok(31);
    long_region["shipping"]["country"] = json!("far too long");
    let mut bad_uuid = ok(30);
    bad_uuid["ref"] = json!("not-a-uuid");
    let mut overflow = ok(31);
    overflow["total_price"] = json!("12345678901234");
    let mut negative = ok(31);
    negative["total_price"] = json!("-5");
    for (events, status, code, index, field, why) in [
        (
            vec![ok(30), long_region],
            422,
            "bad_event",
            Some(1),
            Some("shipping.country"),
            "too long",
        ),
        (
            vec![bad_uuid],
            422,
            "bad_event",
            Some(0),
            Some("ref"),
            "uuid",
        ),
        (
            vec![ok(30), overflow],
            422,
            "bad_event",
            Some(1),
            Some("total_price"),
            "overflow",
        ),
        (
            vec![ok(30), negative],
            409,
            "rejected",
            Some(1),
            None,
            "check constraint",
        ),
        (
            vec![ok(30), ok(31), ok(30)],
            409,
            "rejected",
            Some(2),
            None,
            "duplicate key value violates unique constraint",
        ),
        // Against a row already in the table (the lenient source's).
        (
            vec![ok(30), ok(20)],
            409,
            "rejected",
            Some(1),
            None,
            "duplicate key",
        ),
    ] {
        refused(
            &post(&n, "shop_orders", Some(ALL), json!(events).to_string()).await,
            status,
            code,
            Some((index, field)),
            why,
        );
    }

    // Size limits: a declared length, a chunked body with none, and too many events.
    let big = format!("[{}]", vec!["{\"page\":\"/\"}"; 20].join(","));
    assert!(big.len() > 200);
    refused(
        &post(&n, "small", Some(ALL), big.clone()).await,
        413,
        "body_too_large",
        None,
        "200 bytes",
    );
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(50)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    refused(
        &post(
            &n,
            "small",
            Some(ALL),
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await,
        413,
        "body_too_large",
        None,
        "200 bytes",
    );
    let four = json!([{"page": "/a"}, {"page": "/b"}, {"page": "/c"}, {"page": "/d"}]);
    refused(
        &post(&n, "small", Some(ALL), four.to_string()).await,
        413,
        "too_many_events",
        None,
        "4 events",
    );
    let mut wrong = json!([{"page": "/a"}, {"page": "/b", "ms": 1.5}]);
    refused(
        &post(&n, "small", Some(ALL), wrong.to_string()).await,
        422,
        "bad_event",
        Some((Some(1), Some("ms"))),
        "integer",
    );
    wrong[1]["ms"] = json!(12);
    let (status, body) = post(&n, "small", Some(ALL), wrong.to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 2})), "{body}");

    // Nothing of any refused batch was written.
    assert_eq!(count(&cluster, "orders").await, written);
    assert_eq!(count(&cluster, "clicks").await, 2);
    let (status, body) = post(&n, "shop_orders", Some(ALL), json!([ok(30)]).to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 1})), "{body}");
    written += 1;
    assert_eq!(count(&cluster, "orders").await, written);

    // Every refusal was counted by its code.
    let m = n.metrics().await;
    for code in [
        "bad_event",
        "bad_json",
        "rejected",
        "body_too_large",
        "unknown_source",
    ] {
        assert!(
            m.contains(&format!("code=\"{code}\"")),
            "{code} not in metrics"
        );
    }
}

#[tokio::test]
async fn accepted_events_are_committed_and_counted_exactly_by_the_kpis() {
    let cluster = cluster().await;
    exec(&cluster, SCHEMA).await;
    let n = Notifier::start(ingest_config(&cluster)).await;

    // One event, as an object.
    let mut first = order(1, "19.99", "NO");
    first["meta"] = json!({"channel": "web", "tags": ["a", "b"]});
    let (status, body) = post(&n, "shop_orders", Some(SHOP), first.to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 1})), "{body}");
    // Committed when the response returned: another connection sees it at once.
    assert_eq!(count(&cluster, "orders").await, 1);

    // An array: numbers and decimal strings, three regions, optional fields left out.
    let events: Vec<Value> = (2..=101)
        .map(|i| {
            let region = ["NO", "SE", "DK"][(i % 3) as usize];
            let mut e = order(i, &format!("{}.{:02}", i, i % 100), region);
            if i % 2 == 0 {
                e["total_price"] = json!(i as f64 + 0.5);
            }
            if i % 5 == 0 {
                e.as_object_mut().unwrap().remove("paid");
                e.as_object_mut().unwrap().remove("ref");
            }
            e
        })
        .collect();
    let (status, body) = post(&n, "shop_orders", Some(SHOP), json!(events).to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 100})), "{body}");
    // An empty array writes nothing and is fine.
    let (status, body) = post(&n, "shop_orders", Some(SHOP), "[]").await;
    assert_eq!((status, &body), (200, &json!({"accepted": 0})), "{body}");

    // A JWT with an ingest claim, and the token in the URL (sendBeacon cannot set headers).
    let jwt = encode(
        &Header::default(),
        &json!({"sub": "browser", "exp": chrono::Utc::now().timestamp() + 60,
                "ingest": ["shop_orders"]}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = post(
        &n,
        "shop_orders",
        Some(&jwt),
        order(102, "0.01", "SE").to_string(),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"accepted": 1})), "{body}");
    let r = reqwest::Client::new()
        .post(n.url(&format!("/api/events/shop_orders?token={SHOP}")))
        .body(order(103, "3", "DK").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The whole event kept, with the field no column takes.
    let lenient = json!({"id": 104, "created_at": now(), "total": 1, "coupon": "XMAS"});
    let (status, body) = post(&n, "lenient", Some(ALL), lenient.to_string()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 1})), "{body}");

    // The rows are what was sent, and the KPI counts exactly them.
    let c = pg(&cluster).await;
    let row = c
        .query_one(
            "SELECT count(*), sum(total)::text, count(*) FILTER (WHERE region = 'NO'), \
                    count(paid), count(ref), \
                    (SELECT raw->>'channel' FROM orders WHERE id = 1), \
                    (SELECT total::text FROM orders WHERE id = 2), \
                    (SELECT total::text FROM orders WHERE id = 3), \
                    (SELECT raw->>'coupon' FROM orders WHERE id = 104) \
             FROM orders",
            &[],
        )
        .await
        .unwrap();
    let (rows, sum): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(rows, 104);
    // Left out of every fifth event, and not mapped by the lenient source.
    assert_eq!(row.get::<_, i64>(3), 104 - 21);
    assert_eq!(row.get::<_, i64>(4), 104 - 21);
    assert_eq!(row.get::<_, String>(5), "web");
    assert_eq!(row.get::<_, String>(8), "XMAS", "raw keeps the whole event");
    assert_eq!(row.get::<_, String>(6), "2.50");
    assert_eq!(row.get::<_, String>(7), "3.03");
    let kpi = c
        .query_one(
            "SELECT kpi.value('sales', 'n', '1 day')::text, \
                    kpi.value('sales', 'revenue', '1 day')::text, \
                    kpi.value('sales', 'n', '1 day', '{\"region\": \"NO\"}')::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(kpi.get::<_, String>(0), rows.to_string());
    assert_eq!(kpi.get::<_, String>(1), sum);
    assert_eq!(kpi.get::<_, String>(2), row.get::<_, i64>(2).to_string());

    // And the notifier's live value reaches the same count.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = reqwest::Client::new()
            .get(n.url("/api/kpis/sales"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"]["measures"]["n"]["window"] == json!(rows) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "live value never reached {rows}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A mapping to a column the table lacks is a clear error, and writes nothing.
    refused(
        &post(&n, "broken", Some(ALL), order(500, "1", "NO").to_string()).await,
        500,
        "ingest_misconfigured",
        None,
        "table public.orders has no column \"totl\"",
    );
    // A column dropped while the notifier runs: the next write says so too.
    exec(&cluster, "ALTER TABLE orders DROP COLUMN ref").await;
    refused(
        &post(
            &n,
            "shop_orders",
            Some(ALL),
            order(501, "1", "NO").to_string(),
        )
        .await,
        500,
        "ingest_misconfigured",
        None,
        "ref",
    );
    refused(
        &post(
            &n,
            "shop_orders",
            Some(ALL),
            order(502, "1", "NO").to_string(),
        )
        .await,
        500,
        "ingest_misconfigured",
        None,
        "has no column \"ref\"",
    );
    assert_eq!(count(&cluster, "orders").await, rows);
}

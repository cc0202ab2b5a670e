//! The dashboard in a real browser: Debian's headless Chromium, driven over the Chrome
//! DevTools Protocol, against a real cluster holding a small shop's data and the real
//! notifier serving the embedded page.
//!
//! It checks what a person would: the cards show `kpi.snapshot`'s values; a committed
//! insert moves a card, its sparkline, the hourly bars and a top list without a reload;
//! an alert crossing shows in the panel and its button acknowledges it in the database;
//! the page recovers after the notifier restarts; a dropped KPI shows as gone; a config
//! naming a measure that does not exist says so in the card; a refused token (HTTP 401)
//! and one that expires while the page is open (close 4001) end in a clear message.
//! It measures the budget (JS+CSS gzipped, first render with data, JS heap under 10
//! updates a second for 60 s) and saves the screenshot the README shows.
#![allow(clippy::unwrap_used)]

#[path = "e2e_dashboard/cdp.rs"]
mod cdp;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdp::Browser;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use notifier::config::{Config, Secret, StaticToken};
use pg_kpi_e2e::Cluster;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "dashboard-wall-token-0123456789";
const SECRET: &str = "jwt-secret-for-the-dashboard-test";

/// A small shop with eight days of history in a daily rhythm (busiest mid-afternoon),
/// so the sparklines, hourly bars and last week's overlay have something to show.
const SHOP: &str = r#"
SELECT setseed(0.42);
CREATE TABLE orders(created_at timestamptz NOT NULL DEFAULT now(), amount numeric(10,2) NOT NULL,
                    region text NOT NULL, channel text NOT NULL);
CREATE TABLE order_lines(created_at timestamptz NOT NULL DEFAULT now(), product text NOT NULL,
                         quantity int NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE api_requests(at timestamptz NOT NULL DEFAULT now(), route text NOT NULL,
                          latency_ms double precision NOT NULL, error text);
CREATE FUNCTION pg_temp.busy(t timestamptz) RETURNS float8 LANGUAGE sql AS
  $$ SELECT 0.5 + 0.42 * sin(2 * pi() * (extract(hour FROM t) + extract(minute FROM t) / 60 - 9) / 24) $$;
-- No history from 65 to 45 minutes ago: the cards show the last hour, which slides with
-- the clock while the KPI's version stays put (the notifier re-reads on a new version),
-- so rows leaving the window during the test would make the page and kpi.snapshot differ
-- at one version. With this gap, nothing leaves it for the next 15 minutes.
CREATE FUNCTION pg_temp.kept(t timestamptz) RETURNS boolean LANGUAGE sql AS
  $$ SELECT t NOT BETWEEN now() - interval '65 minutes' AND now() - interval '45 minutes' $$;
INSERT INTO orders
SELECT t, round((18 + random() * 160)::numeric, 2),
       (ARRAY['North America','Europe','Asia Pacific','Latin America'])[1 + floor(random() ^ 1.6 * 4)::int],
       (ARRAY['web','app'])[1 + floor(random() * 2)::int]
  FROM generate_series(now() - interval '8 days', now() - interval '20 seconds', interval '15 seconds') AS t
 WHERE random() < pg_temp.busy(t) AND pg_temp.kept(t);
INSERT INTO order_lines
SELECT t, p.name, 1 + floor(random() ^ 3 * 4)::int, p.price
  FROM generate_series(now() - interval '8 days', now() - interval '20 seconds', interval '12 seconds') AS t,
       LATERAL (SELECT (ARRAY['Trail running shoes','Merino hoodie','Rain jacket','Wool socks',
                              'Water bottle','Daypack 20 L','Headlamp','Sunglasses'])[i] AS name,
                       (ARRAY[129.00, 89.00, 159.00, 14.50, 22.00, 74.00, 39.90, 59.00])[i] AS price
                  FROM (SELECT 1 + floor(random() ^ 1.8 * 8)::int AS i, t) AS pick) AS p
 WHERE random() < pg_temp.busy(t) AND pg_temp.kept(t);
INSERT INTO api_requests
SELECT t, (ARRAY['/cart','/checkout','/search','/product'])[1 + floor(random() * 4)::int],
       35 + random() * 50 + CASE WHEN random() < 0.06 THEN 150 + random() * 250 ELSE 0 END,
       CASE WHEN random() < 0.003 AND t < now() - interval '20 minutes' THEN '502' END
  FROM generate_series(now() - interval '8 days', now() - interval '5 seconds', interval '15 seconds') AS t
 WHERE pg_temp.kept(t);
SELECT kpi.create(name => 'checkout', source => 'orders', time_column => 'created_at',
                  measures => 'revenue = sum(amount), orders = count(*), aov = avg(amount)',
                  dimensions => '{region, channel}');
SELECT kpi.create(name => 'order_lines', source => 'order_lines', time_column => 'created_at',
                  measures => 'revenue = sum(price * quantity), units = sum(quantity)',
                  dimensions => '{product}');
SELECT kpi.create(name => 'api', source => 'api_requests', time_column => 'at',
                  measures => 'p95_latency = percentile(latency_ms, 0.95), requests = count(*), errors = count(error)',
                  dimensions => '{route}');
SELECT kpi.create_alert('api_errors', 'api', 'errors >= 5', '5 minutes', severity => 'critical',
                        summary => '{{value}} API errors in 5 minutes');
"#;

const DASHBOARDS: &str = r#"
[[dashboards]]
name = "shop"
title = "Outdoor shop — live"
  [[dashboards.cards]]
  kpi = "checkout"
  measure = "revenue"
  label = "Revenue, last hour"
  format = "currency"
  [[dashboards.cards]]
  kpi = "checkout"
  measure = "orders"
  label = "Orders, last hour"
  format = "integer"
  [[dashboards.cards]]
  kpi = "checkout"
  measure = "aov"
  label = "Average order"
  format = "currency"
  [[dashboards.cards]]
  kpi = "api"
  measure = "p95_latency"
  label = "API p95 latency"
  format = "ms"
  [[dashboards.cards]]
  kpi = "api"
  measure = "errors"
  label = "API errors, last hour"
  format = "integer"
  [[dashboards.hourly]]
  kpi = "checkout"
  measure = "orders"
  label = "Orders per hour"
  format = "integer"
  [[dashboards.charts]]
  kpi = "checkout"
  measure = "revenue"
  label = "Revenue"
  format = "currency"
  [[dashboards.charts]]
  kpi = "api"
  measure = "p95_latency"
  label = "API p95 latency"
  format = "ms"
  [[dashboards.tops]]
  kpi = "order_lines"
  measure = "revenue"
  dimension = "product"
  label = "Top products by revenue today"
  format = "currency"
  [[dashboards.tops]]
  kpi = "checkout"
  measure = "revenue"
  dimension = "region"
  label = "Revenue by region today"
  format = "currency"

[[dashboards]]
name = "api"
title = "API"
  [[dashboards.cards]]
  kpi = "api"
  measure = "requests"
  format = "integer"
  [[dashboards.cards]]
  kpi = "api"
  measure = "refunds"
"#;

fn dashboard_config(cluster: &Cluster) -> Config {
    let mut c = config(cluster);
    #[derive(serde::Deserialize)]
    struct File {
        dashboards: Vec<notifier::dashboard::Dashboard>,
    }
    c.dashboards = toml::from_str::<File>(DASHBOARDS).unwrap().dashboards;
    notifier::dashboard::config::validate(&c.dashboards).unwrap();
    c.auth.tokens = vec![StaticToken {
        name: "wall".into(),
        token: Secret(TOKEN.into()),
        kpis: vec!["*".into()],
        ingest: vec![],
    }];
    c.auth.jwt_secret = Secret(SECRET.into());
    c.auth.jwt_leeway_secs = 0;
    c
}

/// The notifier on a given address, so a restart comes back where the page reconnects.
struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), notifier::ServeError>>,
}

impl Server {
    async fn start(config: Config, addr: SocketAddr) -> Server {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notifier::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "notifier not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
    }
}

fn jwt(exp_in_secs: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in_secs;
    encode(
        &Header::default(),
        &json!({"sub": "wall", "exp": exp, "kpis": "*"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if !s.is_empty() => s.parse().ok(),
        _ => None,
    }
}

/// The same number as far as a double holds it: a numeric such as an average has more
/// digits than a double, and the browser's and serde_json's parsings of those digits may
/// differ in the last bit.
fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs()),
        (a, b) => a == b,
    }
}

/// The value a card shows (its `data-value`: the number it formatted) and its version.
async fn card(b: &Browser, kpi: &str, measure: &str) -> (Option<f64>, Option<i64>) {
    let v = b
        .eval(&format!(
            "(() => {{ const c = document.querySelector('.card[data-kpi=\"{kpi}\"][data-measure=\"{measure}\"]');
                      return c ? [c.querySelector('.value').dataset.value ?? '', c.dataset.version ?? ''] : null; }})()"
        ))
        .await;
    (num(&v[0]), v[1].as_str().and_then(|s| s.parse().ok()))
}

/// Checks every card of the shop dashboard against `kpi.snapshot` in the database. The
/// window slides with the clock, so a read that straddles a minute is retried.
async fn cards_equal_snapshots(b: &Browser, cluster: &Cluster) {
    let cards = [
        ("checkout", "revenue"),
        ("checkout", "orders"),
        ("checkout", "aov"),
        ("api", "p95_latency"),
        ("api", "errors"),
    ];
    for (kpi, measure) in cards {
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..5 {
            let snap = db_snapshot(cluster, kpi).await;
            let want = num(&snap["measures"][measure]["window"]);
            let version = snap["version"].as_i64();
            let deadline = Instant::now() + T;
            while Instant::now() < deadline {
                let (shown, shown_version) = card(b, kpi, measure).await;
                if shown_version == version && same(shown, want) {
                    ok = true;
                    break;
                }
                last = format!(
                    "page {shown:?} at v{shown_version:?}, kpi.snapshot {want:?} at v{version:?}"
                );
                if shown_version > version {
                    break; // a newer version came: read the database again
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if ok {
                break;
            }
        }
        assert!(ok, "card {kpi}.{measure}: {last}");
        // And the text is that number formatted.
        let text = b
            .eval(&format!(
                "document.querySelector('.card[data-kpi=\"{kpi}\"][data-measure=\"{measure}\"] .value').textContent"
            ))
            .await;
        assert!(
            text.as_str().is_some_and(|t| !t.is_empty() && t != "…"),
            "{kpi}.{measure} shows {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let cluster = cluster().await;
    exec(&cluster, SHOP).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", pg_kpi_e2e::free_port())
        .parse()
        .unwrap();
    let server = Server::start(dashboard_config(&cluster), addr).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    // Unknown dashboards are 404 JSON, for the page and for its definition.
    let r = http.get(format!("{base}/d/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["message"], "no dashboard named \"nope\"");
    let r = http
        .get(format!("{base}/api/dashboards/nope"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = http
        .get(format!("{base}/api/dashboards/shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the definition needs the token");
    for path in ["/", "/d/shop", "/d/api"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    // Budget: the page's JS and CSS as sent to a browser (gzipped).
    let mut gz_total = 0;
    for asset in ["app.js", "app.css"] {
        let r = http
            .get(format!("{base}/assets/{asset}"))
            .header("accept-encoding", "gzip, deflate, br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], "gzip", "{asset}");
        let n = r.bytes().await.unwrap().len();
        println!("budget: {asset} {n} bytes gzipped");
        gz_total += n;
    }
    println!(
        "budget: JS + CSS gzipped: {:.1} KB (limit 150 KB)",
        gz_total as f64 / 1024.0
    );
    assert!(
        gz_total < 150 * 1024,
        "JS + CSS are {gz_total} bytes gzipped"
    );

    let b = Browser::launch(1440, 1000).await;

    // First render with data: from navigation to every card showing its value.
    let started = Instant::now();
    b.navigate(&format!("{base}/d/shop?token={TOKEN}")).await;
    let ready_ms = b
        .wait_for(
            "document.body.dataset.ready",
            T,
            "every card to show a value",
        )
        .await;
    println!(
        "budget: first render with data: {} ms after navigation started (page clock), {} ms wall",
        ready_ms.as_str().unwrap_or("?"),
        started.elapsed().as_millis()
    );
    // The token was taken out of the address bar and kept in the tab.
    assert_eq!(
        b.eval("location.href").await,
        json!(format!("{base}/d/shop"))
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('pg_kpi.token')").await,
        json!(TOKEN)
    );
    assert_eq!(
        b.eval("document.getElementById('conn').dataset.state")
            .await,
        json!("live")
    );
    assert_eq!(
        b.eval("document.getElementById('title').textContent").await,
        json!("Outdoor shop — live")
    );

    cards_equal_snapshots(&b, &cluster).await;
    // History drawn: 60-minute sparklines, 24 hourly bars, both charts, both top lists.
    b.wait_for(
        "[...document.querySelectorAll('.card')].every(c => Number(c.dataset.points) >= 59)",
        T,
        "every sparkline to hold 60 minutes",
    )
    .await;
    b.wait_for(
        "document.querySelector('.hourly').dataset.points === '24'",
        T,
        "24 hourly bars",
    )
    .await;
    b.wait_for(
        "[...document.querySelectorAll('.chart')].every(c => Number(c.dataset.points) >= 59)",
        T,
        "the charts",
    )
    .await;
    b.wait_for(
        "[...document.querySelectorAll('.top tbody')].every(t => t.rows.length === 5 || t.rows.length === 4)",
        T,
        "the top lists",
    )
    .await;

    // An alert crossing shows in the panel, and colours its KPI's cards.
    exec(
        &cluster,
        "INSERT INTO api_requests(route, latency_ms, error) SELECT '/checkout', 900 + g, '502' FROM generate_series(1, 6) AS g;
         SELECT kpi.evaluate_alerts();",
    )
    .await;
    b.wait_for(
        "document.querySelector('.alert[data-state=\"firing\"] button[data-ack]')",
        T,
        "the firing alert with its acknowledge button",
    )
    .await;
    b.wait_for(
        "document.querySelector('.card[data-kpi=\"api\"]').dataset.alert === 'firing'",
        T,
        "the api cards to turn red",
    )
    .await;
    let panel = b.eval("document.querySelector('.alert').textContent").await;
    let panel = panel.as_str().unwrap();
    for want in [
        "critical",
        "api_errors",
        "firing",
        "opened",
        "value 6",
        "threshold >= 5",
    ] {
        assert!(panel.contains(want), "alert panel lacks {want:?}: {panel}");
    }
    assert!(b
        .eval("document.querySelector('.silence-list').textContent")
        .await
        .as_str()
        .unwrap()
        .contains("No silences"));

    // The screenshot the README shows: a live shop with an alert firing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let height = b
        .eval("document.documentElement.scrollHeight")
        .await
        .as_u64()
        .unwrap_or(1000);
    b.page(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1440, "height": height.clamp(600, 2400), "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = b.screenshot().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("target/dashboard-screenshots");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("shop.png"), &png).unwrap();
    std::fs::write(root.join("docs/dashboard.png"), &png).unwrap();
    println!("screenshot: docs/dashboard.png ({} bytes)", png.len());

    // The acknowledge button acknowledges it in the database.
    b.eval("document.querySelector('button[data-ack]').click()")
        .await;
    let deadline = Instant::now() + T;
    let acked_by = loop {
        let c = pg(&cluster).await;
        let by: Option<String> = c
            .query_one(
                "SELECT acked_by FROM kpi.alerts WHERE alert = 'api_errors'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(by) = by {
            break by;
        }
        assert!(
            Instant::now() < deadline,
            "the ack never reached kpi.alerts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(acked_by, "wall", "acknowledged as the token's name");
    b.wait_for(
        "document.querySelector('.alert[data-state=\"acknowledged\"]') && !document.querySelector('button[data-ack]')",
        T,
        "the panel to show it acknowledged",
    )
    .await;
    b.wait_for(
        "document.querySelector('.card[data-kpi=\"api\"]').dataset.alert === 'acknowledged'",
        T,
        "the api cards to turn blue",
    )
    .await;

    // A committed insert moves the card, its sparkline and the hourly bars, no reload.
    let hourly_before: f64 = num(&b
        .eval("document.querySelector('.hourly').dataset.newest")
        .await)
    .unwrap();
    exec(
        &cluster,
        "INSERT INTO orders(amount, region, channel) VALUES (1000.00, 'Europe', 'web')",
    )
    .await;
    let after = db_snapshot(&cluster, "checkout").await;
    b.wait_for(
        &format!(
            "Number(document.querySelector('.card[data-kpi=\"checkout\"][data-measure=\"revenue\"]').dataset.version) >= {}",
            after["version"]
        ),
        T,
        "the revenue card to show the insert",
    )
    .await;
    cards_equal_snapshots(&b, &cluster).await;
    b.wait_for(
        "document.querySelector('.card[data-measure=\"revenue\"]').dataset.tail.split(',').some(v => Number(v) >= 1000)",
        T,
        "the newest sparkline point to include the 1,000 order",
    )
    .await;
    b.wait_for(
        &format!(
            "document.querySelector('.hourly').dataset.tail.split(',').some(v => Number(v) >= {})",
            hourly_before + 1.0
        ),
        T,
        "the current hour's bar to grow",
    )
    .await;

    // The top list re-ranks live.
    exec(
        &cluster,
        "INSERT INTO order_lines(product, quantity, price) VALUES ('Gift card', 2000, 250.00)",
    )
    .await;
    b.wait_for(
        "document.querySelector('.top[data-dimension=\"product\"] tbody tr').dataset.key === 'Gift card'",
        T,
        "the gift card to top the products",
    )
    .await;

    // The range picker: 24 h in 15-minute steps, with last week's overlay.
    b.eval("document.querySelector('.chart .picker button[data-range=\"24h\"]').click()")
        .await;
    b.wait_for(
        "document.querySelector('.chart').dataset.range === '24h' && Number(document.querySelector('.chart').dataset.points) >= 96",
        T,
        "the 24 h range",
    )
    .await;

    // Heap with 10 updates a second for 60 s: flat, after a full GC at both ends.
    let heap_start = b.heap_after_gc().await;
    let writer = pg(&cluster).await;
    let version_start = db_snapshot(&cluster, "checkout").await["version"]
        .as_i64()
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut writes = 0u32;
    while started.elapsed() < Duration::from_secs(60) {
        tick.tick().await;
        writer
            .execute(
                "INSERT INTO orders(amount, region, channel) VALUES (round((20 + random() * 150)::numeric, 2), 'Europe', 'app')",
                &[],
            )
            .await
            .unwrap();
        writes += 1;
    }
    let version_end = db_snapshot(&cluster, "checkout").await["version"]
        .as_i64()
        .unwrap();
    b.wait_for(
        &format!(
            "Number(document.querySelector('.card[data-kpi=\"checkout\"]').dataset.version) >= {version_end}"
        ),
        T,
        "the page to catch up",
    )
    .await;
    let heap_end = b.heap_after_gc().await;
    println!(
        "budget: JS heap after GC: {:.2} MB before, {:.2} MB after {writes} inserts in 60 s ({} versions of checkout)",
        heap_start / 1e6,
        heap_end / 1e6,
        version_end - version_start
    );
    assert!(
        heap_end < heap_start * 1.5 + 2e6,
        "the JS heap grew from {heap_start} to {heap_end} bytes"
    );
    cards_equal_snapshots(&b, &cluster).await;

    // The notifier restarts: the page says it is reconnecting, then resumes live.
    server.stop().await;
    b.wait_for(
        "document.getElementById('conn').dataset.state === 'reconnecting'",
        T,
        "the connection indicator to say reconnecting",
    )
    .await;
    let server = Server::start(dashboard_config(&cluster), addr).await;
    b.wait_for(
        "document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(40),
        "the page to reconnect",
    )
    .await;
    exec(
        &cluster,
        "INSERT INTO orders(amount, region, channel) VALUES (77.00, 'Asia Pacific', 'web')",
    )
    .await;
    cards_equal_snapshots(&b, &cluster).await;

    // A dropped KPI shows as gone, not as a frozen number.
    exec(&cluster, "SELECT kpi.drop('api')").await;
    b.wait_for(
        "[...document.querySelectorAll('.card[data-kpi=\"api\"]')].every(c => c.dataset.state === 'gone' && c.querySelector('.value').textContent === '—' && c.textContent.includes('was dropped'))",
        T,
        "the api cards to show the KPI gone",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelector('.card[data-kpi=\"checkout\"]').dataset.state")
            .await,
        json!("live")
    );

    // A configured measure that does not exist: the card says so.
    b.navigate(&format!("{base}/d/api")).await;
    b.wait_for("document.body.dataset.ready", T, "the api dashboard")
        .await;
    let note = b
        .eval("document.querySelector('.card[data-measure=\"refunds\"] .note').textContent")
        .await;
    assert!(
        note.as_str().unwrap().contains("no KPI named \"api\""),
        "the card of a dropped KPI: {note}"
    );
    exec(&cluster, "SELECT kpi.create(name => 'api', source => 'api_requests', time_column => 'at', measures => 'requests = count(*)')").await;
    b.navigate(&format!("{base}/d/api")).await;
    b.wait_for(
        "document.querySelector('.card[data-measure=\"refunds\"] .note').textContent.includes('has no measure \"refunds\"')",
        T,
        "the card naming a measure that does not exist",
    )
    .await;
    b.wait_for(
        "document.querySelector('.card[data-measure=\"requests\"] .value').dataset.value",
        T,
        "the requests card",
    )
    .await;

    // A refused token (HTTP 401) ends in a clear message.
    b.navigate(&format!("{base}/d/shop?token=not-a-valid-token"))
        .await;
    let fatal = b
        .wait_for(
            "document.body.dataset.fatal && document.getElementById('fatal').textContent",
            T,
            "the refused-token message",
        )
        .await;
    let fatal = fatal.as_str().unwrap();
    assert!(fatal.contains("Your access token was refused"), "{fatal}");
    assert!(fatal.contains("?token="), "{fatal}");
    assert_eq!(b.eval("location.search").await, json!(""));
    assert_eq!(
        b.eval("sessionStorage.getItem('pg_kpi.token')").await,
        Value::Null
    );

    // A token that expires while the page is open: the WebSocket closes with 4001 (or a
    // refresh gets 401 first), and the page says so instead of reconnecting forever.
    b.navigate(&format!("{base}/d/shop?token={}", jwt(4))).await;
    b.wait_for(
        "document.body.dataset.ready",
        T,
        "the page with a short-lived token",
    )
    .await;
    let fatal = b
        .wait_for(
            "document.body.dataset.fatal && document.getElementById('fatal').textContent",
            T,
            "the expired-token message",
        )
        .await;
    assert!(fatal.as_str().unwrap().contains("expired"), "{fatal}");
    assert_eq!(
        b.eval("document.getElementById('conn').dataset.state")
            .await,
        json!("refused")
    );

    drop(b);
    server.stop().await;
    let _ = Arc::strong_count(&cluster);
}

/// The endpoints the page reads, and how they refuse bad input.
#[tokio::test]
async fn top_series_compare_and_dashboard_api() {
    let cluster = cluster().await;
    exec(
        &cluster,
        "CREATE TABLE sales(ts timestamptz NOT NULL DEFAULT now(), product text, amount numeric);
         INSERT INTO sales VALUES (now(), 'a', 5), (now(), 'b', 7), (now(), 'b', 1), (now(), 'c', 2),
                                  (now() - interval '7 days', 'a', 3);
         SELECT kpi.create(name => 'sales', source => 'sales', time_column => 'ts',
                           measures => 'revenue = sum(amount)', dimensions => '{product}');",
    )
    .await;
    let n = Notifier::start(config(&cluster)).await;
    let get = |path: &str| {
        let url = n.url(path);
        async move {
            let r = reqwest::get(url).await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = get("/api/kpis/sales/top?measure=revenue&dimension=product&limit=2").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["rows"],
        json!([{"dimension_value": "b", "value": 8}, {"dimension_value": "a", "value": 5}])
    );
    assert_eq!(v["window"], "1 hour");
    for (q, code, says) in [
        ("dimension=product", "bad_request", "measure= is required"),
        ("measure=revenue", "bad_request", "dimension= is required"),
        (
            "measure=revenue&dimension=product&limit=0",
            "bad_request",
            "limit= must be 1 to 100",
        ),
        (
            "measure=revenue&dimension=product&limit=x",
            "bad_query",
            "limit",
        ),
        ("measure=nope&dimension=product", "bad_request", "nope"),
        ("measure=revenue&dimension=region", "bad_request", "region"),
        (
            "measure=revenue&dimension=product&window=soon",
            "bad_request",
            "soon",
        ),
    ] {
        let (s, v) = get(&format!("/api/kpis/sales/top?{q}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (400, code),
            "{q}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{q}: {v}"
        );
    }
    let (s, v) = get("/api/kpis/nope/top?measure=revenue&dimension=product").await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "unknown_kpi")
    );

    // compare=true adds last week's value of each step; without it there is none.
    let (s, v) =
        get("/api/kpis/sales/series?measure=revenue&since=2m&step=1%20hour&compare=true").await;
    assert_eq!(s, 200, "{v}");
    let last = v["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["value"], json!(15));
    assert_eq!(last["week_ago"], json!(3));
    assert!(last.get("day_ago").is_some());
    let (_, v) = get("/api/kpis/sales/series?measure=revenue&since=2m&step=1%20hour").await;
    assert!(v["points"][0].get("week_ago").is_none(), "{v}");
    let (s, v) = get("/api/kpis/sales/series?measure=revenue&compare=maybe").await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (400, "bad_query"),
        "{v}"
    );

    // No [[dashboards]]: one "default" of every KPI, served at / and /d/default.
    let (s, v) = get("/api/dashboards").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["dashboards"],
        json!([{"name": "default", "title": "All KPIs"}])
    );
    let (_, v) = get("/api/dashboards/default").await;
    assert_eq!(v["cards"][0]["kpi"], "sales");
    assert_eq!(v["cards"][0]["kind"], "sum");
    assert_eq!(v["tops"][0]["dimension"], "product");
    let r = reqwest::get(n.url("/d/default")).await.unwrap();
    assert_eq!(r.status(), 200);
    for path in [
        "/assets/app.js.gz",
        "/assets/.stamp",
        "/assets/index.html",
        "/assets/nope.js",
    ] {
        let r = reqwest::get(n.url(path)).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

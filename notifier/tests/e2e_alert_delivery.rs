//! Alert delivery end to end: a real cluster whose alerts fire and resolve, the real
//! notifier's dispatcher, and real HTTP receivers on loopback. Routing and grouping,
//! repeats that an acknowledgement stops, silences with an expiry, escalation, failures
//! recorded, a hung receiver that delays nobody else, two replicas that deliver each
//! transition once, and a notifier killed -9 mid-send whose group is delivered after a
//! restart.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::alerting::*;
use common::receiver::{Hook, Mode};
use common::*;
use notifier::alerts::config::AlertingConfig;
use serde_json::Value;

/// A config whose one receiver is `hook`, with quick timers unless `route` sets them.
fn one_hook(hook: &Hook, route: &str) -> AlertingConfig {
    let timers = [
        ("group_wait", "\"0s\""),
        ("group_interval", "\"1s\""),
        ("repeat_interval", "\"1h\""),
    ]
    .iter()
    .filter(|(key, _)| !route.contains(&format!("{key} =")))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect::<String>();
    alerting(&format!(
        r#"
        poll_interval_ms = 200
        lease_ms = 1000
        [[receivers]]
        name = "hook"
        retry = {{ max_attempts = 2, initial_backoff_ms = 50, max_backoff_ms = 100, timeout_ms = 2000 }}
        [[receivers.webhook_configs]]
        url = "{}"
        [route]
        receiver = "hook"
        {timers}
        {route}
        "#,
        hook.url()
    ))
}

fn alert_names(body: &Value) -> Vec<String> {
    body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_reaches_the_webhook_and_its_resolve_follows() {
    init_tracing();
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let hook = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(&hook, "");
    let mut n = Notifier::start(cfg).await;

    fire(&cluster).await;
    let firing = hook.wait(1, "firing").await.remove(0);
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["receiver"], "hook");
    assert_eq!(firing["groupKey"], "0:{}");
    let a = &firing["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "orders_high");
    assert_eq!(a["labels"]["kpi"], "k");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["team"], "shop");
    assert_eq!(a["annotations"]["summary"], "2 orders");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(firing["commonLabels"]["alertname"], "orders_high");
    let dedup_firing = a["annotations"]["dedup_key"].as_str().unwrap().to_string();
    assert!(
        dedup_firing.starts_with("pgkpi:orders_high::"),
        "{dedup_firing}"
    );

    resolve(&cluster).await;
    let bodies = hook.wait(2, "resolved").await;
    let resolved = &bodies[1];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(resolved["alerts"][0]["fingerprint"], a["fingerprint"]);
    assert_ne!(
        resolved["alerts"][0]["annotations"]["dedup_key"],
        dedup_firing.as_str()
    );

    let d = wait_deliveries(&cluster, "hook", "both recorded", |d| {
        d.len() == 2 && d.iter().all(|x| x.0 == "sent")
    })
    .await;
    assert!(d.iter().all(|x| x.1 == 1), "one attempt each: {d:?}");
    let c = pg(&cluster).await;
    let unrouted: i64 = c
        .query_one(
            "SELECT count(*) FROM kpi.alert_history WHERE routed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unrouted, 0,
        "pending transitions are routed (to nobody) too"
    );
    // Nothing repeats within repeat_interval (1 h) and nothing fires now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.bodies().len(), 2);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_wait_gathers_alerts_into_one_notification_per_group() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "SELECT kpi.create_alert('orders_seen', 'k', 'n >= 1', '10 minutes');
         SELECT kpi.create_alert('revenue_seen', 'k', 'total >= 1', '10 minutes');
         SELECT kpi.create_alert('other_team', 'k', 'n >= 1', '10 minutes', labels => '{\"team\": \"ops\"}');",
    )
    .await;
    let hook = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(
        &hook,
        r#"group_wait = "1s"
        group_by = ["team"]"#,
    );
    let mut n = Notifier::start(cfg).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (5)").await;
    exec(&cluster, "SELECT kpi.evaluate_alerts()").await;
    let bodies = hook.wait(2, "two groups").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let bodies_after = hook.bodies();
    assert_eq!(
        bodies_after.len(),
        2,
        "one notification per group: {bodies_after:#?}"
    );
    let mut groups: Vec<(String, Vec<String>)> = bodies
        .iter()
        .map(|b| {
            let mut names = alert_names(b);
            names.sort();
            (
                b["groupLabels"]["team"].as_str().unwrap().to_string(),
                names,
            )
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            (
                "".to_string(),
                vec!["orders_seen".to_string(), "revenue_seen".to_string()]
            ),
            ("ops".to_string(), vec!["other_team".to_string()]),
        ]
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_go_out_until_someone_acknowledges() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let hook = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(&hook, r#"repeat_interval = "1s""#);
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;
    let bodies = hook.wait(2, "a repeat").await;
    assert_eq!(
        bodies[0]["alerts"][0]["annotations"]["dedup_key"],
        bodies[1]["alerts"][0]["annotations"]["dedup_key"],
        "a repeat says the same transition again"
    );
    exec(
        &cluster,
        "SELECT kpi.ack_alert(id, 'alice', 'looking') FROM kpi.alerts WHERE alert = 'orders_high'",
    )
    .await;
    // The acknowledgement is routed too (a webhook has no word for it, so it is sent
    // as nothing and recorded as sent).
    wait_deliveries(&cluster, "hook", "the ack routed", |d| {
        d.len() == 2 && d.iter().all(|x| x.0 == "sent")
    })
    .await;
    let after_ack = hook.bodies().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        hook.bodies().len(),
        after_ack,
        "no repeats after the acknowledgement"
    );
    // The resolve still goes out.
    resolve(&cluster).await;
    let last = hook.wait(after_ack + 1, "resolve after ack").await;
    assert_eq!(last[after_ack]["status"], "resolved");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_holds_notifications_until_it_expires() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    exec(
        &cluster,
        "INSERT INTO kpi.alert_silences (matchers, ends_at, created_by, comment)
         VALUES ('[{\"name\": \"team\", \"value\": \"sh.*\", \"isRegex\": true, \"isEqual\": true}]',
                 now() + interval '3 seconds', 'test', 'maintenance')",
    )
    .await;
    let hook = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(&hook, "");
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;
    wait_deliveries(&cluster, "hook", "silenced", |d| {
        d.len() == 1 && d[0].0 == "silenced"
    })
    .await;
    assert!(hook.bodies().is_empty(), "nothing is said while silenced");
    // Once the silence ends, the still-firing alert is said at the next group interval.
    let b = hook.wait(1, "after the silence").await;
    assert_eq!(b[0]["status"], "firing");
    let c = pg(&cluster).await;
    let expired: bool = c
        .query_one(
            "SELECT bool_and(ends_at <= now()) FROM kpi.alert_silences",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(expired, "delivered only after the silence's end");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_critical_alert_escalates_and_an_acknowledged_one_does_not() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "SELECT kpi.create_alert('orders_high', 'k', 'n >= 2', '10 minutes', severity => 'critical');
         SELECT kpi.create_alert('taken_care_of', 'k', 'total >= 1', '10 minutes', severity => 'critical');
         SELECT kpi.create_alert('just_a_warning', 'k', 'n >= 1', '10 minutes', severity => 'warning');",
    )
    .await;
    let hook = Hook::start(Mode::Ok).await;
    let manager = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = alerting(&format!(
        r#"
        poll_interval_ms = 200
        [[receivers]]
        name = "hook"
        [[receivers.webhook_configs]]
        url = "{}"
        [[receivers]]
        name = "manager"
        [[receivers.webhook_configs]]
        url = "{}"
        [route]
        receiver = "hook"
        group_by = ["alertname"]
        group_wait = "0s"
        group_interval = "1s"
        repeat_interval = "1h"
        escalate_after = "3s"
        escalate_to = "manager"
        "#,
        hook.url(),
        manager.url()
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;
    // The first receiver hears all three firings, one group per alert name; only
    // then does someone acknowledge one, well inside `escalate_after`.
    let heard: Vec<String> = hook
        .wait(3, "the three firings")
        .await
        .iter()
        .flat_map(alert_names)
        .collect();
    for name in ["orders_high", "taken_care_of", "just_a_warning"] {
        assert!(heard.contains(&name.to_string()), "{name} in {heard:?}");
    }
    exec(
        &cluster,
        "SELECT kpi.ack_alert(id, 'bob', 'mine') FROM kpi.alerts WHERE alert = 'taken_care_of'",
    )
    .await;
    let esc = manager.wait(1, "escalation").await;
    assert_eq!(alert_names(&esc[0]), ["orders_high"]);
    assert!(esc[0]["groupKey"].as_str().unwrap().starts_with("0!esc:"));
    // The end of the episode goes to the escalation receiver as well.
    resolve(&cluster).await;
    let esc = manager.wait(2, "the escalated alert's resolve").await;
    assert_eq!(esc[1]["status"], "resolved");
    assert_eq!(alert_names(&esc[1]), ["orders_high"]);
    let all: Vec<String> = manager.bodies().iter().flat_map(alert_names).collect();
    assert!(
        all.iter().all(|a| a == "orders_high"),
        "only the unacknowledged critical alert escalated: {all:?}"
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_recorded_and_a_hung_one_delays_nobody() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let healthy = Hook::start(Mode::Ok).await;
    let broken = Hook::start(Mode::Status(500)).await;
    let hung = Hook::start(Mode::Hang).await;
    let mut cfg = config(&cluster);
    cfg.alerting = alerting(&format!(
        r#"
        poll_interval_ms = 200
        [[receivers]]
        name = "hung"
        retry = {{ max_attempts = 1, timeout_ms = 60000 }}
        [[receivers.webhook_configs]]
        url = "{}"
        [[receivers]]
        name = "broken"
        retry = {{ max_attempts = 3, initial_backoff_ms = 20, max_backoff_ms = 50 }}
        [[receivers.webhook_configs]]
        url = "{}"
        [[receivers]]
        name = "healthy"
        [[receivers.webhook_configs]]
        url = "{}"
        [route]
        receiver = "healthy"
        group_wait = "0s"
        group_interval = "1h"
        [[route.routes]]
        matchers = ['alertname=~".+"']
        receiver = "hung"
        continue = true
        [[route.routes]]
        matchers = ['alertname=~".+"']
        receiver = "broken"
        continue = true
        [[route.routes]]
        matchers = ['alertname=~".+"']
        receiver = "healthy"
        "#,
        hung.url(),
        broken.url(),
        healthy.url()
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;
    healthy.wait(1, "the healthy receiver").await;
    hung.wait(1, "the hung receiver got the request").await;
    let d = deliveries(&cluster, "hung").await;
    assert_eq!(
        d[0].0, "queued",
        "the hung receiver is still being waited for"
    );
    let d = wait_deliveries(&cluster, "broken", "failure recorded", |d| {
        d.first().is_some_and(|x| x.0 == "failed")
    })
    .await;
    assert_eq!(d[0].1, 3, "attempted max_attempts times: {d:?}");
    let err = d[0].2.clone().unwrap();
    assert!(err.contains("500"), "{err}");
    assert_eq!(broken.bodies().len(), 3);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_transition_once() {
    let cluster = cluster().await;
    exec(
        &cluster,
        "CREATE TABLE sales(ts timestamptz NOT NULL DEFAULT now(), region text NOT NULL);
         SELECT kpi.create(name => 'sales', source => 'sales', time_column => 'ts',
                           measures => 'n = count(*)', dimensions => '{region}');
         SELECT kpi.create_alert('region_busy', 'sales', 'n >= 1', '10 minutes', group_by => 'region');",
    )
    .await;
    let hook = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(&hook, r#"group_by = ["..."]"#);
    let mut a = Notifier::start(cfg.clone()).await;
    let mut b = Notifier::start(cfg).await;
    exec(
        &cluster,
        "INSERT INTO sales(region) SELECT 'r' || i FROM generate_series(1, 40) i",
    )
    .await;
    exec(&cluster, "SELECT kpi.evaluate_alerts()").await;
    hook.wait(40, "every region").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut keys: Vec<String> = hook
        .bodies()
        .iter()
        .flat_map(|b| {
            b["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["annotations"]["dedup_key"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 40);
    assert_eq!(total, 40, "no transition delivered twice");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_send_leaves_the_group_to_the_next_one() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let hook = Hook::start(Mode::Hang).await;
    let dir = std::env::temp_dir().join(format!("pgkpi-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("notifier.toml");
    let port = pg_kpi_e2e::free_port();
    std::fs::write(
        &file,
        format!(
            r#"
            database_url = "{}"
            listen = "127.0.0.1:{port}"
            [alerting]
            lease_ms = 1000
            poll_interval_ms = 200
            [[alerting.receivers]]
            name = "hook"
            retry = {{ max_attempts = 1, timeout_ms = 60000 }}
            [[alerting.receivers.webhook_configs]]
            url = "{}"
            [alerting.route]
            receiver = "hook"
            group_wait = "0s"
            "#,
            cluster.database_url(),
            hook.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["serve", "--config"])
        .arg(&file)
        .spawn()
        .unwrap();
    fire(&cluster).await;
    // It claimed the group and is sending: the receiver has the request, unanswered.
    let first = hook.wait(1, "the first send").await.remove(0);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(deliveries(&cluster, "hook").await[0].0, "queued");

    hook.set_mode(Mode::Ok);
    let mut cfg = config(&cluster);
    cfg.alerting = one_hook(&hook, "");
    let mut n = Notifier::start(cfg).await;
    let bodies = hook.wait(2, "redelivery after the restart").await;
    assert_eq!(
        bodies[1]["alerts"][0]["annotations"]["dedup_key"],
        first["alerts"][0]["annotations"]["dedup_key"],
        "the same transition, with the same dedup key"
    );
    wait_deliveries(&cluster, "hook", "recorded sent", |d| d[0].0 == "sent").await;
    n.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

//! Shared pieces of the alert delivery tests: a rule that fires at two orders, firing
//! and resolving it, `[alerting]` from TOML, and what `kpi.alert_deliveries` recorded.

use std::sync::Arc;
use std::time::Duration;

use notifier::alerts::config::AlertingConfig;
use pg_kpi_e2e::Cluster;
use tokio::time::Instant;

use super::{exec, pg};

/// `orders_high` on `k` (see `SETUP`): critical, fires at two orders.
pub const RULE: &str = "SELECT kpi.create_alert('orders_high', 'k', 'n >= 2', '10 minutes', severity => 'critical',
                                            labels => '{\"team\": \"shop\"}', summary => '{{value}} orders');";

pub fn alerting(toml: &str) -> AlertingConfig {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

pub async fn fire(cluster: &Arc<Cluster>) {
    exec(cluster, "INSERT INTO orders(v) VALUES (1), (2)").await;
    exec(cluster, "SELECT kpi.evaluate_alerts()").await;
}

pub async fn resolve(cluster: &Arc<Cluster>) {
    exec(cluster, "DELETE FROM orders").await;
    exec(cluster, "SELECT kpi.evaluate_alerts()").await;
}

/// `(status, attempts, last_error)` of one delivery.
pub type Delivery = (String, i32, Option<String>);

/// Every delivery to `receiver`, oldest first.
pub async fn deliveries(cluster: &Cluster, receiver: &str) -> Vec<Delivery> {
    let c = pg(cluster).await;
    c.query(
        "SELECT status, attempts, last_error FROM kpi.alert_deliveries WHERE receiver = $1 ORDER BY history_id",
        &[&receiver],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The deliveries to `receiver` once `done` holds (bounded: 30 s, then fails on `what`).
pub async fn wait_deliveries(
    cluster: &Cluster,
    receiver: &str,
    what: &str,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = deliveries(cluster, receiver).await;
        if done(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: deliveries to {receiver}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

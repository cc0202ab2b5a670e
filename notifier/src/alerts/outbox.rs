//! The outbox's intake: `kpi.alert_history` rows not yet routed become deliveries
//! (`kpi.alert_deliveries`, one per receiver) in notification groups
//! (`kpi.alert_groups`) with their first flush scheduled; and escalations, deliveries of
//! a critical alert nobody acknowledged to its route's `escalate_to` receiver.
//!
//! Both run in one transaction each, so a transition is routed exactly once however
//! many notifiers run: rows are claimed `FOR UPDATE SKIP LOCKED` and marked
//! `routed_at` in the same transaction that writes their deliveries. A notifier that
//! dies mid-way leaves them unrouted for the next one.

use std::time::Duration;

use tokio_postgres::types::Json;
use tokio_postgres::{Client, Transaction};

use super::routing::{Policy, RouteTree};
use super::transition::{Transition, COLUMNS};

/// How many transitions one intake transaction routes.
const BATCH: i64 = 500;

/// Routes one batch of unrouted transitions; returns how many it took (call again
/// while that is a full batch).
pub async fn intake(client: &mut Client, tree: &RouteTree) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM kpi.alert_history h \
                 LEFT JOIN kpi.alert_rules r ON r.id = h.rule_id \
                 WHERE h.routed_at IS NULL ORDER BY h.id LIMIT $1 \
                 FOR UPDATE OF h SKIP LOCKED"
            ),
            &[&BATCH],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let t = Transition::from_row(row)?;
        ids.push(t.id);
        if !t.delivered() {
            continue;
        }
        let labels = t.labels();
        for policy in tree.routes(&labels) {
            let key = policy.group_key(&labels, false);
            queue(
                &tx,
                &t,
                policy,
                &policy.receiver,
                &key,
                false,
                policy.group_wait,
            )
            .await?;
        }
        if t.to_state != "firing" {
            // The episode's end (or its acknowledgement) goes wherever it escalated.
            follow_escalations(&tx, &t, tree).await?;
        }
    }
    if !ids.is_empty() {
        tx.execute(
            "UPDATE kpi.alert_history SET routed_at = now() WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// Queues `t` for `receiver` in group `key`, and schedules the group: a new (or
/// dormant) group flushes after `wait`; a live one at its next flush, or at
/// `group_interval` after its last send if that comes first.
async fn queue(
    tx: &Transaction<'_>,
    t: &Transition,
    policy: &Policy,
    receiver: &str,
    key: &str,
    escalation: bool,
    wait: Duration,
) -> Result<(), tokio_postgres::Error> {
    let inserted = tx
        .execute(
            "INSERT INTO kpi.alert_deliveries (history_id, receiver, group_key, escalation) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&t.id, &receiver, &key, &escalation],
        )
        .await?;
    if inserted == 0 {
        // Already queued there by another route to the same receiver.
        return Ok(());
    }
    let group_labels = Json(policy.group_labels(&t.labels()));
    tx.execute(
        "INSERT INTO kpi.alert_groups AS g (receiver, group_key, group_labels, next_flush_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
         ON CONFLICT (receiver, group_key) DO UPDATE SET next_flush_at = CASE \
             WHEN g.next_flush_at IS NULL THEN EXCLUDED.next_flush_at \
             ELSE least(g.next_flush_at, greatest(now(), \
                  coalesce(g.last_sent_at + make_interval(secs => $5), g.next_flush_at))) END",
        &[
            &receiver,
            &key,
            &group_labels,
            &wait.as_secs_f64(),
            &policy.group_interval.as_secs_f64(),
        ],
    )
    .await?;
    Ok(())
}

/// Queues a resolve or acknowledgement for the escalation receivers its episode's
/// firing went to.
async fn follow_escalations(
    tx: &Transaction<'_>,
    t: &Transition,
    tree: &RouteTree,
) -> Result<(), tokio_postgres::Error> {
    let Some(started) = t.started_at else {
        return Ok(());
    };
    let rows = tx
        .query(
            "SELECT DISTINCT d.receiver, d.group_key FROM kpi.alert_history h \
             JOIN kpi.alert_deliveries d ON d.history_id = h.id AND d.escalation \
             WHERE h.rule_id = $1 AND h.group_value = $2 AND h.started_at = $3 \
               AND h.to_state = 'firing'",
            &[&t.rule_id, &t.group_value, &started],
        )
        .await?;
    for row in rows {
        let receiver: String = row.try_get(0)?;
        let key: String = row.try_get(1)?;
        let policy = tree.policy(super::routing::path_of(&key));
        queue(tx, t, policy, &receiver, &key, true, Duration::ZERO).await?;
    }
    Ok(())
}

/// Escalates critical alerts that have fired, unacknowledged, for longer than their
/// route's `escalate_after`: their firing transition is queued for `escalate_to`, at
/// once. Idempotent (the delivery's key is the transition and receiver), so replicas
/// may race here harmlessly. Returns how many it escalated.
pub async fn escalate(
    client: &mut Client,
    tree: &RouteTree,
) -> Result<usize, tokio_postgres::Error> {
    let Some(shortest) = tree.shortest_escalation() else {
        return Ok(0);
    };
    let tx = client.transaction().await?;
    // Still firing and unacknowledged: no later transition of the instance. A week
    // bounds the scan; an alert firing longer has long been escalated.
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM kpi.alert_history h \
                 LEFT JOIN kpi.alert_rules r ON r.id = h.rule_id \
                 WHERE h.to_state = 'firing' AND h.severity = 'critical' \
                   AND h.routed_at IS NOT NULL \
                   AND h.at <= now() - make_interval(secs => $1) \
                   AND h.at > now() - interval '7 days' \
                   AND NOT EXISTS (SELECT 1 FROM kpi.alert_history l \
                                   WHERE l.rule_id = h.rule_id AND l.id > h.id \
                                     AND l.group_value = h.group_value) \
                   AND NOT EXISTS (SELECT 1 FROM kpi.alert_deliveries d \
                                   WHERE d.history_id = h.id AND d.escalation) \
                 ORDER BY h.id LIMIT $2"
            ),
            &[&shortest.as_secs_f64(), &BATCH],
        )
        .await?;
    let now = chrono::Utc::now();
    let mut escalated = 0;
    for row in &rows {
        let t = Transition::from_row(row)?;
        let labels = t.labels();
        for policy in tree.routes(&labels) {
            let Some((after, to)) = &policy.escalate else {
                continue;
            };
            let due = chrono::Duration::from_std(*after)
                .ok()
                .and_then(|d| t.at.checked_add_signed(d));
            if due.is_none_or(|d| d > now) {
                continue;
            }
            let key = policy.group_key(&labels, true);
            queue(&tx, &t, policy, to, &key, true, Duration::ZERO).await?;
            escalated += 1;
        }
    }
    tx.commit().await?;
    Ok(escalated)
}

//! Flushing one notification group the dispatcher holds the lease of: read its
//! members, drop the silenced, decide whether anything is to be said (new transitions,
//! or a repeat that is due), say it through the receiver's channels while renewing the
//! lease, and record the outcome and the group's next flush.
//!
//! Delivery is at least once: the deliveries stay `queued` until the outcome is
//! written, so a notifier that dies after claiming (or even after sending) leaves the
//! group to whoever takes it when the lease runs out. Every alert carries a dedup key
//! for the receiver that sees it twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_postgres::Client;

use super::channels::{Channels, Outcome};
use super::matcher::{all_match, Labels, Matcher, MatcherJson};
use super::notification::{Notification, Status};
use super::routing::{path_of, RouteTree};
use super::transition::{Transition, COLUMNS};

/// A group claimed by this notifier (a row of `kpi.alert_groups`).
#[derive(Clone, Debug)]
pub struct Claimed {
    pub receiver: String,
    pub group_key: String,
    pub group_labels: Labels,
    pub last_sent_at: Option<chrono::DateTime<Utc>>,
}

/// What the flush needs besides the group.
pub struct Context {
    pub db: Arc<Client>,
    pub channels: Arc<Channels>,
    pub tree: Arc<RouteTree>,
    pub owner: String,
    pub lease: Duration,
    pub external_url: String,
}

/// The latest transition of one alert instance in the group, and its delivery here.
struct Member {
    t: Transition,
    /// `queued` or `failed`: not yet said to this receiver.
    unsent: bool,
    silenced: bool,
    /// The rule still exists (a dropped rule's firing alert is not repeated).
    live: bool,
}

impl Member {
    fn status(&self) -> Status {
        Status::from_state(&self.t.to_state).unwrap_or(Status::Firing)
    }

    fn active(&self) -> bool {
        self.live && self.status() != Status::Resolved
    }
}

/// Flushes the group and releases it. Errors are the database's; the lease then runs
/// out and the group is flushed again (by this notifier or another).
pub async fn flush(ctx: &Context, group: &Claimed) -> Result<(), tokio_postgres::Error> {
    let policy = ctx.tree.policy(path_of(&group.group_key));
    let resend = ctx.channels.resend_interval(&group.receiver);
    let repeat = resend.map_or(policy.repeat_interval, |r| r.min(policy.repeat_interval));
    let members = members(ctx, group).await?;

    let newly_silenced: Vec<i64> = members
        .iter()
        .filter(|m| m.silenced && m.unsent)
        .map(|m| m.t.id)
        .collect();
    if !newly_silenced.is_empty() {
        set_status(ctx, group, &newly_silenced, "silenced").await?;
    }
    let audible: Vec<&Member> = members.iter().filter(|m| !m.silenced).collect();
    let unsent: Vec<i64> = audible
        .iter()
        .filter(|m| m.unsent)
        .map(|m| m.t.id)
        .collect();

    // A repeat says the alerts still firing that nobody has taken; acknowledged ones
    // only to receivers that expire alerts unless told again (Alertmanager).
    let repeats = |m: &&&Member| m.active() && (m.status() == Status::Firing || resend.is_some());
    let repeat_due = group.last_sent_at.is_none_or(|at| {
        chrono::Duration::from_std(repeat)
            .ok()
            .and_then(|r| at.checked_add_signed(r))
            .is_none_or(|due| due <= Utc::now())
    });
    let to_send: Vec<&Member> = if !unsent.is_empty() {
        audible.clone()
    } else if repeat_due {
        audible.iter().filter(repeats).copied().collect()
    } else {
        Vec::new()
    };

    let outcome = if to_send.is_empty() {
        None
    } else {
        let n = notification(ctx, group, &to_send);
        Some(send(ctx, group, &n).await)
    };

    let ok = outcome.as_ref().is_none_or(|o| o.ok);
    let next = if !ok || members.iter().any(|m| m.silenced && m.active()) {
        Some(policy.group_interval)
    } else if audible.iter().any(|m| m.active()) {
        Some(repeat)
    } else {
        None
    };
    record(ctx, group, &unsent, outcome.as_ref(), &to_send, next).await
}

/// The latest transition of each instance in the group that is still to be said or
/// still firing.
async fn members(ctx: &Context, group: &Claimed) -> Result<Vec<Member>, tokio_postgres::Error> {
    let rows = ctx
        .db
        .query(
            &format!(
                "SELECT * FROM (SELECT DISTINCT ON (h.rule_id, h.group_value) {COLUMNS}, \
                        d.status IN ('queued', 'failed') AS unsent, r.id IS NOT NULL AS live \
                   FROM kpi.alert_deliveries d \
                   JOIN kpi.alert_history h ON h.id = d.history_id \
                   LEFT JOIN kpi.alert_rules r ON r.id = h.rule_id \
                  WHERE d.receiver = $1 AND d.group_key = $2 \
                  ORDER BY h.rule_id, h.group_value, h.id DESC) m \
                 WHERE unsent OR (live AND to_state <> 'resolved') ORDER BY id"
            ),
            &[&group.receiver, &group.group_key],
        )
        .await?;
    let silences = silences(ctx).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let t = Transition::from_row(row)?;
        let labels = t.labels();
        out.push(Member {
            silenced: silences.iter().any(|s| all_match(s, &labels)),
            unsent: row.try_get(18)?,
            live: row.try_get(19)?,
            t,
        });
    }
    Ok(out)
}

/// The matchers of every silence in force now.
async fn silences(ctx: &Context) -> Result<Vec<Vec<Matcher>>, tokio_postgres::Error> {
    let rows = ctx
        .db
        .query(
            "SELECT id, matchers::text FROM kpi.alert_silences \
             WHERE starts_at <= now() AND ends_at > now()",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let text: String = row.try_get(1)?;
        // The API validates silences; one written by hand that does not parse silences
        // nothing rather than everything.
        let parsed: Result<Vec<Matcher>, String> = serde_json::from_str::<Vec<MatcherJson>>(&text)
            .map_err(|e| e.to_string())
            .and_then(|ms| ms.iter().map(Matcher::from_json).collect());
        match parsed {
            Ok(ms) if !ms.is_empty() => out.push(ms),
            Ok(_) => {}
            Err(e) => tracing::warn!(silence = id, error = %e, "ignoring a malformed silence"),
        }
    }
    Ok(out)
}

fn notification(ctx: &Context, group: &Claimed, members: &[&Member]) -> Notification {
    let alerts: Vec<_> = members
        .iter()
        .map(|m| m.t.alert(&ctx.external_url))
        .collect();
    Notification {
        receiver: group.receiver.clone(),
        group_key: group.group_key.clone(),
        group_labels: group.group_labels.clone(),
        common_labels: Notification::common(&alerts, |a| &a.labels),
        common_annotations: Notification::common(&alerts, |a| &a.annotations),
        alerts,
        external_url: ctx.external_url.clone(),
    }
}

/// Delivers while renewing the lease every third of its length, so a slow receiver
/// does not lose the group to another notifier mid-send.
async fn send(ctx: &Context, group: &Claimed, n: &Notification) -> Outcome {
    let renew = async {
        loop {
            tokio::time::sleep(ctx.lease / 3).await;
            let renewed = ctx
                .db
                .execute(
                    "UPDATE kpi.alert_groups SET lease_until = now() + make_interval(secs => $3) \
                     WHERE receiver = $1 AND group_key = $2 AND lease_owner = $4",
                    &[
                        &group.receiver,
                        &group.group_key,
                        &ctx.lease.as_secs_f64(),
                        &ctx.owner,
                    ],
                )
                .await;
            if let Err(e) = renewed {
                tracing::warn!(group = %group.group_key, error = %e, "cannot renew a group's lease");
            }
        }
    };
    tokio::select! {
        outcome = ctx.channels.deliver(n) => outcome,
        _ = renew => unreachable_renew(),
    }
}

/// The renewal loop never ends; this names that for the `select!` above.
fn unreachable_renew() -> Outcome {
    Outcome {
        ok: false,
        attempts: 0,
        error: Some("lease renewal ended".into()),
    }
}

async fn set_status(
    ctx: &Context,
    group: &Claimed,
    ids: &[i64],
    status: &str,
) -> Result<(), tokio_postgres::Error> {
    ctx.db
        .execute(
            "UPDATE kpi.alert_deliveries SET status = $3 \
             WHERE receiver = $1 AND group_key = $2 AND history_id = ANY($4) \
               AND status IN ('queued', 'failed')",
            &[&group.receiver, &group.group_key, &status, &ids],
        )
        .await?;
    Ok(())
}

/// Writes what happened to the unsent deliveries, and the group's next flush, and
/// releases the lease, in one statement.
async fn record(
    ctx: &Context,
    group: &Claimed,
    unsent: &[i64],
    outcome: Option<&Outcome>,
    sent: &[&Member],
    next: Option<Duration>,
) -> Result<(), tokio_postgres::Error> {
    let (status, attempts, error) = match outcome {
        Some(o) if o.ok => ("sent", o.attempts as i32, None),
        Some(o) => ("failed", o.attempts as i32, o.error.clone()),
        None => ("sent", 0, None),
    };
    let said = outcome.is_some_and(|o| o.ok);
    let hash: String = sent
        .iter()
        .map(|m| m.t.id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let updated = ctx
        .db
        .execute(
            "WITH d AS (UPDATE kpi.alert_deliveries SET status = $3, attempts = attempts + $4, \
                    last_error = $5, \
                    delivered_at = CASE WHEN $3 = 'sent' THEN now() ELSE delivered_at END \
                  WHERE receiver = $1 AND group_key = $2 AND history_id = ANY($6) \
                    AND status IN ('queued', 'failed')) \
             UPDATE kpi.alert_groups SET \
                 last_sent_at = CASE WHEN $7 THEN now() ELSE last_sent_at END, \
                 last_sent_hash = CASE WHEN $7 THEN $8 ELSE last_sent_hash END, \
                 next_flush_at = now() + make_interval(secs => $9), \
                 lease_owner = NULL, lease_until = NULL \
             WHERE receiver = $1 AND group_key = $2 AND lease_owner = $10",
            &[
                &group.receiver,
                &group.group_key,
                &status,
                &attempts,
                &error,
                &unsent,
                &said,
                &hash,
                &next.map(|d| d.as_secs_f64()),
                &ctx.owner,
            ],
        )
        .await?;
    if updated == 0 {
        tracing::warn!(
            receiver = %group.receiver,
            group = %group.group_key,
            "lost a group's lease while flushing it; another notifier may send it again"
        );
    }
    Ok(())
}

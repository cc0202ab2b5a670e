//! A request's events as one batch: parsed, every event converted before anything is
//! sent, then written with one `COPY … FROM STDIN` inside a transaction that is
//! committed before the response.
//!
//! COPY rather than a multi-row INSERT: one statement whatever the batch size (an
//! INSERT's parameters are capped at 65,535 and each size is its own statement), and
//! when the database refuses a row, COPY's error context names its line, which is the
//! event's index (one event per line), and for a value it cannot read, the column.

use std::pin::pin;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use regex::Regex;
use serde_json::Value;

use super::error::IngestError;
use super::schema::Target;
use crate::error::ApiError;

/// The events of a body: one object, or an array of them.
pub fn parse(body: &[u8], max_events: usize) -> Result<Vec<Value>, IngestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::BadJson(format!("the body is not valid JSON: {e}")))?;
    let events = match value {
        Value::Array(events) => events,
        event @ Value::Object(_) => vec![event],
        _ => {
            return Err(IngestError::BadJson(
                "the body must be a JSON object (one event) or an array of objects".into(),
            ))
        }
    };
    if events.len() > max_events {
        return Err(IngestError::TooManyEvents {
            got: events.len(),
            limit: max_events,
        });
    }
    Ok(events)
}

/// A batch as COPY text: one line per event.
pub struct Rows {
    pub text: Bytes,
    /// Where each event's line ends in `text`.
    ends: Vec<usize>,
}

/// The COPY text of every event, or the first event that cannot be written.
pub fn encode(target: &Target, events: &[Value]) -> Result<Rows, IngestError> {
    let writer = target.writer();
    // Rows are about as long as their JSON; a guess that saves most reallocations.
    let mut buf = BytesMut::with_capacity(events.len() * 64 * target.columns.len().max(1));
    let mut ends = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        writer
            .write(event, &mut buf)
            .map_err(|e| IngestError::BadEvent {
                index: Some(index),
                field: e.field,
                message: e.message,
            })?;
        ends.push(buf.len());
    }
    Ok(Rows {
        text: buf.freeze(),
        ends,
    })
}

/// Writes the rows in one transaction, committed before this returns; returns the
/// number of rows written.
pub async fn write(
    client: &mut deadpool_postgres::Client,
    target: &Target,
    rows: &Rows,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let n = copy(&tx, &target.copy_sql, rows.text.clone()).await?;
    // Dropping the transaction unfinished (an error above) rolls it back.
    tx.commit().await?;
    Ok(n)
}

async fn copy(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    text: Bytes,
) -> Result<u64, tokio_postgres::Error> {
    // Prepared once per connection: a round trip saved on every later request.
    let statement = tx.prepare_cached(sql).await?;
    let mut sink = pin!(tx.copy_in::<_, Bytes>(&statement).await?);
    sink.send(text).await?;
    sink.as_mut().finish().await
}

/// The refused event when COPY's context does not name its line: an error raised at
/// the end of the statement (a foreign key, a deferred constraint), or a context lost
/// on the way. The shortest prefix of the batch that the database refuses ends with
/// that event; it is found by bisection (about log2(n) COPYs), each under a savepoint
/// in a transaction of its own that is rolled back, with constraints made immediate.
/// Returns the index, the error of the shortest failing prefix and, for a value the
/// database cannot read, the column (see [`refused_column`]).
pub async fn locate(
    client: &mut deadpool_postgres::Client,
    target: &Target,
    rows: &Rows,
) -> Option<(usize, tokio_postgres::Error, Option<String>)> {
    if rows.ends.is_empty() {
        return None;
    }
    let mut tx = client.transaction().await.ok()?;
    tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .ok()?;
    // Invariant: the prefix of `ok` events is accepted, the prefix of `bad` refused.
    let (mut ok, mut bad) = (0, rows.ends.len());
    let mut refusal = None;
    while bad - ok > 1 || refusal.is_none() {
        let mid = if refusal.is_none() {
            bad
        } else {
            ok + (bad - ok) / 2
        };
        let sp = tx.savepoint("pg_kpi_locate").await.ok()?;
        let result = copy(&sp, &target.copy_sql, rows.text.slice(..rows.ends[mid - 1])).await;
        sp.rollback().await.ok()?;
        match result {
            Ok(_) if refusal.is_none() => return None, // it passes now: nothing to name
            Ok(_) => ok = mid,
            Err(e) => {
                bad = mid;
                refusal = Some(e);
            }
        }
    }
    let e = refusal?;
    let index = bad - 1;
    let column = match e.as_db_error() {
        Some(db) if db.code().code().starts_with("22") => {
            let start = if index == 0 { 0 } else { rows.ends[index - 1] };
            let line = rows.text.slice(start..rows.ends[index] - 1);
            refused_column(&mut tx, target, &line).await
        }
        _ => None,
    };
    // The transaction is dropped: rolled back.
    Some((index, e, column))
}

/// The column whose value in `line` the database cannot read: each value is copied
/// alone into its column (under a savepoint) until one fails with a data exception,
/// which a type's input function raises before any constraint is checked.
async fn refused_column(
    tx: &mut deadpool_postgres::Transaction<'_>,
    target: &Target,
    line: &[u8],
) -> Option<String> {
    // Values are separated by raw tabs: tabs inside values are escaped as `\t`.
    for (i, value) in line.split(|b| *b == b'\t').enumerate() {
        let (Some(col), Some(sql)) = (target.columns.get(i), target.copy_one_sql.get(i)) else {
            break;
        };
        let mut one = BytesMut::with_capacity(value.len() + 1);
        one.extend_from_slice(value);
        one.extend_from_slice(b"\n");
        let sp = tx.savepoint("pg_kpi_locate_column").await.ok()?;
        let result = copy(&sp, sql, one.freeze()).await;
        sp.rollback().await.ok()?;
        if let Err(e) = result {
            if e.as_db_error()
                .is_some_and(|db| db.code().code().starts_with("22"))
            {
                return Some(col.name.clone());
            }
        }
    }
    None
}

/// Whether an error is about the data (a row refused) rather than the database.
pub fn refused_row(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

/// Whether COPY's error context names the line.
pub fn located(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| copy_position(db.where_().unwrap_or("")).0.is_some())
}

/// Whether the table no longer fits the resolved target (a column or the table
/// dropped, a privilege revoked): the target must be resolved again.
pub fn schema_changed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "42703" | "42P01" | "42501" | "42804"))
}

/// The response to a failed write: a refused row names its event (from COPY's `line
/// N`, or `index` found by [`locate`]) and, when the database names a column, the event
/// field that fed it.
pub fn refusal(
    e: tokio_postgres::Error,
    located: Option<(usize, Option<String>)>,
    target: &Target,
) -> IngestError {
    let (index, column) = located.map_or((None, None), |(i, c)| (Some(i), c));
    let Some(db) = e.as_db_error() else {
        return ApiError::from_db(e).into();
    };
    tracing::debug!(code = db.code().code(), context = ?db.where_(), "COPY refused");
    let (line, context_column) = copy_position(db.where_().unwrap_or(""));
    let index = line.and_then(|l| l.checked_sub(1)).or(index);
    let field = context_column
        .or(column)
        .or_else(|| db.column().map(str::to_string))
        .and_then(|c| target.field_of(&c).map(str::to_string));
    let mut message = db.message().to_string();
    // A Rust backtrace is not a detail for the sender: pg_kpi's utility hook (pgrx)
    // re-raises errors of utility statements such as COPY with one in DETAIL.
    if let Some(detail) = db.detail().filter(|d| !d.contains("pgrx")) {
        message.push_str(": ");
        message.push_str(detail.trim());
    }
    match &db.code().code()[..2] {
        // integrity constraint violation: unique, check, not null, foreign key
        "23" => IngestError::Rejected {
            index,
            field,
            message,
        },
        // data exception: a value the column's type or length refuses
        "22" => IngestError::BadEvent {
            index,
            field,
            message,
        },
        _ if schema_changed(&e) => {
            IngestError::Misconfigured(format!("writing into {}: {message}", target.table))
        }
        _ => ApiError::from_db(e).into(),
    }
}

/// `(line, column)` from COPY's error context: `COPY orders, line 3, column total: "x"`
/// or `COPY orders, line 3: "…"`.
fn copy_position(context: &str) -> (Option<usize>, Option<String>) {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        // A constant pattern: it compiles (the unit test below runs it).
        #[allow(clippy::unwrap_used)]
        Regex::new(r"COPY [^\n]*?, line (\d+)(?:, column ([^:\n]+))?").unwrap()
    });
    match re.captures(context) {
        Some(c) => (
            c.get(1).and_then(|m| m.as_str().parse().ok()),
            c.get(2).map(|m| m.as_str().to_string()),
        ),
        None => (None, None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(parse(br#"{"a":1}"#, 10).unwrap().len(), 1);
        assert_eq!(parse(br#"[{"a":1},{"a":2}]"#, 10).unwrap().len(), 2);
        assert_eq!(parse(b"[]", 10).unwrap().len(), 0);
        for bad in [&b"{"[..], b"", b"1", b"\"x\"", b"null", b"{\"a\":1} x"] {
            assert!(
                matches!(parse(bad, 10), Err(IngestError::BadJson(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(b"[{},{},{}]", 2),
            Err(IngestError::TooManyEvents { got: 3, limit: 2 })
        ));
    }

    #[test]
    fn copy_context() {
        assert_eq!(
            copy_position("COPY orders, line 3, column total: \"abc\""),
            (Some(3), Some("total".into()))
        );
        assert_eq!(
            copy_position("PL/pgSQL function f()\nCOPY public.orders, line 12: \"1\t2\""),
            (Some(12), None)
        );
        assert_eq!(copy_position("COPY orders, line 1"), (Some(1), None));
        assert_eq!(copy_position(""), (None, None));
    }
}

//! The client protocol shared by WebSocket and SSE: what clients send, what the server
//! sends, the error codes and the WebSocket close codes.
//!
//! Client → server (WebSocket text frames):
//! `{"op":"subscribe","kpis":["checkout"],"since":{"checkout":41}}` (optionally with
//! `"dims":{"region":"eu"}`, a dimension filter), `{"op":"unsubscribe","kpis":["checkout"]}`
//! (optionally with `"dims"`: only that filter), `{"op":"ping"}`;
//! `{"op":"subscribe_alerts"}` (optionally `"since":<transition id>`) and
//! `{"op":"unsubscribe_alerts"}` for the `alerts` topic.
//!
//! Server → client: `{"type":"snapshot","kpi":…,"version":…,"data":<kpi.snapshot>}` (with
//! `"dims"` after `"kpi"` for a filtered subscription), then `{"type":"update",…}` of the
//! same shape, `{"type":"error","code":…,"message":…}` (with `"kpi"` when the error
//! concerns one) and `{"type":"pong"}`. On the `alerts` topic: `{"type":"alerts",
//! "since":…,"alerts":[…]}` (the alerts now, as `GET /api/alerts`) unless `since` was
//! given, then `{"type":"alert","id":…,…}` per transition (see `feed::alert_events`).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::truncate;
use crate::feed::filter::DimFilter;

/// WebSocket close codes the server uses (documented in `docs/notifier.md`).
pub mod close {
    /// The client closed, or the server is done with the connection normally.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect (to another replica) with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame: this protocol is JSON text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message larger than `limits.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// A bug on the server side.
    pub const INTERNAL: u16 = 1011;
    /// Missing, malformed, forged or expired token (also sent when a JWT expires
    /// while the connection is open).
    pub const UNAUTHORIZED: u16 = 4001;
    /// The client could not keep up: a send blocked longer than
    /// `limits.send_timeout_ms`, or nothing (not even a pong) came back within
    /// `ws.idle_timeout_ms`.
    pub const TOO_SLOW: u16 = 4002;
    /// A text frame that is not JSON: the client does not speak this protocol.
    pub const BAD_MESSAGE: u16 = 4400;
    /// The client kept flooding after being told `rate_limited`: more messages were
    /// dropped within one second than `limits.messages_per_second`.
    pub const RATE_LIMITED: u16 = 4429;
}

/// The `code` of `{"type":"error"}` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// Valid JSON that is not a protocol message (no `op`, wrong field types).
    BadMessage,
    /// An `op` this server does not know (newer client?); the connection stays open.
    UnknownOp,
    /// A KPI name that does not exist (or was dropped while subscribed).
    UnknownKpi,
    /// A KPI outside the token's scope.
    Forbidden,
    /// A `since` that is not an object of KPI name → non-negative integer version.
    BadSince,
    /// More than `limits.max_subscriptions` KPIs on one connection.
    TooManySubscriptions,
    /// Messages arrive faster than `limits.messages_per_second` (with `limits.burst`);
    /// the extra ones are dropped. Sent at most once per second.
    RateLimited,
    /// The notifier has not loaded the KPIs from the database yet, or could not read a
    /// filtered KPI; retry shortly.
    NotReady,
    /// A `dims` that is not an object of dimension → string, number, boolean or null.
    BadDims,
    /// A `dims` naming a dimension the KPI does not have.
    UnknownDimension,
    /// More distinct dimension filters than `limits.max_dim_filters`.
    TooManyFilters,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadMessage,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownKpi,
        ErrorCode::Forbidden,
        ErrorCode::BadSince,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::NotReady,
        ErrorCode::BadDims,
        ErrorCode::UnknownDimension,
        ErrorCode::TooManyFilters,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownKpi => "unknown_kpi",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadSince => "bad_since",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::BadDims => "bad_dims",
            ErrorCode::UnknownDimension => "unknown_dimension",
            ErrorCode::TooManyFilters => "too_many_filters",
        }
    }
}

/// A parsed client message.
#[derive(Debug, PartialEq)]
pub enum ClientMsg {
    /// Subscribe to `kpis`, filtered by `dims` when given; `since` holds the versions the
    /// client already has.
    Subscribe {
        kpis: Vec<String>,
        since: HashMap<String, i64>,
        dims: Option<DimFilter>,
    },
    Unsubscribe {
        kpis: Vec<String>,
        dims: Which,
    },
    /// Follow alert transitions, after transition `since` when given (else from the
    /// alerts as they are now).
    SubscribeAlerts {
        since: Option<i64>,
    },
    UnsubscribeAlerts,
    Ping,
}

/// Which of a KPI's subscriptions an unsubscribe ends.
#[derive(Debug, PartialEq)]
pub enum Which {
    /// No `dims` given: every subscription to the KPI, filtered or not.
    All,
    /// `dims` given: only the one with that filter (`{}`: the unfiltered one).
    Only(Option<DimFilter>),
}

/// Why a client message was refused.
#[derive(Debug, PartialEq)]
pub enum ParseError {
    /// Not JSON at all: answered with an error and close code 4400.
    NotJson(String),
    /// JSON, but answered with an error message; the connection stays open.
    Refused { code: ErrorCode, message: String },
}

fn refused(code: ErrorCode, message: impl Into<String>) -> ParseError {
    ParseError::Refused {
        code,
        message: message.into(),
    }
}

/// Parses one client text frame.
pub fn parse_client(text: &str) -> Result<ClientMsg, ParseError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(refused(
            ErrorCode::BadMessage,
            "a message must be a JSON object",
        ));
    };
    let op = match obj.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Err(refused(ErrorCode::BadMessage, "\"op\" must be a string")),
        None => return Err(refused(ErrorCode::BadMessage, "missing \"op\"")),
    };
    match op.as_str() {
        "ping" => Ok(ClientMsg::Ping),
        "subscribe" => {
            let kpis = kpi_list(obj.remove("kpis"))?;
            let since = parse_since(obj.remove("since"), &kpis)?;
            let dims = parse_dims(obj.get("dims"))?;
            Ok(ClientMsg::Subscribe { kpis, since, dims })
        }
        "subscribe_alerts" => match obj.remove("since") {
            None | Some(Value::Null) => Ok(ClientMsg::SubscribeAlerts { since: None }),
            Some(v) => match v.as_i64() {
                Some(id) if id >= 0 => Ok(ClientMsg::SubscribeAlerts { since: Some(id) }),
                _ => Err(refused(
                    ErrorCode::BadSince,
                    "\"since\" must be a non-negative transition id (the \"id\" of the last alert message)",
                )),
            },
        },
        "unsubscribe_alerts" => Ok(ClientMsg::UnsubscribeAlerts),
        "unsubscribe" => {
            let kpis = kpi_list(obj.remove("kpis"))?;
            let dims = match obj.get("dims") {
                None => Which::All,
                Some(d) => Which::Only(parse_dims(Some(d))?),
            };
            Ok(ClientMsg::Unsubscribe { kpis, dims })
        }
        other => Err(refused(
            ErrorCode::UnknownOp,
            format!(
                "unknown op {:?} (expected subscribe, unsubscribe, subscribe_alerts, unsubscribe_alerts or ping)",
                truncate(other, 64)
            ),
        )),
    }
}

fn kpi_list(v: Option<Value>) -> Result<Vec<String>, ParseError> {
    let Some(Value::Array(items)) = v else {
        return Err(refused(
            ErrorCode::BadMessage,
            "\"kpis\" must be an array of KPI names",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) if !out.contains(&s) => out.push(s),
            Value::String(_) => {} // a duplicate name is harmless
            _ => {
                return Err(refused(
                    ErrorCode::BadMessage,
                    "\"kpis\" must be an array of KPI names",
                ))
            }
        }
    }
    Ok(out)
}

fn parse_dims(v: Option<&Value>) -> Result<Option<DimFilter>, ParseError> {
    DimFilter::parse(v).map_err(|m| refused(ErrorCode::BadDims, m))
}

/// `since` is optional; when present it must map names from `kpis` to versions ≥ 0.
fn parse_since(v: Option<Value>, kpis: &[String]) -> Result<HashMap<String, i64>, ParseError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(HashMap::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            return Err(refused(
                ErrorCode::BadSince,
                "\"since\" must be an object of KPI name → version",
            ))
        }
    };
    let mut since = HashMap::with_capacity(obj.len());
    for (name, version) in obj {
        if !kpis.contains(&name) {
            return Err(refused(
                ErrorCode::BadSince,
                format!(
                    "\"since\" names {:?}, which is not in \"kpis\"",
                    truncate(&name, 64)
                ),
            ));
        }
        match version.as_i64() {
            Some(v) if v >= 0 => {
                since.insert(name, v);
            }
            _ => {
                return Err(refused(
                    ErrorCode::BadSince,
                    format!(
                        "\"since\".{} must be a non-negative integer version",
                        truncate(&name, 64)
                    ),
                ))
            }
        }
    }
    Ok(since)
}

/// A KPI value frame; serialized once per published version (see `hub`).
#[derive(Serialize)]
pub struct ValueFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub kpi: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dims: Option<&'a RawValue>,
    pub version: i64,
    pub data: &'a RawValue,
}

/// `{"type":"error",…}`.
pub fn error_frame(code: ErrorCode, message: &str, kpi: Option<&str>) -> String {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kpi: Option<&'a str>,
    }
    serde_json::to_string(&ErrorFrame {
        kind: "error",
        code: code.as_str(),
        message,
        kpi,
    })
    // Serializing strings into JSON cannot fail; the fallback keeps the type honest.
    .unwrap_or_else(|_| format!(r#"{{"type":"error","code":"{}"}}"#, code.as_str()))
}

pub const PONG: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn alert_subscriptions() {
        assert_eq!(
            parse_client(r#"{"op":"subscribe_alerts"}"#).unwrap(),
            ClientMsg::SubscribeAlerts { since: None }
        );
        assert_eq!(
            parse_client(r#"{"op":"subscribe_alerts","since":41}"#).unwrap(),
            ClientMsg::SubscribeAlerts { since: Some(41) }
        );
        assert_eq!(
            parse_client(r#"{"op":"unsubscribe_alerts"}"#).unwrap(),
            ClientMsg::UnsubscribeAlerts
        );
        for bad in [
            r#"{"op":"subscribe_alerts","since":-1}"#,
            r#"{"op":"subscribe_alerts","since":"x"}"#,
        ] {
            assert_eq!(code(parse_client(bad)), ErrorCode::BadSince, "{bad}");
        }
    }

    fn code(r: Result<ClientMsg, ParseError>) -> ErrorCode {
        match r {
            Err(ParseError::Refused { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_three_ops() {
        assert_eq!(parse_client(r#"{"op":"ping"}"#), Ok(ClientMsg::Ping));
        assert_eq!(
            parse_client(r#"{"op":"subscribe","kpis":["a","b","a"],"since":{"a":41}}"#),
            Ok(ClientMsg::Subscribe {
                kpis: vec!["a".into(), "b".into()],
                since: HashMap::from([("a".to_string(), 41)]),
                dims: None,
            })
        );
        assert_eq!(
            parse_client(r#"{"op":"subscribe","kpis":["a"],"since":null}"#),
            Ok(ClientMsg::Subscribe {
                kpis: vec!["a".into()],
                since: HashMap::new(),
                dims: None,
            })
        );
        assert_eq!(
            parse_client(r#"{"op":"unsubscribe","kpis":["a"]}"#),
            Ok(ClientMsg::Unsubscribe {
                kpis: vec!["a".into()],
                dims: Which::All,
            })
        );
        let eu = DimFilter::parse(Some(&serde_json::json!({"region": "eu"}))).unwrap();
        assert_eq!(
            parse_client(r#"{"op":"subscribe","kpis":["a"],"dims":{"region":"eu"}}"#),
            Ok(ClientMsg::Subscribe {
                kpis: vec!["a".into()],
                since: HashMap::new(),
                dims: eu.clone(),
            })
        );
        assert_eq!(
            parse_client(r#"{"op":"unsubscribe","kpis":["a"],"dims":{"region":"eu"}}"#),
            Ok(ClientMsg::Unsubscribe {
                kpis: vec!["a".into()],
                dims: Which::Only(eu),
            })
        );
        assert_eq!(
            parse_client(r#"{"op":"unsubscribe","kpis":["a"],"dims":{}}"#),
            Ok(ClientMsg::Unsubscribe {
                kpis: vec!["a".into()],
                dims: Which::Only(None),
            })
        );
    }

    #[test]
    fn refuses_bad_messages_with_codes() {
        assert!(matches!(parse_client("{nope"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse_client(""), Err(ParseError::NotJson(_))));
        assert_eq!(code(parse_client("[1,2]")), ErrorCode::BadMessage);
        assert_eq!(code(parse_client(r#"{"kpis":[]}"#)), ErrorCode::BadMessage);
        assert_eq!(code(parse_client(r#"{"op":7}"#)), ErrorCode::BadMessage);
        assert_eq!(
            code(parse_client(r#"{"op":"dance"}"#)),
            ErrorCode::UnknownOp
        );
        assert_eq!(
            code(parse_client(r#"{"op":"subscribe","kpis":"a"}"#)),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(parse_client(r#"{"op":"subscribe","kpis":[1]}"#)),
            ErrorCode::BadMessage
        );
        for since in [
            r#""41""#,
            r#"{"a":-1}"#,
            r#"{"a":"41"}"#,
            r#"{"a":1.5}"#,
            r#"{"a":1e30}"#,
            r#"{"b":1}"#,
            r#"[41]"#,
        ] {
            let msg = format!(r#"{{"op":"subscribe","kpis":["a"],"since":{since}}}"#);
            assert_eq!(code(parse_client(&msg)), ErrorCode::BadSince, "{since}");
        }
        for dims in [r#""eu""#, r#"["eu"]"#, r#"{"region":["eu"]}"#] {
            for op in ["subscribe", "unsubscribe"] {
                let msg = format!(r#"{{"op":"{op}","kpis":["a"],"dims":{dims}}}"#);
                assert_eq!(code(parse_client(&msg)), ErrorCode::BadDims, "{op} {dims}");
            }
        }
    }

    #[test]
    fn frames_are_valid_json() {
        let v: Value = serde_json::from_str(&error_frame(
            ErrorCode::UnknownKpi,
            "unknown KPI \"x\"",
            Some("x"),
        ))
        .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "unknown_kpi");
        assert_eq!(v["kpi"], "x");
        let v: Value = serde_json::from_str(PONG).unwrap();
        assert_eq!(v["type"], "pong");
    }
}

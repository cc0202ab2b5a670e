//! The WebSocket opening handshake (RFC 6455, section 4.2), on hyper's upgrade.
//!
//! Not axum's `WebSocketUpgrade`: that hands over a finished WebSocket whose socket
//! cannot be reached, and the fan-out writes frames into the socket itself. The checks
//! and the response are the same; the accept key comes from tungstenite.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::ApiError;

/// Checks that `req` asks for a WebSocket; returns the `101 Switching Protocols`
/// response to send and the upgrade to await once it is sent.
pub fn accept(req: &mut Request) -> Result<(Response, OnUpgrade), ApiError> {
    let headers = req.headers();
    let refuse = |what: &str| {
        ApiError::bad_request(
            "not_websocket",
            format!("not a WebSocket upgrade request: {what}"),
        )
    };
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(refuse("the Connection header must contain \"upgrade\""));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(refuse("the Upgrade header must be \"websocket\""));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(refuse("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse("the Sec-WebSocket-Key header is missing"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| refuse("this connection cannot be upgraded"))?;
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // A base64 string: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok((response, on_upgrade))
}

/// Whether a comma-separated header has `token` (case-insensitive) in any of its values.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn each_missing_part_is_named() {
        for (i, expect) in [
            "Connection",
            "Upgrade header",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Key",
        ]
        .iter()
        .enumerate()
        {
            let mut headers = GOOD.to_vec();
            headers.remove(i);
            let err = accept(&mut request(&headers)).unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
        }
        // Everything right, but no connection to upgrade (a request not from hyper).
        let err = accept(&mut request(&GOOD)).unwrap_err();
        assert!(err.to_string().contains("cannot be upgraded"), "{err}");
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let mut req = request(&GOOD);
        req.extensions_mut()
            .insert(hyper::upgrade::on(hyper::Request::new(
                axum::body::Body::empty(),
            )));
        let (response, _) = accept(&mut req).unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}

//! The dashboard page and its assets, embedded at compile time from `dashboard/dist/`
//! (built by `scripts/build-dashboard.sh`; `build.rs` fails the build when it is not).
//!
//! `GET /` and `GET /d/{name}` serve the page (404 JSON for a dashboard that is not
//! configured), `GET /assets/{file}` its script and style sheet. Each file is sent
//! gzipped when the browser accepts it (the build keeps a `.gz` copy of each, so nothing
//! is compressed at run time), with an ETag from its hash and `Cache-Control: no-cache`:
//! the browser keeps its copy and revalidates it, and gets a 304 until the notifier is
//! rebuilt with another dashboard.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

use super::AppState;
use crate::dashboard::resolve;
use crate::error::{truncate, ApiError};

#[derive(RustEmbed)]
#[folder = "../dashboard/dist/"]
struct Dist;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/d/{name}", get(named))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    file("index.html", &headers).unwrap_or_else(|| ApiError::NotFound.into_response())
}

async fn named(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !resolve::exists(&state.config.dashboards, &name) {
        return ApiError::NoSuch(format!("no dashboard named {:?}", truncate(&name, 64)))
            .into_response();
    }
    index(headers).await
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    // Only the page's own files: not the `.gz` twins, the build stamp or the page.
    if name == "index.html" || name.ends_with(".gz") || name.starts_with('.') {
        return ApiError::NotFound.into_response();
    }
    file(&name, &headers).unwrap_or_else(|| ApiError::NotFound.into_response())
}

/// One embedded file: 304 when the browser's copy is current, else the file (gzipped
/// when accepted).
fn file(name: &str, headers: &HeaderMap) -> Option<Response> {
    let plain = Dist::get(name)?;
    let etag = format!("\"{}\"", hex(&plain.metadata.sha256_hash()[..12]));
    let mime = plain.metadata.mimetype().to_string();
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gz = accepts_gzip(headers)
            .then(|| Dist::get(&format!("{name}.gz")))
            .flatten();
        match gz {
            Some(gz) => {
                let mut r = gz.data.into_owned().into_response();
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            }
            None => plain.data.into_owned().into_response(),
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let coding = parts.next().unwrap_or("").trim();
            // `gzip;q=0` refuses it.
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(accept: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        m
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn files_carry_type_etag_and_encoding() {
        let r = file("app.js", &h("gzip")).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript"));
        let etag = r.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            file("app.js", &again).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        let r = file("index.html", &HeaderMap::new()).unwrap();
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(file("nope.js", &HeaderMap::new()).is_none());
    }
}

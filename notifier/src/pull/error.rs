//! A pull error: what kind (the `kind` label of `kpi_notifier_pull_errors_total`) and
//! a message that says which side failed and why.

use std::fmt;

#[derive(Debug, Clone)]
pub struct PullError {
    /// `connect`, `auth`, `remote_schema`, `remote`, `local`.
    pub kind: &'static str,
    pub message: String,
}

impl PullError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> PullError {
        PullError {
            kind,
            message: message.into(),
        }
    }

    /// A failed connection to the remote: a refused password is `auth`, the rest
    /// `connect`.
    pub fn connect(e: &tokio_postgres::Error) -> PullError {
        let kind = match e.code().map(|c| c.code()) {
            // invalid_password, invalid_authorization_specification
            Some("28P01") | Some("28000") => "auth",
            _ => "connect",
        };
        PullError::new(kind, format!("remote connect: {}", describe(e)))
    }

    /// A failed remote query. A table or column that vanished is `remote_schema`.
    pub fn remote(e: &tokio_postgres::Error) -> PullError {
        let kind = match e.code().map(|c| c.code()) {
            // undefined_table, undefined_column, insufficient_privilege
            Some("42P01") | Some("42703") | Some("42501") => "remote_schema",
            _ => "remote",
        };
        PullError::new(kind, format!("remote: {}", describe(e)))
    }

    pub fn local(e: &tokio_postgres::Error) -> PullError {
        PullError::new("local", format!("local: {}", describe(e)))
    }
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The server's message, SQLSTATE and hint when there is one; the client error else.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            // "error connecting to server: Connection refused (os error 111)"
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

//! Errors raised to SQL users: every one carries a SQLSTATE, a message and a hint.
//!
//! Internal code returns `Result<_, KpiError>`; the SQL-facing boundary calls
//! [`KpiError::raise`], which turns it into a proper `ereport(ERROR, …)` instead of a
//! Rust panic message.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone)]
pub struct KpiError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: String,
}

pub type KpiResult<T> = Result<T, KpiError>;

impl KpiError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        KpiError {
            code,
            message: message.into(),
            detail: None,
            hint: hint.into(),
        }
    }

    /// `22023 invalid_parameter_value`: the most common user mistake.
    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            hint,
        )
    }

    pub fn undefined_kpi(name: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("KPI \"{name}\" does not exist"),
            "SELECT name FROM kpi.list() shows the KPIs that exist.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            message,
            "This is a bug in pg_kpi; please report it with the statement that caused it.",
        )
    }

    /// Raises the error as a Postgres ERROR. Never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "pg_kpi").set_hint(self.hint);
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl From<pgrx::spi::SpiError> for KpiError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        KpiError::internal(format!("SPI: {e}"))
    }
}

/// Unwraps a result at the SQL boundary, raising the error as an ereport.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for KpiResult<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

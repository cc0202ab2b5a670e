//! The naming rule for KPIs and measures: `[a-z_][a-z0-9_]{0,47}`, so every name is a
//! valid unquoted identifier that fits in Postgres's 63-byte limit with our prefixes.

use crate::errors::{KpiError, KpiResult};

pub fn is_valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 48
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

pub fn check(what: &str, name: &str) -> KpiResult<()> {
    if is_valid(name) {
        Ok(())
    } else {
        Err(KpiError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("invalid {what} name \"{name}\""),
            "Names are 1 to 48 characters of lowercase letters, digits and underscores, not starting with a digit.",
        ))
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    #[pgrx::pg_test]
    fn naming_rule() {
        assert!(super::is_valid("checkout"));
        assert!(super::is_valid("_x9"));
        assert!(super::is_valid(&"a".repeat(48)));
        assert!(!super::is_valid(&"a".repeat(49)));
        assert!(!super::is_valid("9lives"));
        assert!(!super::is_valid("Checkout"));
        assert!(!super::is_valid(""));
        assert!(!super::is_valid("a-b"));
    }
}

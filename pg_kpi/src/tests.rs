//! `#[pg_test]`s of the SQL surface (they run inside a transaction that is rolled back,
//! so pre-commit capture is covered by the end-to-end tests in tests/).

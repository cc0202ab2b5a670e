//! Rebuild pieces that need no committed steps; the procedures themselves are tested
//! against a real cluster in tests/tests/rebuild.rs.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_negated_sketch_cancels_its_original() {
        let mut s = pg_kpi_sketches::DdSketch::new();
        for v in [1.0, 2.5, 2.5, 1000.0, -3.0, 0.0] {
            s.add(v).expect("finite");
        }
        let mut sum = s.clone();
        sum.merge(&s.negated());
        assert!(sum.is_empty());
        let bytes = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT kpi._dd_merge($1, kpi._dd_negate($1))",
            &[s.to_bytes().into()],
        )
        .expect("spi")
        .expect("not null");
        assert!(pg_kpi_sketches::DdSketch::from_bytes(&bytes)
            .expect("sketch")
            .is_empty());
    }

    #[pg_test]
    fn hidden_names_are_nobodys_kpi() {
        assert!(super::super::is_hidden(&super::super::hidden_name(
            "orders"
        )));
        assert!(!super::super::is_hidden("orders"));
        let e = crate::catalog::Kpi::by_name("orders#rebuild").expect_err("hidden");
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT);
    }

    #[pg_test]
    #[should_panic(expected = "cannot run inside a transaction block")]
    fn rebuild_refuses_a_transaction_block() {
        // #[pg_test]s run inside a transaction block, as a BEGIN … CALL would.
        Spi::run("CALL kpi.rebuild('whatever')").expect("refused");
    }
}

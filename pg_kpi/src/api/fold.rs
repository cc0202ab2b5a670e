//! `kpi.fold()`: fold pending deltas now (what the background worker does on its own).

use crate::errors::OrRaise;
use crate::privileges::as_extension_owner;
use pgrx::prelude::*;

#[pg_extern(schema = "kpi", name = "_fold", volatile, parallel_unsafe)]
fn fold_now() -> i64 {
    as_extension_owner(crate::fold::fold).or_raise()
}

//! A rebuilt current-state KPI keeps its history: the samples the old definition
//! recorded are copied to the new one's samples table.

use super::definition::measure_text;
use crate::catalog::Kpi;
use crate::errors::KpiResult;
use crate::state::samples;
use pgrx::prelude::*;

/// At the swap, with the old samples table retired (readers of the old definition
/// may still read it): creates the new id's samples table with the old samples and
/// records a sample of the rebuilt value. A sample holds one value per measure, in the
/// definition's order; a measure that `kpi.alter` kept unchanged (same name and
/// definition) keeps its history in its new place, a new or changed one starts at the
/// swap (NULL before).
pub fn carry(old: &Kpi, new: &Kpi) -> KpiResult<()> {
    samples::create(new)?;
    let before: Vec<String> = old.measures.iter().map(measure_text).collect();
    let picks: Vec<String> = new
        .measures
        .iter()
        .map(
            |m| match before.iter().position(|t| *t == measure_text(m)) {
                Some(i) => format!("vals[{}]", i + 1),
                None => "NULL::numeric".to_string(),
            },
        )
        .collect();
    Spi::run(&format!(
        "INSERT INTO {} (at, vals) SELECT at, ARRAY[{}] FROM {}",
        samples::table(new),
        picks.join(", "),
        samples::table(old)
    ))?;
    samples::record_one(new)
}

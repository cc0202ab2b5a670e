//! A source's table as the database has it: the columns its mapping names must exist,
//! be writable and have a type the mapping can convert to, and every NOT NULL column
//! without a default must be mapped. Checked at start-up and before the first write of
//! a source, so a mapping to a missing column is an error that names it, not a failed
//! COPY for every request.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::config::{ExtraFields, SourceConfig};
use super::mapping::{declared_matches, Column, FieldPath, FieldTree, Kind, RowWriter};

/// What a source writes into, resolved against the database.
#[derive(Debug)]
pub struct Target {
    /// `schema.table`, quoted as needed.
    pub table: String,
    /// `COPY schema.table (col, …) FROM STDIN`.
    pub copy_sql: String,
    /// `COPY schema.table (col) FROM STDIN` per column, in the order of `columns`:
    /// for finding which value the database refuses.
    pub copy_one_sql: Vec<String>,
    pub columns: Vec<Column>,
    pub tree: FieldTree,
    pub extra: ExtraFields,
}

impl Target {
    pub fn writer(&self) -> RowWriter<'_> {
        RowWriter {
            columns: &self.columns,
            tree: &self.tree,
            extra: self.extra,
        }
    }

    /// The event field (as configured) that feeds a table column.
    pub fn field_of(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.field.as_str())
    }
}

/// Why a source cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The mapping does not fit the table (or the table is missing): a config mistake.
    #[error("{0}")]
    Mismatch(String),
    /// The database could not be asked (down, timed out).
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
}

struct DbColumn {
    quoted: String,
    /// `format_type`: `numeric(12,2)`, `character varying(10)`.
    shown: String,
    /// The base type's `typname` (a domain's base type).
    typname: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// Resolves source `key` (`ingest.sources[0]`, for messages) against the database.
pub async fn resolve(
    client: &Client,
    key: &str,
    source: &SourceConfig,
) -> Result<Target, ResolveError> {
    let mismatch = |m: String| ResolveError::Mismatch(format!("{key}: {m}"));
    let table = client
        .query_opt(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                    has_table_privilege(c.oid, 'INSERT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&source.table],
        )
        .await
        .map_err(|e| match e.as_db_error() {
            // A name that is not even a name (`a.b.c.d`, a bad quote) is the config's.
            Some(db) if matches!(&db.code().code()[..2], "42" | "3F" | "22") => {
                mismatch(format!("table: {:?}: {}", source.table, db.message()))
            }
            _ => ResolveError::Database(e),
        })?;
    let Some(table) = table else {
        return Err(mismatch(format!(
            "table: {:?} does not exist (or is not on the notifier's search_path)",
            source.table
        )));
    };
    let oid: u32 = table.try_get(0)?;
    let name: String = table.try_get(1)?;
    let relkind: String = table.try_get(2)?;
    let may_insert: bool = table.try_get(3)?;
    if relkind != "r" && relkind != "p" {
        return Err(mismatch(format!("table: {name} is not a table")));
    }
    if !may_insert {
        return Err(mismatch(format!(
            "table: the notifier's database role may not INSERT into {name}"
        )));
    }
    let rows = client
        .query(
            "SELECT a.attname::text, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), \
                    b.typname::text, a.attnotnull, \
                    a.atthasdef OR a.attidentity <> '', a.attgenerated <> '' \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut order = Vec::new();
    let mut db = HashMap::new();
    for r in rows {
        let attname: String = r.try_get(0)?;
        order.push(attname.clone());
        db.insert(
            attname,
            DbColumn {
                quoted: r.try_get(1)?,
                shown: r.try_get(2)?,
                typname: r.try_get(3)?,
                not_null: r.try_get(4)?,
                has_default: r.try_get(5)?,
                generated: r.try_get(6)?,
            },
        );
    }
    let mut columns = Vec::new();
    for (column, spec) in &source.columns {
        let ckey = format!("columns.{column}");
        let Some(c) = db.get(column) else {
            return Err(mismatch(format!(
                "{ckey}: table {name} has no column {column:?} (it has {})",
                order.join(", ")
            )));
        };
        if c.generated {
            return Err(mismatch(format!(
                "{ckey}: {name}.{column} is a generated column and cannot be written"
            )));
        }
        if let Some(declared) = &spec.type_ {
            if !declared_matches(declared, &c.typname) {
                return Err(mismatch(format!(
                    "{ckey}.type: declared {declared} but {name}.{column} is {}",
                    c.shown
                )));
            }
        }
        let field = spec.path_or(column).to_string();
        let path = FieldPath::parse(&field).map_err(|m| mismatch(format!("{ckey}.path: {m}")))?;
        columns.push(Column {
            name: column.clone(),
            field,
            path,
            kind: Kind::of_column(&c.typname),
            // A NOT NULL column without a default refuses NULL anyway: say so per
            // event, with the field, instead of as a failed COPY.
            required: spec.required || (c.not_null && !c.has_default),
        });
    }
    if let Some(unmapped) = order.iter().find(|col| {
        let c = &db[*col];
        c.not_null && !c.has_default && !c.generated && !source.columns.contains_key(*col)
    }) {
        return Err(mismatch(format!(
            "columns: {name}.{unmapped} is NOT NULL without a default, so every event must \
             set it: map it"
        )));
    }
    let list: Vec<&str> = columns
        .iter()
        .map(|c| db[&c.name].quoted.as_str())
        .collect();
    let copy_sql = format!("COPY {name} ({}) FROM STDIN", list.join(", "));
    let copy_one_sql = list
        .iter()
        .map(|c| format!("COPY {name} ({c}) FROM STDIN"))
        .collect();
    let tree = FieldTree::new(columns.iter().map(|c| &c.path));
    Ok(Target {
        table: name,
        copy_sql,
        copy_one_sql,
        columns,
        tree,
        extra: source.extra(),
    })
}

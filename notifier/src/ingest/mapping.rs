//! One JSON event → one row of COPY text: each column's value found by its path,
//! checked against the column's type and written in COPY's text format.
//!
//! The conversion is done here rather than by Postgres so that a bad event is refused
//! with its field and a reason a sender can act on, before anything is sent to the
//! database. Types this module does not know (uuid, date, inet, …) take a JSON string
//! that Postgres parses; a value it refuses comes back as COPY's error, which names the
//! line and column (see [`batch`](super::batch)).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::BytesMut;
use chrono::DateTime;
use serde_json::{Map, Value};

use super::config::ExtraFields;
use crate::error::truncate;

/// The `type` names a mapping may declare, and the Postgres types each matches.
const TYPES: &[(&str, &[&str])] = &[
    ("text", &["text", "varchar", "bpchar", "citext", "name"]),
    ("smallint", &["int2"]),
    ("integer", &["int4"]),
    ("bigint", &["int8"]),
    ("numeric", &["numeric"]),
    ("real", &["float4"]),
    ("double precision", &["float8"]),
    ("boolean", &["bool"]),
    ("timestamptz", &["timestamptz"]),
    ("jsonb", &["jsonb"]),
    ("json", &["json"]),
];

/// The names of [`TYPES`], for config validation and its message.
pub const DECLARED_TYPES: &[&str] = &[
    "text",
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "real",
    "double precision",
    "boolean",
    "timestamptz",
    "jsonb",
    "json",
];

/// Whether a declared `type` fits a column whose (base) type is `typname`.
pub fn declared_matches(declared: &str, typname: &str) -> bool {
    TYPES
        .iter()
        .any(|(name, pg)| *name == declared && pg.contains(&typname))
}

/// How a column's value is checked and written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// An integer column of this many bits.
    Int(u8),
    /// numeric, real or double precision: a JSON number, or a string holding a decimal
    /// (webhooks such as Shopify's send money as `"199.00"`).
    Decimal,
    Bool,
    Timestamptz,
    /// json or jsonb: any JSON value.
    Json,
    /// Any other type, named: a JSON string (or number) that Postgres parses.
    Parsed(String),
}

impl Kind {
    /// The kind of a column whose (base) type is `typname`.
    pub fn of_column(typname: &str) -> Kind {
        match typname {
            "text" | "varchar" | "bpchar" | "citext" | "name" => Kind::Text,
            "int2" => Kind::Int(16),
            "int4" => Kind::Int(32),
            "int8" => Kind::Int(64),
            "numeric" | "float4" | "float8" => Kind::Decimal,
            "bool" => Kind::Bool,
            "timestamptz" => Kind::Timestamptz,
            "json" | "jsonb" => Kind::Json,
            other => Kind::Parsed(other.to_string()),
        }
    }
}

/// Where a value is in an event: a dotted path of keys, or the whole event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldPath {
    Whole,
    Keys(Vec<String>),
}

impl FieldPath {
    pub fn parse(path: &str) -> Result<FieldPath, String> {
        if path == "." {
            return Ok(FieldPath::Whole);
        }
        let keys: Vec<String> = path.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!(
                "{path:?} is not a path (dotted keys such as customer.id, or \".\" for the whole event)"
            ));
        }
        Ok(FieldPath::Keys(keys))
    }

    /// The value at this path in `event` (an object): `None` when a key on the way is
    /// absent or null. A non-object on the way is an error (`customer is a string, not
    /// an object`).
    fn lookup<'a>(&self, event: &'a Value) -> Result<Option<&'a Value>, String> {
        let keys = match self {
            FieldPath::Whole => return Ok(Some(event)),
            FieldPath::Keys(keys) => keys,
        };
        let mut cur = event;
        for (i, key) in keys.iter().enumerate() {
            let Value::Object(obj) = cur else {
                return Err(format!(
                    "{} is {}, not an object",
                    keys[..i].join("."),
                    describe(cur)
                ));
            };
            match obj.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(v) => cur = v,
            }
        }
        Ok(Some(cur))
    }
}

/// One mapped column.
#[derive(Clone, Debug)]
pub struct Column {
    /// The column's name as in the table.
    pub name: String,
    /// The path as the config wrote it: the `field` of errors.
    pub field: String,
    pub path: FieldPath,
    pub kind: Kind,
    /// Required by the mapping, or because the column is NOT NULL without a default.
    pub required: bool,
}

/// Why an event was refused: which field (if one) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn at(field: &str, message: String) -> FieldError {
        FieldError {
            field: Some(field.to_string()),
            message,
        }
    }
}

/// The fields the mapping reads, as a tree, to find the ones it does not.
#[derive(Debug, Default)]
pub struct FieldTree {
    /// A mapping takes this value whole: nothing under it is extra.
    covered: bool,
    children: BTreeMap<String, FieldTree>,
}

impl FieldTree {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a FieldPath>) -> FieldTree {
        let mut root = FieldTree::default();
        for path in paths {
            let mut node = &mut root;
            if let FieldPath::Keys(keys) = path {
                for key in keys {
                    node = node.children.entry(key.clone()).or_default();
                }
            }
            node.covered = true;
        }
        root
    }

    /// The first field of `obj` that no mapping reads, as a dotted path.
    fn first_extra(&self, obj: &Map<String, Value>, prefix: &str) -> Option<String> {
        if self.covered {
            return None;
        }
        for (key, value) in obj {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match self.children.get(key) {
                None => return Some(path),
                Some(child) => {
                    // A non-object where the mapping reads inside is reported by the
                    // lookup, with a better message.
                    if let Value::Object(inner) = value {
                        if let Some(extra) = child.first_extra(inner, &path) {
                            return Some(extra);
                        }
                    }
                }
            }
        }
        None
    }

    fn fields(&self, prefix: &str, out: &mut Vec<String>) {
        if self.covered && !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        for (key, child) in &self.children {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            child.fields(&path, out);
        }
    }
}

/// Converts events to COPY text rows for one target.
pub struct RowWriter<'a> {
    pub columns: &'a [Column],
    pub tree: &'a FieldTree,
    pub extra: ExtraFields,
}

impl RowWriter<'_> {
    /// Appends `event` to `buf` as one COPY text line, or says why it cannot be.
    pub fn write(&self, event: &Value, buf: &mut BytesMut) -> Result<(), FieldError> {
        let Value::Object(obj) = event else {
            return Err(FieldError {
                field: None,
                message: format!("an event must be a JSON object, got {}", describe(event)),
            });
        };
        for (i, col) in self.columns.iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b"\t");
            }
            let value = col
                .path
                .lookup(event)
                .map_err(|m| FieldError::at(&col.field, m))?;
            match value {
                None if col.required => {
                    return Err(FieldError::at(
                        &col.field,
                        format!("required (for column {})", col.name),
                    ))
                }
                None => buf.extend_from_slice(b"\\N"),
                Some(v) => {
                    write_value(buf, &col.kind, v).map_err(|m| FieldError::at(&col.field, m))?
                }
            }
        }
        buf.extend_from_slice(b"\n");
        if self.extra == ExtraFields::Reject {
            if let Some(extra) = self.tree.first_extra(obj, "") {
                let mut known = Vec::new();
                self.tree.fields("", &mut known);
                return Err(FieldError::at(
                    &extra,
                    format!(
                        "no column takes this field (extra_fields = \"reject\"; the fields are {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Writes one non-null value of kind `kind`, or says what is wrong with it.
fn write_value(buf: &mut BytesMut, kind: &Kind, v: &Value) -> Result<(), String> {
    match (kind, v) {
        (Kind::Text, Value::String(s)) => push_text(buf, s)?,
        (Kind::Text, _) => return Err(expected("a string", v)),
        (Kind::Int(bits), Value::Number(n)) => {
            let Some(i) = n.as_i64() else {
                return Err(if n.is_f64() {
                    expected("an integer", v)
                } else {
                    out_of_range(n, *bits)
                });
            };
            let fits = match bits {
                16 => i16::try_from(i).is_ok(),
                32 => i32::try_from(i).is_ok(),
                _ => true,
            };
            if !fits {
                return Err(out_of_range(n, *bits));
            }
            let _ = write!(buf, "{i}");
        }
        (Kind::Int(_), _) => return Err(expected("an integer", v)),
        (Kind::Decimal, Value::Number(n)) => {
            let _ = write!(buf, "{n}");
        }
        (Kind::Decimal, Value::String(s)) if is_decimal(s) => buf.extend_from_slice(s.as_bytes()),
        (Kind::Decimal, _) => return Err(expected("a number or a string holding a decimal", v)),
        (Kind::Bool, Value::Bool(b)) => buf.extend_from_slice(if *b { b"t" } else { b"f" }),
        (Kind::Bool, _) => return Err(expected("true or false", v)),
        (Kind::Timestamptz, Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => {
                let _ = write!(buf, "{}", t.to_rfc3339());
            }
            Err(_) => {
                return Err(expected(
                    "an RFC 3339 timestamp with an offset, such as 2026-12-07T10:00:00Z",
                    v,
                ))
            }
        },
        (Kind::Timestamptz, _) => {
            return Err(expected(
                "an RFC 3339 timestamp string, such as 2026-12-07T10:00:00Z",
                v,
            ))
        }
        (Kind::Json, v) => write_json(buf, v),
        (Kind::Parsed(_), Value::String(s)) => push_text(buf, s)?,
        (Kind::Parsed(_), Value::Number(n)) => {
            let _ = write!(buf, "{n}");
        }
        (Kind::Parsed(t), _) => return Err(expected(&format!("a string holding a {t}"), v)),
    }
    Ok(())
}

/// A JSON value as COPY text: serialised, then escaped (its backslashes double).
fn write_json(buf: &mut BytesMut, v: &Value) {
    // Serialising a Value cannot fail: its keys are strings.
    let text = v.to_string();
    push_escaped(buf, &text);
}

/// A string for a text-like column; Postgres text cannot hold NUL.
fn push_text(buf: &mut BytesMut, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err("contains a NUL character (\\u0000), which Postgres text cannot hold".into());
    }
    push_escaped(buf, s);
    Ok(())
}

/// COPY text format: backslash, newline, carriage return and tab are escaped; the
/// rest is written as it is (the connection's encoding is UTF-8).
fn push_escaped(buf: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        buf.extend_from_slice(&b[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&b[start..]);
}

/// `[+-]digits[.digits][e[+-]digits]` (or `.digits`): what a JSON number or a decimal
/// string looks like. NaN and Infinity are refused: they are not amounts.
fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exponent_ok
}

fn out_of_range(n: &serde_json::Number, bits: u8) -> String {
    let (lo, hi, name) = match bits {
        16 => (i16::MIN as i64, i16::MAX as i64, "smallint"),
        32 => (i32::MIN as i64, i32::MAX as i64, "integer"),
        _ => (i64::MIN, i64::MAX, "bigint"),
    };
    format!("{n} is out of range for {name} ({lo} to {hi})")
}

fn expected(what: &str, got: &Value) -> String {
    format!("expected {what}, got {}", describe(got))
}

/// A value's JSON type with a short quote of it, for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s, 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str, path: &str, kind: Kind, required: bool) -> Column {
        Column {
            name: name.into(),
            field: path.into(),
            path: FieldPath::parse(path).unwrap(),
            kind,
            required,
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            col("id", "id", Kind::Int(64), true),
            col("total", "total_price", Kind::Decimal, false),
            col("country", "shipping.country", Kind::Text, false),
            col("paid", "paid", Kind::Bool, false),
            col("at", "at", Kind::Timestamptz, false),
            col("qty", "qty", Kind::Int(16), false),
            col("meta", "meta", Kind::Json, false),
        ]
    }

    fn row(extra: ExtraFields, event: Value) -> Result<String, FieldError> {
        let cols = columns();
        let tree = FieldTree::new(cols.iter().map(|c| &c.path));
        let w = RowWriter {
            columns: &cols,
            tree: &tree,
            extra,
        };
        let mut buf = BytesMut::new();
        w.write(&event, &mut buf)?;
        Ok(String::from_utf8(buf.to_vec()).unwrap())
    }

    fn err(event: Value) -> (Option<String>, String) {
        let e = row(ExtraFields::Reject, event).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn converts_and_escapes() {
        let r = row(
            ExtraFields::Reject,
            json!({"id": 7, "total_price": "19.90", "shipping": {"country": "a\tb\\c\nd"},
                   "paid": true, "at": "2026-12-07T10:00:00+01:00", "qty": -3,
                   "meta": {"k": "v\n"}}),
        )
        .unwrap();
        assert_eq!(
            r,
            "7\t19.90\ta\\tb\\\\c\\nd\tt\t2026-12-07T10:00:00+01:00\t-3\t{\"k\":\"v\\\\n\"}\n"
        );
        let r = row(ExtraFields::Reject, json!({"id": 1, "total_price": 2.5})).unwrap();
        assert_eq!(r, "1\t2.5\t\\N\t\\N\t\\N\t\\N\t\\N\n");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"total_price": 1}), "id", "required"),
            (json!({"id": null}), "id", "required"),
            (
                json!({"id": "7"}),
                "id",
                "expected an integer, got the string \"7\"",
            ),
            (json!({"id": 1.5}), "id", "expected an integer"),
            (
                json!({"id": 1, "qty": 40000}),
                "qty",
                "out of range for smallint",
            ),
            (
                json!({"id": 18446744073709551615u64}),
                "id",
                "out of range for bigint",
            ),
            (
                json!({"id": 1, "total_price": "12,50"}),
                "total_price",
                "decimal",
            ),
            (
                json!({"id": 1, "total_price": "NaN"}),
                "total_price",
                "decimal",
            ),
            (
                json!({"id": 1, "total_price": true}),
                "total_price",
                "got true",
            ),
            (json!({"id": 1, "paid": "yes"}), "paid", "true or false"),
            (json!({"id": 1, "at": "yesterday"}), "at", "RFC 3339"),
            (
                json!({"id": 1, "at": "2026-12-07T10:00:00"}),
                "at",
                "RFC 3339",
            ),
            (json!({"id": 1, "at": 1765101600}), "at", "RFC 3339"),
            (
                json!({"id": 1, "shipping": "x"}),
                "shipping.country",
                "shipping is the string",
            ),
            (
                json!({"id": 1, "shipping": {"country": 3}}),
                "shipping.country",
                "expected a string",
            ),
            (
                json!({"id": 1, "shipping": {"country": "a\u{0}"}}),
                "shipping.country",
                "NUL",
            ),
            (
                json!({"id": 1, "coupon": "X"}),
                "coupon",
                "no column takes this field",
            ),
            (
                json!({"id": 1, "shipping": {"city": "Oslo"}}),
                "shipping.city",
                "no column",
            ),
        ];
        for (event, field, message) in cases {
            let (f, m) = err(event.clone());
            assert_eq!(f.as_deref(), Some(field), "{event}: {m}");
            assert!(m.contains(message), "{event}: {m}");
        }
        let e = row(ExtraFields::Reject, json!([1])).unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.message.contains("JSON object"), "{}", e.message);
    }

    #[test]
    fn extra_fields_can_be_ignored() {
        let r = row(
            ExtraFields::Ignore,
            json!({"id": 1, "coupon": "X", "shipping": {"city": "Oslo", "country": "NO"}}),
        )
        .unwrap();
        assert!(r.starts_with("1\t\\N\tNO\t"), "{r}");
    }

    #[test]
    fn the_whole_event() {
        let cols = vec![
            col("id", "id", Kind::Int(32), true),
            col("raw", ".", Kind::Json, false),
        ];
        let tree = FieldTree::new(cols.iter().map(|c| &c.path));
        let w = RowWriter {
            columns: &cols,
            tree: &tree,
            extra: ExtraFields::Reject,
        };
        let mut buf = BytesMut::new();
        w.write(&json!({"id": 1, "anything": [1, 2]}), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"1\t{\"anything\":[1,2],\"id\":1}\n");
    }

    #[test]
    fn decimals_and_declared_types() {
        for ok in ["1", "-1.5", "+.5", "3.", "1e10", "2.5E-3"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in ["", ".", "-", "1e", "e5", "1.2.3", " 1", "Infinity", "0x10"] {
            assert!(!is_decimal(bad), "{bad}");
        }
        assert!(declared_matches("text", "varchar"));
        assert!(declared_matches("integer", "int4"));
        assert!(!declared_matches("integer", "int8"));
        assert_eq!(DECLARED_TYPES.len(), TYPES.len());
        assert_eq!(Kind::of_column("uuid"), Kind::Parsed("uuid".into()));
    }
}

//! Label matchers, as Alertmanager writes them: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"` in routes, and `{name, value, isRegex, isEqual}` in
//! silences. Regexes are anchored at both ends, as there.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// An alert's labels.
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    pub is_equal: bool,
    regex: Option<Regex>,
}

/// A matcher in the silences API's JSON form.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatcherJson {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

impl Matcher {
    pub fn new(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Result<Matcher, String> {
        if !valid_label_name(name) {
            return Err(format!(
                "{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            ));
        }
        let regex = if is_regex {
            Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("{value:?} is not a regular expression: {e}"))?,
            )
        } else {
            None
        };
        Ok(Matcher {
            name: name.to_string(),
            value: value.to_string(),
            is_regex,
            is_equal,
            regex,
        })
    }

    /// `name<op>"value"`, the value in double quotes (`\"` and `\\` escape).
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let text = text.trim();
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| format!("{text:?}: expected name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\""))?;
        let name = text[..at].trim();
        let rest = &text[at..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("{text:?}: unknown operator"))?;
        let value = unquote(value).ok_or_else(|| {
            format!("{text:?}: the value must be in double quotes, as in severity=\"critical\"")
        })?;
        Matcher::new(name, &value, op.ends_with('~'), !op.starts_with('!'))
    }

    pub fn from_json(j: &MatcherJson) -> Result<Matcher, String> {
        Matcher::new(&j.name, &j.value, j.is_regex, j.is_equal)
    }

    pub fn to_json(&self) -> MatcherJson {
        MatcherJson {
            name: self.name.clone(),
            value: self.value.clone(),
            is_regex: self.is_regex,
            is_equal: self.is_equal,
        }
    }

    /// A missing label matches as the empty string, as in Alertmanager.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        let hit = match &self.regex {
            Some(r) => r.is_match(v),
            None => v == self.value,
        };
        hit == self.is_equal
    }
}

pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(v: &str) -> Option<String> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_four_operators() {
        let l = labels(&[("severity", "critical"), ("team", "payments")]);
        assert!(Matcher::parse(r#"severity="critical""#)
            .unwrap()
            .matches(&l));
        assert!(!Matcher::parse(r#"severity!="critical""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"team=~"pay.*""#).unwrap().matches(&l));
        assert!(
            !Matcher::parse(r#"team=~"pay""#).unwrap().matches(&l),
            "anchored"
        );
        assert!(Matcher::parse(r#"team!~"ops|infra""#).unwrap().matches(&l));
        assert!(
            Matcher::parse(r#"region="""#).unwrap().matches(&l),
            "missing is empty"
        );
        assert_eq!(Matcher::parse(r#"a="x\"y""#).unwrap().value, "x\"y");
    }

    #[test]
    fn bad_matchers_say_why() {
        for (m, want) in [
            ("severity=critical", "double quotes"),
            ("severity", "expected name="),
            ("9x=\"a\"", "not a label name"),
            ("a=~\"(\"", "not a regular expression"),
        ] {
            let e = Matcher::parse(m).unwrap_err();
            assert!(e.contains(want), "{m}: {e}");
        }
    }
}

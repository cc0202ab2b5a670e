//! Formulas of derived measures: `aov = revenue / orders`,
//! `error_rate = errors / nullif(attempts, 0)`, or across KPIs
//! `checkout.orders / sessions.visitors`.
//!
//! A formula is arithmetic over other measures, evaluated at read time from the
//! measures' values over the window being read. Each referenced measure is merged over
//! the whole window first, so a 30-minute ratio is sum/sum over the 30 minutes, never an
//! average of per-bucket ratios.
//!
//! The language is deliberately small (numbers, measure names, `+ - * /`, parentheses
//! and a few numeric functions) and parsed here, not by Postgres: the SQL it turns into
//! is generated from the tree, so nothing the user wrote reaches a query as text.
//! Division by zero yields NULL (`a / NULLIF(b, 0)`): a ratio over an empty window has
//! no value, and a dashboard read must not fail on it.

use crate::errors::{KpiError, KpiResult};
use pgrx::PgSqlErrorCode;

/// Functions a formula may call (all numeric → numeric in Postgres).
const FUNCTIONS: &[&str] = &[
    "nullif", "coalesce", "greatest", "least", "abs", "round", "trunc", "ceil", "floor",
];

/// Whether `name` (lower case) is a function a formula may call.
pub fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

/// A reference to a measure: `name`, or `kpi.name` across KPIs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ref {
    pub kpi: Option<String>,
    pub measure: String,
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kpi {
            Some(k) => write!(f, "{k}.{}", self.measure),
            None => f.write_str(&self.measure),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A numeric literal, kept as written (validated digits and one dot).
    Number(String),
    Ref(Ref),
    Neg(Box<Expr>),
    Binary(char, Box<Expr>, Box<Expr>),
    Call(&'static str, Vec<Expr>),
}

fn syntax(formula: &str, why: &str) -> KpiError {
    KpiError::new(
        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("invalid derived measure \"{}\": {why}", formula.trim()),
        "A derived measure combines other measures of the KPI by name with numbers, + - * /, \
         parentheses and nullif, coalesce, greatest, least, abs, round, trunc, ceil, floor; \
         for example 'aov = revenue / orders'. Aggregates such as sum(...) belong in their own measure.",
    )
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(String),
    Ident(String),
    Op(char),
}

fn tokenize(text: &str) -> KpiResult<Vec<Token>> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            let mut dot = false;
            while i < chars.len() && (chars[i].is_ascii_digit() || (chars[i] == '.' && !dot)) {
                dot |= chars[i] == '.';
                i += 1;
            }
            out.push(Token::Number(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if "+-*/(),.".contains(c) {
            out.push(Token::Op(c));
            i += 1;
        } else {
            return Err(syntax(text, &format!("unexpected character '{c}'")));
        }
    }
    Ok(out)
}

/// Precedence climbing over the tokens.
struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Token::Op(op)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> KpiResult<Expr> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Some(Token::Op(c @ ('+' | '-'))) => *c,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> KpiResult<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Op(c @ ('*' | '/'))) => *c,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> KpiResult<Expr> {
        if self.eat('-') {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.atom()
    }

    fn atom(&mut self) -> KpiResult<Expr> {
        let token = self.peek().cloned();
        self.at += 1;
        match token {
            Some(Token::Number(n)) => Ok(Expr::Number(n)),
            Some(Token::Op('(')) => {
                let e = self.sum()?;
                if !self.eat(')') {
                    return Err(syntax(self.text, "a parenthesis is not closed"));
                }
                Ok(e)
            }
            Some(Token::Ident(name)) => {
                let lower = name.to_ascii_lowercase();
                if self.eat('(') {
                    let Some(f) = FUNCTIONS.iter().find(|f| **f == lower) else {
                        return Err(syntax(
                            self.text,
                            &format!("\"{name}\" is not a function a derived measure can call"),
                        ));
                    };
                    let mut args = vec![self.sum()?];
                    while self.eat(',') {
                        args.push(self.sum()?);
                    }
                    if !self.eat(')') {
                        return Err(syntax(self.text, &format!("{f}( is not closed")));
                    }
                    return Ok(Expr::Call(f, args));
                }
                if self.eat('.') {
                    match self.peek().cloned() {
                        Some(Token::Ident(m)) => {
                            self.at += 1;
                            return Ok(Expr::Ref(Ref {
                                kpi: Some(name),
                                measure: m,
                            }));
                        }
                        _ => return Err(syntax(self.text, "write kpi.measure")),
                    }
                }
                Ok(Expr::Ref(Ref {
                    kpi: None,
                    measure: name,
                }))
            }
            Some(Token::Op(c)) => Err(syntax(self.text, &format!("unexpected '{c}'"))),
            None => Err(syntax(self.text, "it ends too early")),
        }
    }
}

/// Parses a formula.
pub fn parse(text: &str) -> KpiResult<Expr> {
    let mut p = Parser {
        text,
        tokens: tokenize(text)?,
        at: 0,
    };
    if p.tokens.is_empty() {
        return Err(syntax(text, "it is empty"));
    }
    let e = p.sum()?;
    if p.at < p.tokens.len() {
        return Err(syntax(text, "unexpected text after the end"));
    }
    Ok(e)
}

impl Expr {
    /// The measures it reads, in order of first use.
    pub fn refs(&self) -> Vec<Ref> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<Ref>) {
        match self {
            Expr::Number(_) => {}
            Expr::Ref(r) => {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
            Expr::Neg(e) => e.collect(out),
            Expr::Binary(_, a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.collect(out)),
        }
    }

    /// SQL computing the formula, given the SQL (a numeric expression) of each reference.
    pub fn to_sql(&self, sql_of: &mut dyn FnMut(&Ref) -> String) -> String {
        match self {
            Expr::Number(n) => format!("{n}::numeric"),
            Expr::Ref(r) => format!("({})", sql_of(r)),
            Expr::Neg(e) => format!("(- {})", e.to_sql(sql_of)),
            Expr::Binary('/', a, b) => {
                format!("({} / NULLIF({}, 0))", a.to_sql(sql_of), b.to_sql(sql_of))
            }
            Expr::Binary(op, a, b) => format!("({} {op} {})", a.to_sql(sql_of), b.to_sql(sql_of)),
            Expr::Call(f, args) => {
                let args: Vec<String> = args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| match a {
                        // round(x, 2) and trunc(x, 2) take the digits as an integer.
                        _ if i == 1 && matches!(*f, "round" | "trunc") => {
                            format!("({})::int", a.to_sql(sql_of))
                        }
                        _ => a.to_sql(sql_of),
                    })
                    .collect();
                format!("{f}({})", args.join(", "))
            }
        }
    }
}

impl std::fmt::Display for Expr {
    /// The normalized formula (fully parenthesized), as stored and shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Number(n) => f.write_str(n),
            Expr::Ref(r) => write!(f, "{r}"),
            Expr::Neg(e) => write!(f, "-{e}"),
            Expr::Binary(op, a, b) => {
                let wrap = |e: &Expr| match e {
                    Expr::Binary(..) => format!("({e})"),
                    _ => e.to_string(),
                };
                write!(f, "{} {op} {}", wrap(a), wrap(b))
            }
            Expr::Call(name, args) => {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                write!(f, "{name}({})", args.join(", "))
            }
        }
    }
}

/// The order in which derived measures can be evaluated, or the cycle that prevents it:
/// `deps[i]` lists the derived measures `i` reads.
pub fn check_acyclic(names: &[String], deps: &[Vec<usize>]) -> KpiResult<()> {
    // 0 = unvisited, 1 = on the path, 2 = done.
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match mark[i] {
            2 => return None,
            1 => {
                let from = path.iter().position(|p| *p == i).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            _ => {}
        }
        mark[i] = 1;
        path.push(i);
        for &d in &deps[i] {
            if let Some(c) = visit(d, deps, mark, path) {
                return Some(c);
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; deps.len()];
    for i in 0..deps.len() {
        if let Some(cycle) = visit(i, deps, &mut mark, &mut Vec::new()) {
            let shown: Vec<&str> = cycle.iter().map(|c| names[*c].as_str()).collect();
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_INVALID_RECURSION,
                format!("derived measures form a cycle: {}", shown.join(" -> ")),
                "A derived measure may read other derived measures, but never itself through them.",
            ));
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    #[pgrx::pg_test]
    fn parses_and_prints_formulas() {
        let e = parse("revenue / nullif(orders, 0) * 100 - -2.5").expect("parses");
        assert_eq!(
            e.to_string(),
            "((revenue / nullif(orders, 0)) * 100) - -2.5"
        );
        assert_eq!(
            e.refs(),
            vec![
                Ref {
                    kpi: None,
                    measure: "revenue".into()
                },
                Ref {
                    kpi: None,
                    measure: "orders".into()
                }
            ]
        );
        let x = parse("checkout.orders / sessions.visitors").expect("parses");
        assert_eq!(x.refs()[0].kpi.as_deref(), Some("checkout"));
        let sql = x.to_sql(&mut |r| format!("v_{}", r.measure));
        assert_eq!(sql, "((v_orders) / NULLIF((v_visitors), 0))");
    }

    #[pgrx::pg_test]
    fn rejects_bad_formulas() {
        for bad in [
            "",
            "a +",
            "(a",
            "sum(x)",
            "a ; drop table t",
            "a b",
            "a.",
            "'x'",
            "round(a",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[pgrx::pg_test]
    fn finds_cycles() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert!(check_acyclic(&names, &[vec![1], vec![2], vec![]]).is_ok());
        let err = check_acyclic(&names, &[vec![1], vec![2], vec![0]]).expect_err("cycle");
        assert!(err.message.contains("a -> b -> c -> a"), "{}", err.message);
    }
}

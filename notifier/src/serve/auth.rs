//! Bearer-token authentication and KPI scopes.
//!
//! A token is either a static key from the config or an HS256 JWT signed with
//! `auth.jwt_secret`, carrying `exp` (required) and a `kpis` claim (an array of KPI
//! names, `["*"]` or `"*"` for all) and/or an `ingest` claim (the ingest sources it may
//! send events to, in the same form); one of them is required, so a token minted for
//! something else grants nothing here. A static key has the same two lists (`kpis`,
//! `ingest`). It comes in `Authorization: Bearer …` or, because browsers cannot set
//! headers on WebSocket and EventSource, in `?token=…`.
//!
//! With no tokens configured, every request is anonymous with access to every KPI; the
//! config and `serve` only allow that on a loopback address.

use std::collections::HashSet;

use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;

/// Which KPIs a principal may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Kpis(HashSet<String>),
}

impl Scope {
    fn from_names(names: &[String]) -> Scope {
        if names.iter().any(|n| n == "*") {
            Scope::All
        } else {
            Scope::Kpis(names.iter().cloned().collect())
        }
    }

    pub fn allows(&self, kpi: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Kpis(set) => set.contains(kpi),
        }
    }
}

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Principal {
    /// For logs: the static key's name, the JWT's `sub`, or "anonymous".
    pub name: String,
    pub scope: Scope,
    /// Which ingest sources it may send events to (`POST /api/events/{source}`).
    pub ingest: Scope,
    /// Unix seconds at which the token expires (JWTs only); streaming connections
    /// are closed then.
    pub expires_at: Option<i64>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            scope: Scope::All,
            ingest: Scope::All,
            expires_at: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "token_invalid",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    exp: i64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    kpis: Option<KpisClaim>,
    #[serde(default)]
    ingest: Option<KpisClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KpisClaim {
    One(String),
    Many(Vec<String>),
}

impl KpisClaim {
    /// The scope a claim grants; an absent claim grants nothing.
    fn scope(claim: Option<KpisClaim>) -> Scope {
        match claim {
            None => Scope::Kpis(HashSet::new()),
            Some(KpisClaim::One(s)) => Scope::from_names(&[s]),
            Some(KpisClaim::Many(v)) => Scope::from_names(&v),
        }
    }
}

struct StaticKey {
    name: String,
    token: Vec<u8>,
    scope: Scope,
    ingest: Scope,
}

/// The token checker built from [`AuthConfig`].
pub struct Auth {
    keys: Vec<StaticKey>,
    jwt: Option<(DecodingKey, Validation)>,
    allow_query_token: bool,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let keys = config
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| StaticKey {
                name: if t.name.is_empty() {
                    format!("token#{i}")
                } else {
                    t.name.clone()
                },
                token: t.token.expose().as_bytes().to_vec(),
                scope: Scope::from_names(&t.kpis),
                ingest: Scope::from_names(&t.ingest),
            })
            .collect();
        let jwt = (!config.jwt_secret.is_empty()).then(|| {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = config.jwt_leeway_secs;
            v.set_required_spec_claims(&["exp"]);
            if !config.jwt_audience.is_empty() {
                v.set_audience(&[&config.jwt_audience]);
                v.required_spec_claims.insert("aud".into());
            } else {
                v.validate_aud = false;
            }
            if !config.jwt_issuer.is_empty() {
                v.set_issuer(&[&config.jwt_issuer]);
                v.required_spec_claims.insert("iss".into());
            }
            (
                DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
                v,
            )
        });
        Auth {
            keys,
            jwt,
            allow_query_token: config.allow_query_token,
        }
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// Checks the request's token (header first, then `?token=`).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::anonymous());
        }
        let token = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| AuthError::Invalid("malformed Authorization header".into()))?;
                match value.split_once(' ') {
                    Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                    _ => return Err(AuthError::Invalid("expected \"Bearer <token>\"".into())),
                }
            }
            None if self.allow_query_token => query_token.ok_or(AuthError::Missing)?,
            None => return Err(AuthError::Missing),
        };
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.check(token)
    }

    /// Checks one token.
    pub fn check(&self, token: &str) -> Result<Principal, AuthError> {
        // Compare against every key without stopping early, so timing does not reveal
        // which key (or how much of one) matched.
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(key.token.as_slice(), token.as_bytes()) {
                found = Some(key);
            }
        }
        if let Some(key) = found {
            return Ok(Principal {
                name: key.name.clone(),
                scope: key.scope.clone(),
                ingest: key.ingest.clone(),
                expires_at: None,
            });
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(AuthError::Invalid("unknown token".into()));
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("only HS256 is accepted".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::Json(_) => AuthError::Invalid(
                    "claims must include exp (number) and kpis (array of KPI names) or \
                     ingest (array of ingest sources)"
                        .into(),
                ),
                _ => AuthError::Invalid("unknown or malformed token".into()),
            })?;
        let claims = data.claims;
        if claims.kpis.is_none() && claims.ingest.is_none() {
            return Err(AuthError::Invalid(
                "claims must include kpis (array of KPI names) or ingest (array of ingest sources)"
                    .into(),
            ));
        }
        Ok(Principal {
            name: claims.sub.unwrap_or_else(|| "jwt".into()),
            scope: KpisClaim::scope(claims.kpis),
            ingest: KpisClaim::scope(claims.ingest),
            expires_at: Some(claims.exp),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Secret, StaticToken};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-please-change";

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            tokens: vec![
                StaticToken {
                    name: "ops".into(),
                    token: Secret("static-all-0123456789".into()),
                    kpis: vec!["*".into()],
                    ingest: vec![],
                },
                StaticToken {
                    name: "sales".into(),
                    token: Secret("static-sales-0123456789".into()),
                    kpis: vec!["checkout".into()],
                    ingest: vec!["shop_orders".into()],
                },
            ],
            jwt_secret: Secret(SECRET.into()),
            ..AuthConfig::default()
        })
    }

    fn jwt(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn no_tokens_means_anonymous_with_everything() {
        let a = Auth::new(&AuthConfig::default());
        assert!(!a.enabled());
        let p = a.authenticate(&HeaderMap::new(), None).unwrap();
        assert_eq!(p.scope, Scope::All);
    }

    #[test]
    fn static_keys_with_scopes() {
        let a = auth();
        let p = a
            .authenticate(&bearer("static-sales-0123456789"), None)
            .unwrap();
        assert_eq!(p.name, "sales");
        assert!(p.scope.allows("checkout") && !p.scope.allows("stock"));
        let p = a
            .authenticate(&HeaderMap::new(), Some("static-all-0123456789"))
            .unwrap();
        assert!(p.scope.allows("anything"));
        assert_eq!(
            a.authenticate(&HeaderMap::new(), None).unwrap_err(),
            AuthError::Missing
        );
        assert!(matches!(
            a.authenticate(&bearer("static-all-012345678"), None),
            Err(AuthError::Invalid(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(
            a.authenticate(&h, None),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn ingest_scopes() {
        let a = auth();
        let p = a.check("static-sales-0123456789").unwrap();
        assert!(p.ingest.allows("shop_orders") && !p.ingest.allows("clicks"));
        let p = a.check("static-all-0123456789").unwrap();
        assert!(
            !p.ingest.allows("shop_orders"),
            "kpis = [\"*\"] grants no ingest"
        );

        let t = jwt(json!({"exp": now() + 60, "ingest": ["clicks"]}), SECRET);
        let p = a.check(&t).unwrap();
        assert!(p.ingest.allows("clicks") && !p.ingest.allows("shop_orders"));
        assert!(!p.scope.allows("checkout"), "no kpis claim: no KPIs");
        let t = jwt(
            json!({"exp": now() + 60, "kpis": "*", "ingest": "*"}),
            SECRET,
        );
        let p = a.check(&t).unwrap();
        assert!(p.ingest.allows("anything") && p.scope.allows("anything"));
        let t = jwt(json!({"exp": now() + 60, "kpis": ["checkout"]}), SECRET);
        assert!(!a.check(&t).unwrap().ingest.allows("clicks"));
        assert_eq!(
            Auth::new(&AuthConfig::default())
                .authenticate(&HeaderMap::new(), None)
                .unwrap()
                .ingest,
            Scope::All
        );
    }

    #[test]
    fn query_token_can_be_disabled() {
        let mut cfg = AuthConfig {
            tokens: vec![StaticToken {
                name: String::new(),
                token: Secret("k".repeat(20)),
                kpis: vec!["*".into()],
                ingest: vec![],
            }],
            ..AuthConfig::default()
        };
        cfg.allow_query_token = false;
        let a = Auth::new(&cfg);
        assert_eq!(
            a.authenticate(&HeaderMap::new(), Some(&"k".repeat(20)))
                .unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn jwt_scopes_expiry_and_forgery() {
        let a = auth();
        let t = jwt(
            json!({"sub":"alice","exp": now() + 60, "kpis": ["checkout"]}),
            SECRET,
        );
        let p = a.authenticate(&bearer(&t), None).unwrap();
        assert_eq!(p.name, "alice");
        assert!(p.scope.allows("checkout") && !p.scope.allows("stock"));
        assert!(p.expires_at.is_some());

        let t = jwt(json!({"exp": now() + 60, "kpis": "*"}), SECRET);
        assert_eq!(a.check(&t).unwrap().scope, Scope::All);

        let expired = jwt(json!({"exp": now() - 3600, "kpis": ["checkout"]}), SECRET);
        assert_eq!(a.check(&expired).unwrap_err(), AuthError::Expired);

        let forged = jwt(json!({"exp": now() + 60, "kpis": ["*"]}), "another-secret");
        assert!(matches!(a.check(&forged), Err(AuthError::Invalid(m)) if m.contains("signature")));

        let no_scope = jwt(json!({"exp": now() + 60}), SECRET);
        assert!(matches!(a.check(&no_scope), Err(AuthError::Invalid(_))));
        let no_exp = jwt(json!({"kpis": ["*"]}), SECRET);
        assert!(matches!(a.check(&no_exp), Err(AuthError::Invalid(_))));

        // alg=none and other algorithms are refused whatever the payload says.
        let header = base64url(r#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(&format!(r#"{{"exp":{},"kpis":["*"]}}"#, now() + 60));
        assert!(matches!(
            a.check(&format!("{header}.{body}.")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(a.check("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let a = Auth::new(&AuthConfig {
            jwt_secret: Secret(SECRET.into()),
            jwt_audience: "dash".into(),
            jwt_issuer: "idp".into(),
            ..AuthConfig::default()
        });
        let ok = jwt(
            json!({"exp": now()+60, "kpis":["*"], "aud":"dash", "iss":"idp"}),
            SECRET,
        );
        assert!(a.check(&ok).is_ok());
        let wrong = jwt(
            json!({"exp": now()+60, "kpis":["*"], "aud":"other", "iss":"idp"}),
            SECRET,
        );
        assert!(a.check(&wrong).is_err());
        let missing = jwt(json!({"exp": now()+60, "kpis":["*"]}), SECRET);
        assert!(a.check(&missing).is_err());
    }

    fn base64url(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, c)| acc | (*c as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

//! Configuration: one struct, loaded in layers.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) < environment
//! (`KPI_*`, plus `DATABASE_URL`) < command-line flags. Every key is documented in
//! `notifier/notifier.example.toml`; `docs/notifier.md` lists them too.
//!
//! The layers are merged as TOML tables before the struct is deserialized, so a file or
//! an environment variable only has to name the keys it changes, and a typo in either is
//! an error instead of a silently ignored setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "KPI_";

/// `KPI_*` variables that are read by `main` (flags), not by the config layers.
const ENV_NOT_CONFIG: &[&str] = &["KPI_CONFIG", "KPI_LOG_FORMAT"];

/// The whole configuration of the notifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`serve` takes an already bound listener, so this
    /// is used by `main` only).
    pub listen: SocketAddr,
    /// libpq-style connection string or `postgresql://` URL of the database with pg_kpi.
    pub database_url: Secret,
    /// Call `SELECT kpi.fold()` this often (milliseconds) for databases where the fold
    /// background worker is not preloaded. 0 turns it off.
    pub fold_interval_ms: u64,
    /// How long shutdown waits for open connections to close (milliseconds).
    pub shutdown_grace_ms: u64,
    pub database: DatabaseConfig,
    pub fold: FoldConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub limits: Limits,
    pub ws: WsConfig,
    pub sse: SseConfig,
    pub alerting: crate::alerts::config::AlertingConfig,
    /// `[[dashboards]]`: the built-in web page's layouts (see `dashboard::config`); none
    /// = one default dashboard of every KPI.
    pub dashboards: Vec<crate::dashboard::Dashboard>,
    /// `POST /api/events/{source}`: sources and their column mappings (see `ingest`).
    pub ingest: crate::ingest::config::IngestConfig,
    /// `[[pull]]`: tables copied from remote databases without pg_kpi (see `pull`).
    pub pull: Vec<crate::pull::config::PullJob>,
}

/// How the notifier talks to Postgres.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// First delay before reconnecting the LISTEN connection (milliseconds).
    pub reconnect_min_ms: u64,
    /// The delay doubles after each failed attempt up to this cap (milliseconds).
    pub reconnect_max_ms: u64,
    /// After a NOTIFY, wait this long for more before reading snapshots (milliseconds).
    /// 0 reads at once; notifications that arrive during a read are coalesced anyway.
    pub coalesce_ms: u64,
    /// `statement_timeout` for the notifier's queries (milliseconds).
    pub statement_timeout_ms: u64,
    /// `connect_timeout` for new connections (milliseconds).
    pub connect_timeout_ms: u64,
}

/// Watching the fold through `kpi.status()`, and folding when it stalls (see
/// `fold_watch`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FoldConfig {
    /// Read `kpi.status()` this often (milliseconds).
    pub check_interval_ms: u64,
    /// The fold is stalled when the oldest pending delta may be older than this (ms),
    /// or at once when no fold worker runs while deltas are pending.
    pub lag_limit_ms: u64,
    /// While the fold is stalled, run `SELECT kpi.fold()` from the notifier.
    pub fallback: bool,
    /// How often the fallback folds (milliseconds; one fold at a time).
    pub fallback_interval_ms: u64,
}

/// Bearer-token authentication. With neither `tokens` nor `jwt_secret` set, the notifier
/// serves without auth, and only on a loopback address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static keys, each scoped to a list of KPIs (`["*"]` = all).
    pub tokens: Vec<StaticToken>,
    /// Shared secret for HS256 JWTs. Empty disables JWTs.
    pub jwt_secret: Secret,
    /// If set, a JWT's `aud` claim must be this value.
    pub jwt_audience: String,
    /// If set, a JWT's `iss` claim must be this value.
    pub jwt_issuer: String,
    /// Clock skew tolerated on `exp` and `nbf` (seconds).
    pub jwt_leeway_secs: u64,
    /// Accept `?token=` in the URL (browsers cannot set headers on WebSocket or
    /// EventSource). Tokens in URLs can end up in proxy logs; turn off if no browser
    /// connects directly.
    pub allow_query_token: bool,
}

/// One static bearer key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// A label for logs; the key itself is never logged.
    #[serde(default)]
    pub name: String,
    pub token: Secret,
    /// KPI names this key may read; `"*"` means all.
    #[serde(default)]
    pub kpis: Vec<String>,
    /// Ingest sources this key may send events to; `"*"` means all.
    #[serde(default)]
    pub ingest: Vec<String>,
}

/// Browser-facing HTTP settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins (`scheme://host[:port]`) whose pages may connect; `"*"` allows any.
    /// Requests without an `Origin` header (non-browser clients) and same-origin
    /// requests are always allowed.
    pub allowed_origins: Vec<String>,
}

/// Resource limits that keep one client from hurting the others.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Concurrent WebSocket + SSE connections.
    pub max_connections: usize,
    /// KPIs one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Distinct dimension filters followed across all clients; each costs one
    /// `kpi.snapshot` read whenever its KPI changes.
    pub max_dim_filters: usize,
    /// Largest WebSocket message accepted from a client (bytes).
    pub max_message_bytes: usize,
    /// Sustained client messages per second per WebSocket connection.
    pub messages_per_second: u32,
    /// Messages a client may send in a burst above the sustained rate.
    pub burst: u32,
    /// A send to a client that takes longer than this closes it as too slow (ms).
    pub send_timeout_ms: u64,
}

/// WebSocket keep-alive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Send a WebSocket ping this often (milliseconds).
    pub ping_interval_ms: u64,
    /// Close a client from which nothing (not even a pong) arrived for this long (ms).
    pub idle_timeout_ms: u64,
}

/// Server-Sent Events settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Send a comment line this often so proxies keep the stream open (ms).
    pub keep_alive_ms: u64,
    /// The `retry:` reconnect delay suggested to EventSource clients (ms).
    pub retry_ms: u64,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: Secret("host=localhost user=postgres dbname=postgres".into()),
            fold_interval_ms: 0,
            shutdown_grace_ms: 5_000,
            database: DatabaseConfig::default(),
            fold: FoldConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            limits: Limits::default(),
            ws: WsConfig::default(),
            sse: SseConfig::default(),
            alerting: Default::default(),
            dashboards: Vec::new(),
            ingest: Default::default(),
            pull: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            coalesce_ms: 0,
            statement_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            check_interval_ms: 1_000,
            lag_limit_ms: 5_000,
            fallback: true,
            fallback_interval_ms: 100,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens: Vec::new(),
            jwt_secret: Secret::default(),
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            jwt_leeway_secs: 30,
            allow_query_token: true,
        }
    }
}

#[allow(clippy::derivable_impls)] // spelled out so every default sits in one place
impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_subscriptions: 100,
            max_dim_filters: 1_000,
            max_message_bytes: 64 * 1024,
            messages_per_second: 20,
            burst: 40,
            send_timeout_ms: 10_000,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            keep_alive_ms: 15_000,
            retry_ms: 2_000,
        }
    }
}

/// Values given on the command line: the top layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layers: defaults < `file` < `env` < `flags`, then validates.
    ///
    /// `env` is passed in (normally `std::env::vars()`) so tests need not touch the
    /// process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            )),
            None => None,
        };
        Self::from_layers(
            file.as_ref().map(|(p, s)| (p.as_str(), s.as_str())),
            env,
            flags,
        )
    }

    /// Like [`Config::load`] with the file's text given directly as `(name, text)`.
    pub fn from_layers(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(format!("defaults do not serialize: {e}")))?;
        if let Some((path, text)) = file {
            let file_table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File {
                path: path.to_string(),
                message: e.to_string(),
            })?;
            merge(&mut table, file_table);
        }
        apply_env(&mut table, env)?;
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().trim().to_string()))?;
        if let Some(listen) = flags.listen {
            config.listen = listen;
        }
        if let Some(url) = &flags.database_url {
            config.database_url = Secret(url.clone());
        }
        config.validate()?;
        // [alerting] only comes from the file: its mistakes name the file as well as
        // the key (`config file notifier.toml: alerting.route.receiver: …`).
        config.alerting.validate().map_err(|message| match file {
            Some((path, _)) => ConfigError::File {
                path: path.to_string(),
                message,
            },
            None => ConfigError::Invalid(message),
        })?;
        // [ingest] too: only from the file.
        config.ingest.validate().map_err(|message| match file {
            Some((path, _)) => ConfigError::File {
                path: path.to_string(),
                message,
            },
            None => ConfigError::Invalid(message),
        })?;
        // [[pull]] too: only from the file.
        crate::pull::config::validate(&config.pull).map_err(|message| match file {
            Some((path, _)) => ConfigError::File {
                path: path.to_string(),
                message,
            },
            None => ConfigError::Invalid(message),
        })?;
        // [[dashboards]] too: only from the file.
        crate::dashboard::config::validate(&config.dashboards).map_err(|message| match file {
            Some((path, _)) => ConfigError::File {
                path: path.to_string(),
                message,
            },
            None => ConfigError::Invalid(message),
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, formats, and "secure by default".
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Err(e) = self.database_url.expose().parse::<tokio_postgres::Config>() {
            return bad(format!("database_url: {e}"));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_subscriptions == 0
            || l.max_dim_filters == 0
            || l.max_message_bytes < 64
        {
            return bad("limits: max_connections, max_subscriptions and max_dim_filters must be > 0, max_message_bytes >= 64".into());
        }
        if l.messages_per_second == 0 || l.burst == 0 || l.send_timeout_ms == 0 {
            return bad(
                "limits: messages_per_second, burst and send_timeout_ms must be > 0".into(),
            );
        }
        if self.ws.ping_interval_ms == 0 || self.ws.idle_timeout_ms <= self.ws.ping_interval_ms {
            return bad("ws: ping_interval_ms must be > 0 and < idle_timeout_ms".into());
        }
        if self.sse.keep_alive_ms == 0 {
            return bad("sse: keep_alive_ms must be > 0".into());
        }
        let d = &self.database;
        if d.reconnect_min_ms == 0 || d.reconnect_max_ms < d.reconnect_min_ms {
            return bad("database: need 0 < reconnect_min_ms <= reconnect_max_ms".into());
        }
        let f = &self.fold;
        if f.check_interval_ms == 0 || f.lag_limit_ms == 0 || f.fallback_interval_ms == 0 {
            return bad(
                "fold: check_interval_ms, lag_limit_ms and fallback_interval_ms must be > 0".into(),
            );
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.expose().trim().is_empty() {
                return bad(format!("auth.tokens[{i}]: token is empty"));
            }
            if t.kpis.is_empty() && t.ingest.is_empty() {
                return bad(format!(
                    "auth.tokens[{i}]: kpis and ingest are both empty (use kpis = [\"*\"] for all KPIs)"
                ));
            }
            if let Some(k) = t.kpis.iter().find(|k| *k != "*" && !valid_kpi_name(k)) {
                return bad(format!("auth.tokens[{i}]: {k:?} is not a KPI name"));
            }
            if let Some(k) = t.ingest.iter().find(|k| *k != "*" && !valid_kpi_name(k)) {
                return bad(format!(
                    "auth.tokens[{i}].ingest: {k:?} is not an ingest source name"
                ));
            }
        }
        for o in &self.http.allowed_origins {
            if o != "*" && !valid_origin(o) {
                return bad(format!(
                    "http.allowed_origins: {o:?} is not scheme://host[:port] or \"*\""
                ));
            }
        }
        check_bind_allowed(self.listen, self.auth_enabled()).map_err(ConfigError::Invalid)
    }

    /// Whether any kind of token is configured.
    pub fn auth_enabled(&self) -> bool {
        !self.auth.tokens.is_empty() || !self.auth.jwt_secret.is_empty()
    }

    pub fn duration(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// Secure by default: without tokens the notifier only serves loopback clients.
pub fn check_bind_allowed(addr: SocketAddr, auth_enabled: bool) -> Result<(), String> {
    if auth_enabled || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve on {addr} without authentication: configure auth.tokens or \
             auth.jwt_secret, or listen on a loopback address such as 127.0.0.1"
        ))
    }
}

/// KPI names as the extension defines them: `[a-z_][a-z0-9_]{0,47}`.
pub fn valid_kpi_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 48
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// `scheme://host[:port]` with nothing after it, as browsers send in `Origin`.
fn valid_origin(o: &str) -> bool {
    match o.split_once("://") {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#', ' '])
        }
        None => false,
    }
}

/// Recursively overlays `top` on `base`: tables merge, everything else is replaced.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `KPI_SECTION__KEY=value` variables (and `DATABASE_URL`) to the merged table.
///
/// A variable's value is parsed as the type the key already has (every key has a
/// default), so `KPI_AUTH__JWT_SECRET=true` stays a string. Arrays take a comma-separated
/// list, or a TOML array when the value starts with `[` (needed for `auth.tokens`).
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            (k.starts_with(ENV_PREFIX) && !ENV_NOT_CONFIG.contains(&k.as_str()))
                || k == "DATABASE_URL"
        })
        .collect();
    // DATABASE_URL is the conventional name; KPI_DATABASE_URL is more specific and wins.
    vars.sort_by_key(|(k, _)| (k != "DATABASE_URL", k.clone()));
    for (var, value) in vars {
        let path = if var == "DATABASE_URL" {
            "database_url".to_string()
        } else {
            var[ENV_PREFIX.len()..].to_ascii_lowercase()
        };
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let mut segments: Vec<&str> = path.split("__").collect();
        let Some(leaf) = segments.pop() else {
            return Err(err("empty name".into()));
        };
        let mut cur = &mut *table;
        for seg in segments {
            cur = match cur.get_mut(seg) {
                Some(toml::Value::Table(t)) => t,
                _ => return Err(err(format!("unknown setting (no section {seg:?})"))),
            };
        }
        let Some(existing) = cur.get(leaf) else {
            return Err(err(format!(
                "unknown setting {leaf:?} (nested keys use a double underscore, e.g. KPI_LIMITS__MAX_CONNECTIONS)"
            )));
        };
        let parsed = parse_like(existing, &value).map_err(err)?;
        cur.insert(leaf.to_string(), parsed);
    }
    Ok(())
}

/// Parses an environment value as the same TOML type as `like`.
fn parse_like(like: &toml::Value, value: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    let v = value.trim();
    Ok(match like {
        V::String(_) => V::String(value.to_string()),
        V::Integer(_) => V::Integer(v.parse().map_err(|_| format!("{v:?} is not an integer"))?),
        V::Boolean(_) => V::Boolean(match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("{v:?} is not a boolean")),
        }),
        V::Float(_) => V::Float(v.parse().map_err(|_| format!("{v:?} is not a number"))?),
        V::Array(_) if v.starts_with('[') => {
            let t: toml::Table =
                toml::from_str(&format!("v = {v}")).map_err(|e| e.message().to_string())?;
            t.get("v").cloned().unwrap_or(V::Array(Vec::new()))
        }
        V::Array(_) => V::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| V::String(s.to_string()))
                .collect(),
        ),
        V::Table(_) => return Err("a section cannot be set from one variable".into()),
        V::Datetime(_) => return Err("datetimes are not configurable".into()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_layers(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.auth_enabled());
    }

    #[test]
    fn layers_override_in_order() {
        let file = r#"
            listen = "127.0.0.1:9000"
            database_url = "host=file"
            fold_interval_ms = 50
            [limits]
            max_connections = 5
            max_subscriptions = 7
        "#;
        let e = env(&[
            ("DATABASE_URL", "host=env_plain"),
            ("KPI_LIMITS__MAX_CONNECTIONS", "6"),
            ("KPI_LISTEN", "127.0.0.1:9001"),
            (
                "KPI_HTTP__ALLOWED_ORIGINS",
                "http://a.example, https://b.example:8443",
            ),
            ("KPI_CONFIG", "ignored.toml"),
            ("PATH", "/bin"),
        ]);
        let flags = Overrides {
            listen: Some("127.0.0.1:9002".parse().unwrap()),
            database_url: None,
        };
        let c = Config::from_layers(Some(("f.toml", file)), e, &flags).unwrap();
        assert_eq!(c.listen.port(), 9002, "flag beats env and file");
        assert_eq!(c.database_url.expose(), "host=env_plain", "env beats file");
        assert_eq!(c.fold_interval_ms, 50, "file beats default");
        assert_eq!(c.limits.max_connections, 6, "env beats file");
        assert_eq!(
            c.limits.max_subscriptions, 7,
            "file keys in a section merge"
        );
        assert_eq!(
            c.limits.burst,
            Limits::default().burst,
            "untouched keys keep defaults"
        );
        assert_eq!(
            c.http.allowed_origins,
            vec!["http://a.example", "https://b.example:8443"]
        );
    }

    #[test]
    fn kpi_database_url_beats_database_url() {
        let e = env(&[("KPI_DATABASE_URL", "host=b"), ("DATABASE_URL", "host=a")]);
        let c = Config::from_layers(None, e, &Overrides::default()).unwrap();
        assert_eq!(c.database_url.expose(), "host=b");
        let flags = Overrides {
            listen: None,
            database_url: Some("host=c".into()),
        };
        let e = env(&[("KPI_DATABASE_URL", "host=b")]);
        let c = Config::from_layers(None, e, &flags).unwrap();
        assert_eq!(c.database_url.expose(), "host=c");
    }

    #[test]
    fn env_values_are_typed_by_the_key() {
        let e = env(&[
            ("KPI_AUTH__JWT_SECRET", "true"),
            ("KPI_AUTH__ALLOW_QUERY_TOKEN", "off"),
            (
                "KPI_AUTH__TOKENS",
                r#"[{name = "ops", token = "0123456789abcdef", kpis = ["*"]}]"#,
            ),
        ]);
        let c = Config::from_layers(None, e, &Overrides::default()).unwrap();
        assert_eq!(c.auth.jwt_secret.expose(), "true");
        assert!(!c.auth.allow_query_token);
        assert_eq!(c.auth.tokens.len(), 1);
        assert_eq!(c.auth.tokens[0].name, "ops");
    }

    #[test]
    fn typos_are_errors() {
        for (k, v) in [
            ("KPI_LIMITS_MAX_CONNECTIONS", "5"),
            ("KPI_NOPE__X", "1"),
            ("KPI_LIMITS__MAX_CONNECTIONS", "many"),
            ("KPI_LIMITS", "1"),
            ("KPI_FOLD__FALLBACK", "maybe"),
        ] {
            let r = Config::from_layers(None, env(&[(k, v)]), &Overrides::default());
            assert!(matches!(r, Err(ConfigError::Env { .. })), "{k}={v}: {r:?}");
        }
        let r = Config::from_layers(
            Some(("f", "[limits]\nmax_conections = 1")),
            env(&[]),
            &Overrides::default(),
        );
        assert!(matches!(r, Err(ConfigError::Invalid(_))), "{r:?}");
        let r = Config::from_layers(Some(("f", "listen = ")), env(&[]), &Overrides::default());
        assert!(matches!(r, Err(ConfigError::File { .. })), "{r:?}");
    }

    #[test]
    fn refuses_public_bind_without_auth() {
        let e = env(&[("KPI_LISTEN", "0.0.0.0:8080")]);
        let r = Config::from_layers(None, e, &Overrides::default());
        assert!(matches!(r, Err(ConfigError::Invalid(m)) if m.contains("without authentication")));
        let e = env(&[
            ("KPI_LISTEN", "0.0.0.0:8080"),
            ("KPI_AUTH__JWT_SECRET", "s"),
        ]);
        assert!(Config::from_layers(None, e, &Overrides::default()).is_ok());
        let e = env(&[("KPI_LISTEN", "[::1]:8080")]);
        assert!(Config::from_layers(None, e, &Overrides::default()).is_ok());
    }

    #[test]
    fn validation_catches_bad_values() {
        for file in [
            "[limits]\nmax_connections = 0",
            "[ws]\nping_interval_ms = 10\nidle_timeout_ms = 5",
            "[http]\nallowed_origins = [\"example.com\"]",
            "[http]\nallowed_origins = [\"http://example.com/path\"]",
            "[[auth.tokens]]\ntoken = \"\"\nkpis = [\"*\"]",
            "[[auth.tokens]]\ntoken = \"x\"\nkpis = [\"Bad-Name\"]",
            "database_url = \"host=a port=notaport\"",
            "[fold]\ncheck_interval_ms = 0",
            "[fold]\nlag_limit_ms = 0",
            "[fold]\nfallback_interval_ms = 0",
        ] {
            let r = Config::from_layers(Some(("f", file)), env(&[]), &Overrides::default());
            assert!(matches!(r, Err(ConfigError::Invalid(_))), "{file}: {r:?}");
        }
    }

    #[test]
    fn secrets_do_not_leak_into_debug() {
        let mut c = Config::default();
        c.auth.jwt_secret = Secret("hunter2".into());
        c.database_url = Secret("postgresql://u:pw@h/db".into());
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("pw@"), "{s}");
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../notifier.example.toml");
        let c =
            Config::from_layers(Some(("example", text)), env(&[]), &Overrides::default()).unwrap();
        // The example documents the defaults; only the commented-out samples differ.
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.ws, WsConfig::default());
        assert_eq!(c.sse, SseConfig::default());
        assert_eq!(c.database, DatabaseConfig::default());
        assert_eq!(c.fold, FoldConfig::default());
        assert_eq!(c.alerting, crate::alerts::config::AlertingConfig::default());
        assert_eq!(c.ingest, crate::ingest::config::IngestConfig::default());
        assert_eq!(c.fold_interval_ms, 0);
    }

    #[test]
    fn alerting_mistakes_name_the_file_and_the_key() {
        let text = "[[alerting.receivers]]\nname = \"ops\"\n[[alerting.receivers.webhook_configs]]\nurl = \"http://127.0.0.1:9/\"\n[alerting.route]\nreceiver = \"pager\"\n";
        let e = Config::from_layers(
            Some(("notifier.toml", text)),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file notifier.toml: alerting.route.receiver"),
            "{e}"
        );
        assert!(e.contains("pager"), "{e}");
    }

    #[test]
    fn ingest_mistakes_name_the_file_and_the_key() {
        let text = "[[ingest.sources]]\nname = \"shop\"\ntable = \"orders\"\n[ingest.sources.columns]\ntotal = { type = \"money\" }\n";
        let e = Config::from_layers(
            Some(("notifier.toml", text)),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file notifier.toml: ingest.sources[0].columns.total.type"),
            "{e}"
        );
        let text = "[[auth.tokens]]\ntoken = \"0123456789abcdef\"\ningest = [\"shop\"]\n";
        let c = Config::from_layers(Some(("f", text)), env(&[]), &Overrides::default()).unwrap();
        assert!(c.auth.tokens[0].kpis.is_empty());
        let text = "[[auth.tokens]]\ntoken = \"0123456789abcdef\"\ningest = [\"Shop\"]\n";
        let r = Config::from_layers(Some(("f", text)), env(&[]), &Overrides::default());
        assert!(matches!(r, Err(ConfigError::Invalid(m)) if m.contains("ingest")));
    }

    #[test]
    fn dashboard_mistakes_name_the_file_and_the_key() {
        let text = "[[dashboards]]\nname = \"shop\"\n[[dashboards.cards]]\nkpi = \"checkout\"\nmeasure = \"revenue\"\nformat = \"euros\"\n";
        let e = Config::from_layers(
            Some(("notifier.toml", text)),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file notifier.toml: dashboards[0].cards[0].format: unknown format \"euros\""),
            "{e}"
        );
        let good = text.replace("euros", "currency");
        let c = Config::from_layers(Some(("f", &good)), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.dashboards[0].cards[0].measure, "revenue");
        assert!(Config::default().dashboards.is_empty());
    }

    #[test]
    fn kpi_names() {
        assert!(valid_kpi_name("checkout"));
        assert!(valid_kpi_name("_x9"));
        assert!(!valid_kpi_name("9x"));
        assert!(!valid_kpi_name("Checkout"));
        assert!(!valid_kpi_name(""));
        assert!(!valid_kpi_name(&"a".repeat(49)));
    }
}

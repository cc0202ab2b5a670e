//! `notifier serve` and `notifier pull`: flags and logging; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use notifier::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    version,
    about = "pg_kpi notifier: live KPIs over WebSocket, SSE and JSON"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "KPI_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket, SSE and the JSON API. Settings: defaults < --config file <
    /// KPI_* and DATABASE_URL environment variables < these flags. Log levels come
    /// from RUST_LOG (default info).
    Serve {
        /// TOML config file (see notifier.example.toml).
        #[arg(long, env = "KPI_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Postgres connection string or URL.
        #[arg(long)]
        database_url: Option<String>,
        /// Print the effective configuration (secrets hidden) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Copy the config's `[[pull]]` tables from remote databases without pg_kpi into
    /// local tables (see docs/pull.md), serving GET /metrics on `listen`.
    Pull {
        /// TOML config file with `[[pull]]` jobs (the same file `serve` reads).
        #[arg(long, env = "KPI_CONFIG")]
        config: Option<PathBuf>,
        /// Address of GET /metrics, e.g. 127.0.0.1:9187.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Postgres connection string or URL of the local database.
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The effective configuration (defaults < file < environment < flags); a mistake is
/// logged and exits with code 2.
fn load(
    file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
) -> Result<Config, ExitCode> {
    let flags = Overrides {
        listen,
        database_url,
    };
    Config::load(file.as_deref(), std::env::vars(), &flags).map_err(|e| {
        tracing::error!("{e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        tracing::error!("cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Pull {
            config,
            listen,
            database_url,
        } => {
            let config = match load(config, listen, database_url) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(notifier::pull::command(
                config,
                notifier::shutdown::signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(notifier::pull::CommandError::Config(e)) => {
                    tracing::error!("{e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            listen,
            database_url,
            check,
        } => {
            let config = match load(config, listen, database_url) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if check {
                println!("{config:#?}");
                return ExitCode::SUCCESS;
            }
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let result = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                notifier::serve(listener, config, notifier::shutdown::signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

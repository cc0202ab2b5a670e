//! Test harness for pg_kpi's end-to-end tests: a real, throwaway PostgreSQL cluster
//! with pg_kpi preloaded, started and stopped by the test itself.
//!
//! The cluster runs as the `postgres` OS user when the tests run as root (Postgres
//! refuses to run as root), and as the caller otherwise. Each [`Cluster`] has its own
//! data directory under `target/e2e-clusters/` and a free loopback port; dropping it
//! stops the server (`pg_ctl stop -m immediate`) and removes the directory.
//!
//! The extension must already be installed into the system Postgres
//! (`cargo pgrx install --release`), which `scripts/test.sh` does first. The servers run
//! from a private snapshot of that installation ([`install`]), so a reinstall while tests
//! run does not crash them.
//!
//! Shared by the test files in `tests/tests/`:
//! - [`schema`]: the orders tables and KPI definitions ([`schema::KpiSpec`] yields the
//!   `kpi.create` call, the view query and the GROUP BY recomputation);
//! - [`oracle`]: view == recomputation, with a readable diff;
//! - [`workload`]: seeded random DML sessions (every write path, TRUNCATE, crashes);
//! - [`notify`]: the `kpi_changes` payload contract.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use postgres;

pub mod install;
pub mod notify;
pub mod oracle;
pub mod schema;
pub mod workload;

/// Where the Postgres server binaries live: `PG_BIN_DIR` if set, otherwise a private
/// snapshot of the system installation (see [`install`]: a rebuild of pg_kpi while tests
/// run must not crash their servers), or the system installation itself when the
/// snapshot is disabled (`PG_KPI_E2E_PRIVATE_INSTALL=0`) or cannot be made.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let system = PathBuf::from("/usr/lib/postgresql/15/bin");
    if std::env::var_os("PG_KPI_E2E_PRIVATE_INSTALL").is_some_and(|v| v == "0") {
        return system;
    }
    static PRIVATE: OnceLock<Option<PathBuf>> = OnceLock::new();
    PRIVATE
        .get_or_init(|| install::private_bin_dir(&system))
        .clone()
        .unwrap_or(system)
}

fn running_as_root() -> bool {
    // SAFETY-free check: `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a Postgres binary of `bin_dir`, as `postgres` when we are root.
fn pg_command(bin_dir: &Path, binary: &str) -> Command {
    let path = bin_dir.join(binary);
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// Runs `cmd` (the `what` of the messages) and fails loudly, with its stderr, unless it
/// succeeds.
fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_to_postgres(path: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {path:?} failed");
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature, good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Notices received on a connection made by [`Cluster::connect_with_notices`].
pub type Notices = Arc<Mutex<Vec<postgres::error::DbError>>>;

/// Options for a new cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Load pg_kpi through `shared_preload_libraries` (starts the fold worker).
    pub preload: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Run `CREATE EXTENSION pg_kpi` in database `test` at start. Tests that need to see
    /// what CREATE EXTENSION itself reports (notices) turn this off and run it themselves.
    pub create_extension: bool,
    /// The server binaries to run instead of [`pg_bin_dir`]: an installation snapshot
    /// with extra extension files ([`install::scratch_bin_dir`], the upgrade tests).
    pub bin_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            preload: true,
            settings: Vec::new(),
            create_extension: true,
            bin_dir: None,
        }
    }
}

/// A running throwaway cluster. Stopped and deleted on drop.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    options: ClusterOptions,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// A cluster with pg_kpi preloaded and a database `test` with the extension created.
    pub fn start() -> Cluster {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> Cluster {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-clusters");
        std::fs::create_dir_all(&root).expect("create cluster root");
        let name = format!(
            "c{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create data dir");
        // Parent directories must be traversable by postgres.
        if running_as_root() {
            let _ = Command::new("chmod").arg("a+rx").arg(&root).status();
            let _ = Command::new("chmod")
                .arg("a+rx")
                .arg(root.join(".."))
                .status();
        }
        chown_to_postgres(&dir);
        let bin_dir = options.bin_dir.clone().unwrap_or_else(pg_bin_dir);
        run_ok(
            pg_command(&bin_dir, "initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .arg("-D")
                .arg(dir.join("data"))
                .stdout(Stdio::null()),
            "initdb",
        );
        let cluster = Cluster {
            port: free_port(),
            dir,
            options,
        };
        // Created before the server starts, so that the launcher finds it at once.
        cluster.create_database_offline("test");
        cluster.pg_ctl_start();
        if cluster.options.create_extension {
            cluster.exec("CREATE EXTENSION pg_kpi");
        }
        cluster
    }

    /// A hot standby of this cluster (streaming replication from a base backup), with the
    /// same options, on a port of its own. Stopped and deleted on drop like any cluster.
    pub fn start_standby(&self) -> Cluster {
        let dir = PathBuf::from(format!("{}-standby", self.dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create standby dir");
        chown_to_postgres(&dir);
        run_ok(
            self.pg_command("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-X", "stream", "-R", "--no-sync", "-D"])
                .arg(dir.join("data")),
            "pg_basebackup",
        );
        let standby = Cluster {
            port: free_port(),
            dir,
            options: self.options.clone(),
        };
        standby.pg_ctl_start();
        standby
    }

    /// Runs one of this cluster's server binaries.
    fn pg_command(&self, binary: &str) -> Command {
        let bin_dir = self.options.bin_dir.clone().unwrap_or_else(pg_bin_dir);
        pg_command(&bin_dir, binary)
    }

    fn server_options(&self) -> String {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if self.options.preload {
            // No pg_kpi.databases: the launcher serves every database with the extension.
            opts.push_str(" -c shared_preload_libraries=pg_kpi");
        }
        for (k, v) in &self.options.settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        opts
    }

    /// Creates a database in single-user mode, with the server stopped.
    fn create_database_offline(&self, db: &str) {
        let mut child = self
            .pg_command("postgres")
            .arg("--single")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run postgres --single");
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "CREATE DATABASE {db}").expect("write to postgres --single");
        }
        let out = child
            .wait_with_output()
            .expect("wait for postgres --single");
        // A failed statement does not change single-user mode's exit status: look for it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("ERROR:"),
            "CREATE DATABASE {db} in single-user mode failed: {stderr}"
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pg_ctl_start(&self) {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(self.server_options())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
    }

    /// Stops the server (fast mode) and starts it again on the same port.
    pub fn restart(&self) {
        self.stop_mode("fast");
        self.pg_ctl_start();
    }

    pub fn stop_mode(&self, mode: &str) {
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"])
            .output();
    }

    /// The server log so far (for assertion messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A libpq-style connection string for database `test`.
    pub fn url(&self) -> String {
        self.url_for("test")
    }

    pub fn url_for(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// A `postgresql://` URL for database `test` (for the notifier).
    pub fn database_url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/test", self.port)
    }

    /// A new synchronous connection to database `test`.
    pub fn connect(&self) -> postgres::Client {
        self.connect_to("test")
    }

    pub fn connect_to(&self, db: &str) -> postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&self.url_for(db), postgres::NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect to {db}: {e}\n{}", self.server_log()),
            }
        }
    }

    /// A connection to database `test` that records every notice (WARNING, NOTICE, …)
    /// the server sends, for tests that check what a command reports besides errors.
    pub fn connect_with_notices(&self) -> (postgres::Client, Notices) {
        let notices: Notices = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&notices);
        let mut config: postgres::Config = self.url().parse().expect("connection string");
        config.notice_callback(move |notice| {
            sink.lock().expect("notice lock").push(notice);
        });
        let client = config
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.server_log()));
        (client, notices)
    }

    /// Runs SQL (possibly several statements) in database `test`, panicking on error.
    pub fn exec(&self, sql: &str) {
        self.exec_in("test", sql)
    }

    pub fn exec_in(&self, db: &str, sql: &str) {
        let mut c = self.connect_to(db);
        if let Err(e) = c.batch_execute(sql) {
            panic!("{sql}: {e:?}");
        }
    }

    /// The pid of the fold worker of database `test`, if it is running.
    pub fn fold_worker_pid(&self) -> Option<i32> {
        self.fold_worker_pid_of("test")
    }

    /// The pid of the fold worker of database `db`, if it is running.
    pub fn fold_worker_pid_of(&self, db: &str) -> Option<i32> {
        self.backend_pid(&format!("pg_kpi fold {db}"))
    }

    /// The pid of the launcher, if it is running.
    pub fn launcher_pid(&self) -> Option<i32> {
        self.backend_pid("pg_kpi launcher")
    }

    /// The pids of every process of `backend_type`.
    pub fn backend_pids(&self, backend_type: &str) -> Vec<i32> {
        let mut c = self.connect_to("postgres");
        c.query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
            &[&backend_type],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
    }

    fn backend_pid(&self, backend_type: &str) -> Option<i32> {
        self.backend_pids(backend_type).first().copied()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_mode("immediate");
        if std::env::var_os("KEEP_CLUSTERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An error as the server reported it: severity, SQLSTATE, message, detail, hint and
/// context, or the client-side error when there is no server error (lost connection).
pub fn describe_error(e: &postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return format!("(client) {e}");
    };
    let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        s.push_str(&format!(" | DETAIL: {detail}"));
    }
    if let Some(hint) = db.hint() {
        s.push_str(&format!(" | HINT: {hint}"));
    }
    if let Some(context) = db.where_() {
        s.push_str(&format!(" | CONTEXT: {context}"));
    }
    s
}

/// Sends a signal to a process by PID (used to `kill -9` a backend or the fold worker).
pub fn kill(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

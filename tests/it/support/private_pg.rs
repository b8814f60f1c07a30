//! A private PostgreSQL 15 server for one test: initdb into a temp dir, its own port and
//! socket dir, stop/start/restart at will, removed when dropped (also when the test panics).
//!
//! Tests that restart Postgres use this instead of the shared server on 5432, which other
//! people and tests are using. The server runs as the `postgres` user (initdb refuses root),
//! trusts local connections, and costs about a second to create.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PrivatePg {
    /// The temp dir: `data/` (the cluster), the socket and `server.log`.
    dir: PathBuf,
    pub port: u16,
}

/// A PostgreSQL binary, run as the `postgres` user when this process is root.
fn as_postgres(program: &str) -> Command {
    let mut c = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
        c
    } else {
        Command::new(format!("{BIN}/{program}"))
    };
    // The test's own directory may not be readable by `postgres`.
    c.current_dir(std::env::temp_dir());
    c
}

/// Runs a PostgreSQL binary as the `postgres` user; panics with its output if it fails.
fn run_as_postgres(program: &str, args: &[&str]) {
    let out = as_postgres(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PrivatePg {
    /// initdb + start on a free port. Panics (with the server log) if it cannot.
    pub fn start() -> PrivatePg {
        let dir = std::env::temp_dir().join(format!(
            "ty-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let pg = PrivatePg {
            dir,
            port: free_port(),
        };
        run_as_postgres(
            "initdb",
            &[
                "-D",
                pg.data_dir().to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.display()
        );
        run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                self.log_path().to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server the way an administrator does (`pg_ctl stop -m fast`): every session
    /// is terminated ("terminating connection due to administrator command"), then it exits.
    pub fn stop_server(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server without a clean shutdown (`-m immediate`: recovery at next start).
    pub fn crash_server(&self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }

    /// Whether the server's postmaster is up (pid file present).
    pub fn is_running(&self) -> bool {
        self.data_dir().join("postmaster.pid").exists()
    }

    /// Creates a database and applies all migrations; returns its URL and a pool on it.
    pub async fn create_database(&self, name: &str) -> (String, sqlx::PgPool) {
        let admin = sqlx::PgPool::connect(&self.url("postgres")).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = self.url(name);
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        trainyard::db::migrate(&pool).await.unwrap();
        (url, pool)
    }

    /// Polls `pg_isready` until the server answers or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let ok = Command::new(format!("{BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = as_postgres("pg_ctl")
                .args(["-D", self.data_dir().to_str().unwrap()])
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

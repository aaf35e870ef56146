//! A PostgreSQL database per test: on the server `AHV_TEST_DATABASE_URL`
//! names (CI starts one with .ci/postgres-start), or else on a private server
//! this fixture starts in a temporary directory and stops when dropped.
//! Every wait is bounded and a failure names what it waited for.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sqlx::{Connection, Executor};

/// The variable naming a server the tests may create databases on.
pub const DATABASE_URL_VAR: &str = "AHV_TEST_DATABASE_URL";
/// How long initdb may take.
const INITDB_SECONDS: u32 = 120;
/// How long pg_ctl waits for the server to start or stop.
const PG_CTL_SECONDS: u32 = 30;
/// How long creating or dropping a test database may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh, empty database; dropped (or its private server stopped) on drop.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
    server: Option<PgServer>,
}

impl PgDatabase {
    /// Creates one, starting a private server if no shared one is named.
    pub fn create() -> PgDatabase {
        let (admin_url, server) = match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let server = PgServer::start();
                (server.url(), Some(server))
            }
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        let name = format!("t_{}", hex(&random));
        let sql = format!("CREATE DATABASE {name}");
        admin(&admin_url, &sql).unwrap_or_else(|e| {
            panic!(
                "could not create test database {name} on {}: {e}",
                ahv_store::redact(&admin_url)
            )
        });
        PgDatabase {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
            server,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // A private server goes with its directory; on a shared one the
        // database is dropped so runs do not pile them up.
        if self.server.is_none() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(e) = admin(&self.admin_url, &sql) {
                eprintln!("warning: could not drop test database {}: {e}", self.name);
            }
        }
    }
}

/// Runs one statement on the admin database, on a runtime of its own so it
/// works from a test's runtime and from `drop`.
fn admin(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let work = async {
                let mut conn = sqlx::postgres::PgConnection::connect(&url).await?;
                conn.execute(sql.as_str()).await?;
                conn.close().await
            };
            match tokio::time::timeout(ADMIN_TIMEOUT, work).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {ADMIN_TIMEOUT:?}")),
            }
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

/// `url` pointing at database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_end = after_scheme + rest.find(['/', '?']).unwrap_or(rest.len());
    let path_end = url[authority_end..]
        .find('?')
        .map_or(url.len(), |q| authority_end + q);
    format!("{}/{name}{}", &url[..authority_end], &url[path_end..])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A private PostgreSQL server in a temporary directory, on a Unix socket
/// there and no TCP port.
struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Set when we are root: initdb refuses root, so the server runs as
    /// this user.
    run_as: Option<&'static str>,
}

impl PgServer {
    fn start() -> PgServer {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin, \
                 $AHV_PG_BIN or PATH. Install them (Debian/Ubuntu: `apt-get install postgresql`; \
                 Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`) or set \
                 {DATABASE_URL_VAR} to a server the tests may create databases on."
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let run_as = root.then_some("postgres");
        if let Some(user) = run_as {
            let (uid, gid) = (id_of(user, "-u"), id_of(user, "-g"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let server = PgServer { bin, dir, run_as };
        let data = server.data_dir();
        let out = server.run(
            Some(INITDB_SECONDS),
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "initdb (bounded at {INITDB_SECONDS} s) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A test server: no TCP, a socket in our directory, and no fsync
        // (its data is thrown away).
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\n",
            server.dir.path().display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        let log = server.dir.path().join("log");
        let wait = PG_CTL_SECONDS.to_string();
        let out = server.run(
            None,
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "start".as_ref(),
            ],
        );
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "waited up to {PG_CTL_SECONDS} s (pg_ctl -w) for PostgreSQL to start in {}: {}{}\nserver log:\n{log}",
                server.dir.path().display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// Runs a PostgreSQL program as the server's user, under `timeout` if
    /// the program has no bound of its own.
    fn run(&self, seconds: Option<u32>, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(s) = seconds {
            argv.extend(["timeout".into(), s.to_string().into()]);
        }
        if let Some(user) = self.run_as {
            argv.extend(["runuser".into(), "-u".into(), user.into(), "--".into()]);
        }
        argv.push(self.bin.join(program).into());
        argv.extend(args.iter().map(|a| a.to_os_string()));
        Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("could not run {argv:?}: {e}"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let wait = PG_CTL_SECONDS.to_string();
        let out = self.run(
            None,
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "stop".as_ref(),
            ],
        );
        if !out.status.success() {
            eprintln!(
                "warning: pg_ctl stop (waited up to {PG_CTL_SECONDS} s) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The directory holding initdb and pg_ctl: `$AHV_PG_BIN`, the newest
/// Debian-style `/usr/lib/postgresql/<version>/bin`, or PATH.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("AHV_PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_tools(d))
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    assert!(
        out.status.success(),
        "no user {user:?} to run PostgreSQL as (root may not)"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn database_urls_are_rewritten_to_the_test_database() {
    assert_eq!(
        with_database("postgres://postgres@localhost/postgres?host=/tmp/x", "t_1"),
        "postgres://postgres@localhost/t_1?host=/tmp/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h:5432", "t_1"),
        "postgres://u:p@h:5432/t_1"
    );
    assert_eq!(
        with_database("postgresql://h/db", "t_2"),
        "postgresql://h/t_2"
    );
}

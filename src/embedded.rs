//! The embedded PostgreSQL: with no database URL, scriptd runs a private
//! cluster from the machine's own `initdb`/`pg_ctl`, in `embedded.data_dir`,
//! listening only on a unix socket in a short directory under /tmp (socket
//! paths are limited to 107 bytes). As root, PostgreSQL runs as the `postgres`
//! OS user.
//!
//! Several scriptd processes may share one data directory (the simplest way to
//! try several processes on one machine). The first starts the cluster; the
//! others find it running and use it as clients. Each holds a shared `flock`
//! on `<data_dir>.users.lock` for as long as it runs (the kernel drops it when
//! the process dies, even by kill -9), and starts and stops are serialized by
//! an exclusive `flock` on `<data_dir>.start.lock`. On exit a process stops the
//! cluster only when no other scriptd still uses it (the last one out stops
//! it); a postmaster left by a crashed run, which nobody uses, is restarted.

use std::ffi::CString;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

/// The package to install when the binaries are missing.
pub const MISSING_BINARIES_HELP: &str = "scriptd runs its own PostgreSQL when no DATABASE_URL is set, \
and for that it needs the PostgreSQL server programs initdb and pg_ctl, which it found neither on PATH \
nor under /usr/lib/postgresql/*/bin. Install them (Debian and Ubuntu: `apt-get install postgresql`; \
Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), point embedded.bin_dir \
(SCRIPTD__EMBEDDED__BIN_DIR) at the directory that holds them, or set DATABASE_URL to an existing \
PostgreSQL database.";

/// The port number only names the socket file: the cluster listens on no TCP port.
const SOCKET_PORT: u16 = 5432;
/// The unprivileged account PostgreSQL runs under when scriptd runs as root.
const RUN_AS: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("{MISSING_BINARIES_HELP}")]
    BinariesMissing,
    #[error("{0}")]
    Setup(String),
    #[error("{what} failed ({status}):\n{output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options for starting a cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// Directory with initdb and pg_ctl; `None` searches PATH then /usr/lib/postgresql.
    pub bin_dir: Option<PathBuf>,
    /// Extra `-c name=value` server settings (tests turn fsync off; never for serve).
    pub server_settings: Vec<(String, String)>,
}

impl EmbeddedOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            bin_dir: None,
            server_settings: Vec::new(),
        }
    }
}

/// A running private cluster, used by this process. Dropping it stops the
/// cluster unless another scriptd process still uses it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<Account>,
    stopped: AtomicBool,
    /// Held shared for the life of this process (see the module docs).
    users: File,
    start_lock: PathBuf,
    /// Whether this process started the postmaster (false: it joined one).
    started: bool,
}

/// The two lock files beside the data directory: (start, users).
fn lock_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut p = data_dir.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    (with(".start.lock"), with(".users.lock"))
}

fn open_lock(path: &Path) -> Result<File, EmbeddedError> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

/// The exclusive start/stop lock, held while the guard lives.
fn start_guard(path: &Path) -> Result<File, EmbeddedError> {
    let file = open_lock(path)?;
    file.lock().map_err(io_err(path))?;
    Ok(file)
}

/// Whether no other process holds the users lock (taken exclusively, then
/// released again; callers hold the start lock, so nobody joins meanwhile).
fn nobody_else_uses(users: &File, path: &Path) -> Result<bool, EmbeddedError> {
    match users.try_lock() {
        Ok(()) => {
            users.unlock().map_err(io_err(path))?;
            Ok(true)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

#[derive(Debug, Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

/// Looks up an OS account by name.
fn account(name: &str) -> Option<Account> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the
    // two integers out at once and keep no reference to it.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(Account {
                name: name.to_string(),
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            })
        }
    }
}

/// The name of the effective user (its uid when it has no name).
pub fn current_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns static storage or
    // null, and the name is copied out at once.
    unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            uid.to_string()
        } else {
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// Finds the directory holding initdb and pg_ctl.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = explicit {
        return if has_binaries(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbeddedError::BinariesMissing)
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_binaries(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(EmbeddedError::BinariesMissing)
}

/// The connection string that a cluster on `data_dir` (absolute, as
/// canonicalized) has, whether it runs yet or not.
pub fn connection_string_for(data_dir: &Path, dbname: &str) -> String {
    format!(
        "host={} port={SOCKET_PORT} user=postgres dbname={dbname}",
        socket_dir_for(data_dir).display()
    )
}

/// A short socket directory under /tmp, unique per data directory.
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let mut h = DefaultHasher::new();
    data_dir.hash(&mut h);
    PathBuf::from(format!("/tmp/scriptd-pg-{:016x}", h.finish()))
}

impl EmbeddedPostgres {
    /// Initializes the cluster on first use, joins one that another scriptd
    /// process runs, or recovers from a crashed previous run and starts it.
    /// Blocking; call before the async runtime starts or from a blocking thread.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir(opts.bin_dir.as_deref())?;
        std::fs::create_dir_all(&opts.data_dir).map_err(io_err(&opts.data_dir))?;
        let data_dir = opts
            .data_dir
            .canonicalize()
            .map_err(io_err(&opts.data_dir))?;
        let run_as = if is_root() {
            Some(account(RUN_AS).ok_or_else(|| {
                EmbeddedError::Setup(format!(
                    "scriptd runs as root, and PostgreSQL refuses to; it runs PostgreSQL as the `{RUN_AS}` \
                     OS user, which does not exist here. Create it (`useradd --system {RUN_AS}`) or run scriptd \
                     as a normal user."
                ))
            })?)
        } else {
            None
        };
        let (start_lock, users_path) = lock_paths(&data_dir);
        let _guard = start_guard(&start_lock)?;
        let users = open_lock(&users_path)?;
        let mut pg = EmbeddedPostgres {
            socket_dir: socket_dir_for(&data_dir),
            bin_dir,
            data_dir,
            run_as,
            stopped: AtomicBool::new(true),
            users,
            start_lock,
            started: false,
        };
        let running = pg.pid().is_some_and(process_is_postgres);
        if running && !nobody_else_uses(&pg.users, &users_path)? {
            tracing::info!(
                data_dir = %pg.data_dir.display(),
                "the embedded PostgreSQL is run by another scriptd process; using it as a client"
            );
        } else {
            pg.prepare_dirs()?;
            if !pg.data_dir.join("PG_VERSION").is_file() {
                pg.initdb()?;
            } else {
                pg.recover_stale_run()?;
            }
            pg.started = true;
            if let Err(e) = pg.pg_ctl_start(&opts.server_settings) {
                // A postmaster that came up too late for pg_ctl is stopped too.
                if pg.pid().is_some_and(process_is_postgres) {
                    let _ = pg.pg_ctl_stop("fast");
                }
                return Err(e);
            }
        }
        pg.users.lock_shared().map_err(io_err(&users_path))?;
        // Only now does dropping `pg` leave the cluster (after `_guard` is released).
        pg.stopped.store(false, Ordering::SeqCst);
        Ok(pg)
    }

    /// Whether this process started the cluster (false: it joined another
    /// scriptd's).
    pub fn started_here(&self) -> bool {
        self.started
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The OS user PostgreSQL runs as.
    pub fn os_user(&self) -> String {
        match &self.run_as {
            Some(acct) => acct.name.clone(),
            None => current_user(),
        }
    }

    /// Connection string for database `dbname` (key=value form, unix socket).
    pub fn connection_string(&self, dbname: &str) -> String {
        connection_string_for(&self.data_dir, dbname)
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.data_dir)
    }

    fn prepare_dirs(&self) -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(&self.socket_dir).map_err(io_err(&self.socket_dir))?;
        let Some(acct) = &self.run_as else {
            return Ok(());
        };
        for dir in [&self.data_dir, &self.socket_dir] {
            std::os::unix::fs::chown(dir, Some(acct.uid), Some(acct.gid)).map_err(io_err(dir))?;
        }
        // Every parent of the data directory must be traversable by the account.
        for dir in self.data_dir.ancestors().skip(1) {
            let probe = Command::new("runuser")
                .args(["-u", &acct.name, "--", "test", "-x"])
                .arg(dir)
                .status()
                .map_err(io_err(Path::new("runuser")))?;
            if !probe.success() {
                return Err(EmbeddedError::Setup(format!(
                    "the `{}` OS user, which runs PostgreSQL when scriptd runs as root, cannot reach {} \
                     because it cannot enter {}. Either allow it (`chmod o+x {}` on that directory) or \
                     set embedded.data_dir (SCRIPTD__EMBEDDED__DATA_DIR) to a directory it can reach, \
                     e.g. /var/tmp/scriptd/postgres.",
                    acct.name,
                    self.data_dir.display(),
                    dir.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bin_dir.join(program);
        match &self.run_as {
            Some(acct) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &acct.name, "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<Output, EmbeddedError> {
        // The working directory must be readable by the account PostgreSQL runs as.
        cmd.current_dir(&self.data_dir);
        let out = cmd.output().map_err(io_err(&self.bin_dir))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(EmbeddedError::Command {
                what: what.to_string(),
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        let non_empty = std::fs::read_dir(&self.data_dir)
            .map_err(io_err(&self.data_dir))?
            .next()
            .is_some();
        if non_empty {
            return Err(EmbeddedError::Setup(format!(
                "{} is neither empty nor a PostgreSQL data directory (no PG_VERSION); \
                 remove it or point embedded.data_dir elsewhere",
                self.data_dir.display()
            )));
        }
        tracing::info!(data_dir = %self.data_dir.display(), "initializing the embedded PostgreSQL cluster");
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        self.run("initdb", cmd).map(|_| ())
    }

    /// A previous scriptd that crashed may have left its postmaster running
    /// (stop it, we take over) or a stale `postmaster.pid` (remove it).
    fn recover_stale_run(&self) -> Result<(), EmbeddedError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        if process_is_postgres(pid) {
            tracing::warn!(pid, "a PostgreSQL left by a crashed earlier run (no scriptd uses it) is still up; restarting it");
            self.pg_ctl_stop("fast")?;
        } else {
            tracing::warn!(
                pid,
                "removing the stale postmaster.pid of a crashed earlier run"
            );
            let file = self.data_dir.join("postmaster.pid");
            std::fs::remove_file(&file).map_err(io_err(&file))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self, settings: &[(String, String)]) -> Result<(), EmbeddedError> {
        let mut server_opts = format!(
            "-k {} -p {SOCKET_PORT} -c listen_addresses='' -c max_connections=200",
            self.socket_dir.display()
        );
        for (k, v) in settings {
            server_opts.push_str(&format!(" -c {k}={v}"));
        }
        let log = self.data_dir.join("postgresql.log");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&log).args([
            "-w",
            "-t",
            "60",
            "-o",
            &server_opts,
            "start",
        ]);
        self.run("pg_ctl start", cmd).map_err(|e| match e {
            EmbeddedError::Command {
                what,
                status,
                output,
            } => EmbeddedError::Command {
                what,
                status,
                output: format!(
                    "{output}\nlast lines of {}:\n{}",
                    log.display(),
                    tail(&log, 20)
                ),
            },
            other => other,
        })?;
        tracing::info!(socket_dir = %self.socket_dir.display(), "embedded PostgreSQL started");
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        self.run("pg_ctl stop", cmd).map(|_| ())
    }

    /// Leaves the cluster: stops it (fast shutdown: sessions are disconnected,
    /// data is safe) unless another scriptd process still uses it. Idempotent.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _guard = start_guard(&self.start_lock)?;
        let (_, users_path) = lock_paths(&self.data_dir);
        self.users.unlock().map_err(io_err(&users_path))?;
        if !nobody_else_uses(&self.users, &users_path)? {
            tracing::info!(
                started_here = self.started,
                "leaving the embedded PostgreSQL running: another scriptd process still uses it \
                 (the last one to exit stops it)"
            );
            return Ok(());
        }
        if self.pid().is_none() {
            return Ok(());
        }
        let result = self.pg_ctl_stop("fast");
        if result.is_ok() {
            // Empty once the server is down; leave it if anything else is inside.
            let _ = std::fs::remove_dir(&self.socket_dir);
            tracing::info!("embedded PostgreSQL stopped");
        }
        result
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "stopping the embedded PostgreSQL failed");
        }
    }
}

fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and a postgres process (not a recycled pid).
fn process_is_postgres(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim() == "postgres" || comm.trim() == "postmaster")
        .unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Creates database `name` if it does not exist (connecting to `postgres`).
pub async fn ensure_database(pg: &EmbeddedPostgres, name: &str) -> anyhow::Result<()> {
    actors::store::cluster::ensure_database(&pg.connection_string("postgres"), name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_fit_the_limit() {
        let long = PathBuf::from(format!("/{}", "x".repeat(300)));
        let dir = socket_dir_for(&long);
        assert!(
            dir.join(format!(".s.PGSQL.{SOCKET_PORT}.lock"))
                .as_os_str()
                .len()
                < 107
        );
    }

    #[test]
    fn explicit_bin_dir_without_binaries_is_missing() {
        assert!(matches!(
            find_bin_dir(Some(Path::new("/nonexistent"))),
            Err(EmbeddedError::BinariesMissing)
        ));
    }
}

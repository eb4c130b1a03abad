//! The embedded PostgreSQL launcher and the `scriptd` binary's life cycle.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scriptd::embedded::{EmbeddedOptions, EmbeddedPostgres};

use crate::foundation::tempdir;
use crate::helpers::connect;

/// Whether `pid` is a live process (a zombie waiting to be reaped counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits (bounded) for `pid` to be gone: a stopped postmaster removes its pid
/// file a moment before the process itself ends.
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[actix_web::test]
async fn a_second_start_reuses_the_data() {
    let dir = tempdir("reuse");
    let opts = EmbeddedOptions::new(dir.join("pg"));
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    let client = connect(&pg.connection_string("postgres")).await;
    client
        .batch_execute("CREATE TABLE marker (v int); INSERT INTO marker VALUES (42);")
        .await
        .unwrap();
    drop(client);
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(gone(pid), "the postmaster survived the drop");

    let pg = EmbeddedPostgres::start(&opts).unwrap();
    let client = connect(&pg.connection_string("postgres")).await;
    let v: i32 = client
        .query_one("SELECT v FROM marker", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    drop(client);
    drop(pg);
    std::fs::remove_dir_all(dir).ok();
}

#[actix_web::test]
async fn a_stale_postmaster_pid_file_is_removed() {
    let dir = tempdir("stale");
    let opts = EmbeddedOptions::new(dir.join("pg"));
    drop(EmbeddedPostgres::start(&opts).unwrap());
    // A stale postmaster.pid naming a process that is not PostgreSQL.
    let pid_file = dir.join("pg/postmaster.pid");
    std::fs::write(
        &pid_file,
        format!("{}\n{}\n", std::process::id(), dir.join("pg").display()),
    )
    .unwrap();
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    assert!(pg.started_here());
    let client = connect(&pg.connection_string("postgres")).await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    drop(pg);
    std::fs::remove_dir_all(dir).ok();
}

fn scriptd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scriptd"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("PORT")
        .env("RUST_LOG", "info")
        .env("SCRIPTD__LOG__FORMAT", "json");
    cmd
}

/// A `scriptd serve` on an embedded data directory, with its log kept.
struct Serve {
    child: std::process::Child,
    port: u16,
    port_rx: Option<std::sync::mpsc::Receiver<u16>>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    fn start(data_dir: &std::path::Path) -> Serve {
        let mut cmd = scriptd();
        cmd.arg("serve")
            .env("SCRIPTD__EMBEDDED__DATA_DIR", data_dir);
        Serve::spawn(cmd, true)
    }

    /// Starts `cmd` (`serve` or `demo`) on a free port; with `ready`, waits
    /// until it answers.
    fn spawn(mut cmd: Command, ready: bool) -> Serve {
        let mut child = cmd
            .args(["--port", "0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(port) = v["port"].as_u64() {
                        let _ = tx.send(port as u16);
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut serve = Serve {
            child,
            port: 0,
            port_rx: None,
            log,
        };
        if ready {
            serve.port = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("scriptd did not log its port");
            assert_eq!(serve.status("/readyz"), 200);
        } else {
            serve.port_rx = Some(rx);
        }
        serve
    }

    /// Waits for the port that a `spawn(_, false)` logs, then for readiness.
    fn ready(&mut self, within: Duration) {
        let rx = self.port_rx.take().expect("spawned without waiting");
        self.port = rx
            .recv_timeout(within)
            .expect("scriptd did not log its port");
        assert_eq!(self.status("/readyz"), 200);
    }

    /// Waits (bounded) for a log line containing `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_has(text) {
            assert!(Instant::now() < deadline, "no log line with {text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status of a GET.
    fn status(&self, path: &str) -> u16 {
        reqwest::blocking_get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    /// The body of an authenticated GET in tenant `demo`, which must be 200.
    fn demo_json(&self, path: &str) -> serde_json::Value {
        reqwest::blocking_json(&format!("http://127.0.0.1:{}{path}", self.port), "demo")
    }

    fn log_has(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Sends `signal` and waits (bounded) for a clean exit.
    fn stop_with(mut self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "scriptd did not exit after {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}");
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The last scriptd on `dir` still serves, then stops and takes PostgreSQL
/// with it.
fn last_one_out(serve: Serve, pg_pid: i32, dir: &std::path::Path) {
    assert_eq!(serve.status("/readyz"), 200);
    serve.stop_with(libc::SIGTERM);
    assert!(gone(pg_pid), "the last scriptd out left PostgreSQL running");
    std::fs::remove_dir_all(dir).ok();
}

fn postmaster(dir: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pg/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .parse()
        .ok()
}

#[test]
fn serve_stops_its_postgres_on_sigterm_and_on_sighup() {
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let dir = tempdir("serve");
        let serve = Serve::start(&dir.join("pg"));
        let pg_pid = postmaster(&dir).expect("postmaster.pid");
        assert!(alive(pg_pid));
        serve.stop_with(signal);
        assert!(gone(pg_pid), "PostgreSQL still runs after signal {signal}");
        std::fs::remove_dir_all(dir).ok();
    }
}

/// Two serves on one data directory: the second is a client of the first's
/// PostgreSQL; whichever exits first leaves it to the other, the last stops it.
#[test]
fn a_second_serve_shares_the_cluster_and_the_last_one_out_stops_it() {
    for owner_exits_first in [false, true] {
        let dir = tempdir("share");
        let first = Serve::start(&dir.join("pg"));
        let pg_pid = postmaster(&dir).unwrap();
        let second = Serve::start(&dir.join("pg"));
        assert!(second.log_has("run by another scriptd process"));
        assert_eq!(
            postmaster(&dir),
            Some(pg_pid),
            "the second restarted PostgreSQL"
        );
        assert_eq!(first.status("/readyz"), 200);
        assert_eq!(second.status("/readyz"), 200);
        let (leaver, stayer) = if owner_exits_first {
            (first, second)
        } else {
            (second, first)
        };
        leaver.stop_with(libc::SIGTERM);
        assert!(alive(pg_pid), "PostgreSQL stopped under a running scriptd");
        assert_eq!(stayer.status("/readyz"), 200);
        assert_eq!(stayer.status("/healthz"), 200);
        stayer.stop_with(libc::SIGTERM);
        assert!(gone(pg_pid), "the last scriptd out left PostgreSQL running");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn migrate_beside_a_running_serve_leaves_its_postgres_alone() {
    let dir = tempdir("sidemigrate");
    let serve = Serve::start(&dir.join("pg"));
    let pg_pid = postmaster(&dir).unwrap();
    let out = scriptd()
        .arg("migrate")
        .env("SCRIPTD__EMBEDDED__DATA_DIR", dir.join("pg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("database schema up to date"));
    assert!(alive(pg_pid));
    assert_eq!(postmaster(&dir), Some(pg_pid));
    last_one_out(serve, pg_pid, &dir);
}

/// scriptd killed with -9 leaves its postmaster; nobody uses it, so the next
/// start restarts it and owns it.
#[test]
fn a_postmaster_left_by_a_killed_serve_is_recovered() {
    let dir = tempdir("crash");
    let crashed = Serve::start(&dir.join("pg"));
    let orphan = postmaster(&dir).unwrap();
    crashed.kill9();
    assert!(alive(orphan), "PostgreSQL went down with scriptd -9");
    let next = Serve::start(&dir.join("pg"));
    assert!(gone(orphan), "the orphan postmaster was not restarted");
    assert!(next.log_has("left by a crashed earlier run"));
    let pg_pid = postmaster(&dir).unwrap();
    assert_ne!(pg_pid, orphan);
    last_one_out(next, pg_pid, &dir);
}

/// A database that is not up yet at start: scriptd waits for it (as beside
/// its database in a compose file) and serves once it is.
#[test]
fn serve_waits_for_a_database_that_comes_up_later() {
    let dir = tempdir("later");
    std::fs::create_dir_all(dir.join("pg")).unwrap();
    let data_dir = dir.join("pg").canonicalize().unwrap();
    let url = scriptd::embedded::connection_string_for(&data_dir, "postgres");
    let mut cmd = scriptd();
    cmd.arg("serve")
        .env("DATABASE_URL", &url)
        .env("SCRIPTD__DATABASE__STARTUP_WAIT_SECS", "120");
    let mut serve = Serve::spawn(cmd, false);
    serve.wait_for_log("PostgreSQL is not reachable yet");
    let pg = EmbeddedPostgres::start(&EmbeddedOptions::new(&data_dir)).unwrap();
    serve.ready(Duration::from_secs(60));
    serve.stop_with(libc::SIGTERM);
    drop(pg);
    std::fs::remove_dir_all(dir).ok();
}

/// An unreachable database: the error names host, port, database and user,
/// never the password, says what to check, and gives up after the wait.
#[test]
fn an_unreachable_database_is_named_in_the_error() {
    for cmd in ["serve", "migrate"] {
        let out = scriptd()
            .arg(cmd)
            .env("DATABASE_URL", "postgres://bob:hunter2@127.0.0.1:1/appdb")
            .env("SCRIPTD__DATABASE__STARTUP_WAIT_SECS", "1")
            .env("SCRIPTD__LOG__FORMAT", "pretty")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needed in [
            "cannot connect to PostgreSQL at 127.0.0.1 port 1 (database appdb, user bob)",
            "Connection refused",
            "retried for 1 s, database.startup_wait_secs",
            "database.url (DATABASE_URL)",
        ] {
            assert!(
                stderr.contains(needed),
                "{cmd}: {needed:?} missing in {stderr}"
            );
        }
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(!stderr.contains("Timeout occurred"), "{stderr}");
    }
}

/// A typo in a file or a variable stops the start, naming key and fix.
#[test]
fn config_typos_stop_the_start_naming_the_key() {
    let dir = tempdir("typo");
    let file = dir.join("typo.toml");
    std::fs::write(&file, "[http]\nprot = 9090\n").unwrap();
    let out = scriptd()
        .args(["serve", "--config"])
        .arg(&file)
        .env("SCRIPTD__HTPP__PORT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown configuration key `http.prot`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `http.port`?"), "{stderr}");
    assert!(
        stderr.contains(
            "unknown configuration section `htpp` (environment variable SCRIPTD__HTPP__PORT)"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `scriptd demo`: sample data in tenant `demo`, loaded once.
#[test]
fn demo_serves_sample_data_loaded_once() {
    let dir = tempdir("demo");
    for start in 0..2 {
        let mut cmd = scriptd();
        cmd.arg("demo")
            .env("SCRIPTD__EMBEDDED__DATA_DIR", dir.join("pg"));
        let demo = Serve::spawn(cmd, true);
        demo.wait_for_log("sample data");
        assert!(demo.log_has(if start == 0 {
            "\"loaded\":true"
        } else {
            "\"loaded\":false"
        }));
        let scripts = demo.demo_json("/scripts");
        let items = scripts["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{scripts}");
        assert_eq!(items[0]["slug"], "welcome");
        assert_eq!(items[0]["latestVersion"], 3);
        let id = items[0]["id"].as_str().unwrap().to_string();
        let script = demo.demo_json(&format!("/scripts/{id}"));
        assert_eq!(script["activeVersion"]["version"], 2);
        let audit = demo.demo_json(&format!("/scripts/{id}/audit"));
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            ["ROLLBACK", "PUBLISH", "CREATE", "CREATE", "CREATE", "CREATE"]
        );
        let runs = demo.demo_json("/runs");
        let statuses: Vec<&str> = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["SUCCEEDED", "RUNNING"]);
        let run = runs["items"][1]["id"].as_str().unwrap();
        let vars = &demo.demo_json(&format!("/runs/{run}"))["vars"];
        assert_eq!(vars.as_array().unwrap().len(), 4, "{vars}");
        demo.stop_with(libc::SIGTERM);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_postgres_binaries_exit_2_naming_the_package() {
    let dir = tempdir("nobin");
    let out = scriptd()
        .args(["serve", "--port", "0"])
        .env("SCRIPTD__EMBEDDED__DATA_DIR", dir.join("pg"))
        .env("SCRIPTD__EMBEDDED__BIN_DIR", "/nonexistent/bin")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn migrate_applies_migrations_and_exits() {
    let dir = tempdir("migrate");
    let out = scriptd()
        .arg("migrate")
        .env("SCRIPTD__EMBEDDED__DATA_DIR", dir.join("pg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("V1__scripts_core_init"), "{stderr}");
    // It stopped its PostgreSQL on the way out.
    assert!(!dir.join("pg/postmaster.pid").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn version_names_the_commit() {
    let out = scriptd().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!(
            "scriptd {} (commit {})",
            scriptd::VERSION,
            scriptd::GIT_COMMIT
        )
    );
}

/// `scriptd openapi | head -c 100`: the reader goes away, scriptd ends quietly.
#[test]
fn openapi_into_a_closed_pipe_exits_quietly() {
    use std::io::Read;
    let mut child = scriptd()
        .arg("openapi")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn openapi_prints_the_document() {
    let out = scriptd().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/healthz"]["get"].is_object());
}

mod reqwest {
    /// A tiny blocking GET (the test runs outside any async runtime).
    pub fn blocking_get(url: &str) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().status().as_u16() })
    }

    /// A blocking authenticated GET in `tenant`, answered 200 with JSON.
    pub fn blocking_json(url: &str, tenant: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let res = ::reqwest::Client::new()
                .get(url)
                .bearer_auth("dev")
                .header("x-tenant-id", tenant)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{url}");
            res.json().await.unwrap()
        })
    }
}

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
async fn a_crashed_previous_run_is_recovered() {
    let dir = tempdir("crash");
    let opts = EmbeddedOptions::new(dir.join("pg"));

    // scriptd died without stopping its PostgreSQL: the next start takes over.
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    let orphan = pg.pid().unwrap();
    std::mem::forget(pg);
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    assert!(gone(orphan));
    assert!(pg.pid().is_some_and(alive));
    drop(pg);

    // A stale postmaster.pid naming a process that is not PostgreSQL.
    let pid_file = dir.join("pg/postmaster.pid");
    std::fs::write(
        &pid_file,
        format!("{}\n{}\n", std::process::id(), dir.join("pg").display()),
    )
    .unwrap();
    let pg = EmbeddedPostgres::start(&opts).unwrap();
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

#[test]
fn serve_stops_its_postgres_on_sigterm() {
    let dir = tempdir("serve");
    let mut child = scriptd()
        .args(["serve", "--port", "0"])
        .env("SCRIPTD__EMBEDDED__DATA_DIR", dir.join("pg"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(port) = v["port"].as_u64() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("scriptd did not log its port");
    let ready = reqwest::blocking_get(&format!("http://127.0.0.1:{port}/readyz"));
    assert_eq!(ready, 200);
    let pid_text = std::fs::read_to_string(dir.join("pg/postmaster.pid")).unwrap();
    let pg_pid: i32 = pid_text.lines().next().unwrap().parse().unwrap();
    assert!(alive(pg_pid));

    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "scriptd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        gone(pg_pid),
        "PostgreSQL is still running after scriptd exited"
    );
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
}

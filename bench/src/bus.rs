//! The command scenarios at full rate, in process and over the bus: a
//! `nats-server` with JetStream, a second scriptd (its own database on the
//! same PostgreSQL) with `outbox.dispatcher = "bus"`, and `scriptd
//! dev-handler` with no delay, all on this machine.

use super::*;

/// Where commands are posted and completions streamed from.
struct Target<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    pid: u32,
}

impl Target<'_> {
    fn of(env: &Env) -> Target<'_> {
        Target {
            http: &env.http,
            base: &env.base,
            pid: env.pid(),
        }
    }
}

/// Peak RSS of `pid` in KiB.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The bus side: NATS, a scriptd dispatching over it, the dev handler.
pub struct BusEnv {
    nats: Child,
    scriptd: Child,
    handler: Child,
    dir: PathBuf,
    base: String,
}

impl Drop for BusEnv {
    fn drop(&mut self) {
        for c in [&mut self.handler, &mut self.scriptd, &mut self.nats] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        if Instant::now() > deadline {
            bail!("{what} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn start_bus(env: &Env, args: &Args) -> Result<BusEnv> {
    scriptd::embedded::ensure_database(&env._pg, "bench_bus").await?;
    let dir = std::env::temp_dir().join(format!("scriptd-bench-nats-{}", std::process::id()));
    let nats_port = free_port()?;
    let nats = Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (bench/run installs it)")?;
    wait_until("nats-server", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", nats_port))
            .await
            .is_ok()
    })
    .await?;
    let url = format!("nats://127.0.0.1:{nats_port}");
    let port = free_port()?;
    let scriptd = Command::new(&args.scriptd)
        .args(["serve", "--port", &port.to_string()])
        .env("DATABASE_URL", env._pg.connection_string("bench_bus"))
        .env("RUST_LOG", "warn")
        .env("SCRIPTD__RATE_LIMIT__ENABLED", "false")
        .env("SCRIPTD__EVENTS__SESSION_BUFFER", "256")
        .env("SCRIPTD__BUS__URL", &url)
        .env("SCRIPTD__OUTBOX__DISPATCHER", "bus")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let handler = Command::new(&args.scriptd)
        .arg("dev-handler")
        .env("RUST_LOG", "warn")
        .env("SCRIPTD__BUS__URL", &url)
        .env("SCRIPTD__OUTBOX__DEV_DELAY_MIN_MS", "0")
        .env("SCRIPTD__OUTBOX__DEV_DELAY_MAX_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/readyz");
    wait_until("the bus scriptd", async || {
        env.http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await?;
    Ok(BusEnv {
        nats,
        scriptd,
        handler,
        dir,
        base,
    })
}

/// Posts commands as fast as `conc` closed-loop posters can for `dur`;
/// (posted, failed).
async fn post_full_rate(
    t: &Target<'_>,
    tenant: &str,
    conc: usize,
    dur: Duration,
    sent: &Arc<Mutex<HashMap<String, Instant>>>,
) -> (u64, u64) {
    let end = Instant::now() + dur;
    let workers = (0..conc).map(|_| {
        let (http, url, sent) = (t.http.clone(), format!("{}/commands", t.base), sent.clone());
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let (mut posted, mut failed) = (0u64, 0u64);
            while Instant::now() < end {
                let cid = uuid::Uuid::now_v7().to_string();
                let body = json!({ "command": "Contacts.UpsertAndLink.v1", "correlationId": cid, "actor": { "userId": "u" } });
                sent.lock().expect("lock").insert(cid, Instant::now());
                let req = http
                    .post(&url)
                    .bearer_auth("bench")
                    .header("x-tenant-id", &tenant)
                    .json(&body);
                posted += 1;
                if !req.send().await.is_ok_and(|r| r.status() == 202) {
                    failed += 1;
                }
            }
            (posted, failed)
        })
    });
    let mut totals = (0, 0);
    for w in futures::future::join_all(workers).await {
        let (p, f) = w.unwrap_or_default();
        totals = (totals.0 + p, totals.1 + f);
    }
    totals
}

/// Commands posted at 200/s (`full` false) or at full rate, and the time
/// until each completion reaches an SSE client of the tenant.
async fn command_flow(
    name: &str,
    t: Target<'_>,
    args: &Args,
    secs: u64,
    full: bool,
) -> Result<Row> {
    let tenant = format!("bench-{name}");
    let res = t
        .http
        .get(format!("{}/events/stream?tenantId={tenant}", t.base))
        .bearer_auth("bench")
        .send()
        .await?;
    let completions = Completions::new()?;
    let reader = completions.read(res);
    let dur = Duration::from_secs(secs);
    let started = Instant::now();
    let (posted, failed) = if full {
        post_full_rate(&t, &tenant, args.connections, dur, &completions.sent).await
    } else {
        let total = 200 * secs;
        let failed =
            super::post_commands_to(t.http, t.base, &tenant, total, &completions.sent).await;
        (total, failed)
    };
    let received = completions.received.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < posted - failed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    reader.abort();
    let h = completions.latencies.lock().expect("lock").clone();
    let got = received.load(Ordering::Relaxed);
    let how = if full { "full rate" } else { "200/s" };
    Ok(Row {
        scenario: name.into(),
        rps: Some(got as f64 / elapsed),
        p50: Some(h.value_at_quantile(0.5) as f64 / 1000.0),
        p99: Some(h.value_at_quantile(0.99) as f64 / 1000.0),
        peak_rss_kib: Some(peak_rss(t.pid)),
        note: format!(
            "{how}: completions/s until the last arrived; {got}/{posted} received; {failed} posts failed"
        ),
        ..Default::default()
    })
}

/// `command-full`: the in-process dev dispatcher at full rate, beside
/// pgbench's single-row outbox INSERT with the NOTIFY scriptd sends (and,
/// in the note, without it). pgbench's rows are never due, so the outbox
/// leaves them alone.
pub async fn command_full(env: &Env, args: &Args) -> Result<Row> {
    eprintln!(
        "command-full: in-process dispatcher, full rate for {}s",
        args.duration
    );
    let mut row = command_flow("command-full", Target::of(env), args, args.duration, true).await?;
    eprintln!("command-full: pgbench, single-row outbox INSERT with and without NOTIFY");
    let insert = "INSERT INTO command_outbox (id, tenant_id, command, correlation_id, actor_user_id, \
         created_by_id, context, payload, status, attempts, next_attempt_at, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'pgbench', 'Contacts.UpsertAndLink.v1', gen_random_uuid(), 'u_1', \
         'pgbench', '{}', '{}', 'PENDING', 0, 'infinity', now(), now());";
    let notifying = format!("BEGIN;\n{insert}\nSELECT pg_notify('scriptd_outbox', '');\nCOMMIT;\n");
    let plain = format!("BEGIN;\n{insert}\nCOMMIT;\n");
    let with_notify = super::pgbench(env, args, "command-insert-notify", &notifying)?;
    let without = super::pgbench(env, args, "command-insert", &plain)?;
    row.pgbench = Some(with_notify);
    row.note += &format!(
        "; pgbench: single-row outbox INSERT with NOTIFY {with_notify:.0} tps, without {without:.0} tps"
    );
    Ok(row)
}

/// `command-bus`: through NATS and `dev-handler`, at 200/s then at full rate.
pub async fn command_bus(env: &Env, args: &Args) -> Result<Vec<Row>> {
    eprintln!("command-bus: starting nats-server, a bus scriptd and dev-handler");
    let bus = start_bus(env, args).await?;
    let target = || Target {
        http: &env.http,
        base: &bus.base,
        pid: bus.scriptd.id(),
    };
    // The handler finds the streams and its consumer; connections warm up.
    eprintln!(
        "command-bus: warming up at 200/s for {}s",
        args.warmup.max(1)
    );
    let warm = command_flow(
        "command-bus-warmup",
        target(),
        args,
        args.warmup.max(1),
        false,
    )
    .await?;
    if warm.rps.unwrap_or(0.0) == 0.0 {
        bail!(
            "command-bus: no completion arrived during the warm-up: {}",
            warm.note
        );
    }
    eprintln!("command-bus: 200 commands/s for {}s", args.duration);
    let fixed = command_flow("command-bus", target(), args, args.duration, false).await?;
    eprintln!("command-bus-full: full rate for {}s", args.duration);
    let full = command_flow("command-bus-full", target(), args, args.duration, true).await?;
    Ok(vec![fixed, full])
}

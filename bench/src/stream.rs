//! `vars-stream`: the runner stream (`GET /runs/:runId/stream`, WebSocket).
//! One connection per RUNNING run, each pipelining `vars` frames with up to
//! `runs.stream_inflight` (256) unacked; variables committed per second, the
//! send → ack latency, scriptd's peak RSS, against pgbench's single-row
//! upsert (the `vars` script) or, with 10 variables per frame, against
//! pgbench's 64-row upsert (the PostgreSQL floor for multi-row upserts).
//! Each run's keys (`--stream-keys`, by default 256 × variables per frame:
//! no key repeats among the frames in flight, so every acked variable is a
//! row PostgreSQL writes) are inserted first, so every write is an update.
//! At the end the runs' committed `stream_seq`, their rows and their last
//! values are checked against the acks received, and the rows scriptd's
//! variable writer sent (`/metrics`) against the variables acked.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;

use futures::SinkExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// Frames in flight per connection: the server's default `runs.stream_inflight`.
const INFLIGHT: usize = 256;
/// Rows per statement of the pgbench floor of `vars-stream-10`.
const FLOOR_ROWS: usize = 64;

/// The runs of one line: `00000000-0000-7000-b000-{base + i}`.
fn stream_run_id(base: usize, i: usize) -> String {
    format!("00000000-0000-7000-b000-{:012}", base + i)
}

/// One line of the scenario.
struct Line {
    name: &'static str,
    /// The first run number of the line (each line has its own runs: a
    /// frame at or below a run's committed seq would be a resend).
    base: usize,
    conns: usize,
    vars_per_frame: usize,
}

/// pgbench's single-row upsert (the `vars` script), measured once per
/// bench process and shared by `vars-stream` and `vars-stream-1k`:
/// (tps, CPU µs per transaction of PostgreSQL and pgbench).
static SINGLE_ROW: Mutex<Option<(f64, [f64; 2])>> = Mutex::new(None);

pub async fn vars_stream(env: &Env, args: &Args) -> Result<Row> {
    single_row_line(env, args, "vars-stream", 0, args.connections).await
}

pub async fn vars_stream_1k(env: &Env, args: &Args) -> Result<Row> {
    single_row_line(env, args, "vars-stream-1k", 10_000, 1_000).await
}

/// A line of one variable per frame, against pgbench's single-row upsert.
async fn single_row_line(
    env: &Env,
    args: &Args,
    name: &'static str,
    base: usize,
    conns: usize,
) -> Result<Row> {
    let line = Line {
        name,
        base,
        conns,
        vars_per_frame: 1,
    };
    let m = run_line(env, args, &line).await?;
    let pg = single_row(env, args)?;
    Ok(m.row(
        &line,
        pg,
        "pgbench: single-row upsert (the vars script)",
        4.0,
    ))
}

pub async fn vars_stream_10(env: &Env, args: &Args) -> Result<Row> {
    let line = Line {
        name: "vars-stream-10",
        base: 20_000,
        conns: args.connections,
        vars_per_frame: 10,
    };
    let m = run_line(env, args, &line).await?;
    // pgbench client i upserts 64 rows of the line's run i in one statement:
    // the same runs, one writer per run, as the stream connections.
    let script = format!(
        "INSERT INTO run_variables (run_id, key, num_val, updated_at) SELECT ('00000000-0000-7000-b000-' || lpad(({base} + :client_id)::text, 12, '0'))::uuid, 'k' || g, random(), now() FROM generate_series(1, {FLOOR_ROWS}) g ON CONFLICT (run_id, key) DO UPDATE SET str_val = NULL, num_val = EXCLUDED.num_val, bool_val = NULL, json_val = NULL, updated_at = EXCLUDED.updated_at;\n",
        base = line.base
    );
    eprintln!("{}: pgbench, {FLOOR_ROWS}-row upsert", line.name);
    let (tps, cpu) = measure_pgbench(env, args, "vars-stream-floor", &script)?;
    // Per row, as the scriptd side.
    let per_row = [cpu[0] / FLOOR_ROWS as f64, cpu[1] / FLOOR_ROWS as f64];
    let floor = (tps * FLOOR_ROWS as f64, per_row);
    let what =
        format!("pgbench: {FLOOR_ROWS}-row upsert, {tps:.0} tps × {FLOOR_ROWS} = the rows/s floor");
    Ok(m.row(&line, floor, &what, 0.5))
}

/// pgbench's tps for `script` and its CPU µs per transaction (PostgreSQL, pgbench).
fn measure_pgbench(env: &Env, args: &Args, name: &str, script: &str) -> Result<(f64, [f64; 2])> {
    let (scriptd, postmaster) = (env.pid(), env.postmaster);
    let before = cpu_now(scriptd, postmaster);
    let tps = pgbench(env, args, name, script)?;
    let used = cpu_now(scriptd, postmaster).since(before);
    let tx = tps * args.duration as f64;
    Ok((tps, [used.postgres * 1e6 / tx, used.waited * 1e6 / tx]))
}

fn single_row(env: &Env, args: &Args) -> Result<(f64, [f64; 2])> {
    if let Some(v) = *SINGLE_ROW.lock().expect("lock") {
        return Ok(v);
    }
    eprintln!("vars-stream: pgbench, single-row upsert");
    let v = measure_pgbench(env, args, "vars-stream-single", &vars_pgbench_script())?;
    *SINGLE_ROW.lock().expect("lock") = Some(v);
    Ok(v)
}

/// What one line measured.
struct LineResult {
    /// Acks received in the measured window.
    acks: u64,
    secs: f64,
    hist: Histogram<u64>,
    cpu: Cpu,
    /// CPU seconds the whole machine used in the measured window.
    busy: f64,
    peak_rss: u64,
    /// Error frames received (whole run, warm-up included).
    error_frames: u64,
    first_error: Option<String>,
    /// Acks out of order, with the wrong `upserted`, or unreadable.
    bad_acks: u64,
    /// Connections that ended before every frame was answered.
    broken: u64,
    /// Problems found by the check against the database.
    check: Vec<String>,
    /// Frames acked over the whole run.
    total_acks: u64,
    keys: usize,
    /// The server's counts during the line (open streams and live run
    /// actors: after the connections closed).
    server: ServerStats,
    /// scriptd's RSS (KiB) before the connections opened and after they closed.
    rss_before: u64,
    rss_after: u64,
}

impl LineResult {
    /// A result with nothing counted yet.
    fn empty() -> Result<Self> {
        Ok(LineResult {
            acks: 0,
            secs: 0.0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            cpu: Cpu::default(),
            busy: 0.0,
            peak_rss: 0,
            error_frames: 0,
            first_error: None,
            bad_acks: 0,
            broken: 0,
            check: Vec::new(),
            total_acks: 0,
            keys: 0,
            server: ServerStats::default(),
            rss_before: 0,
            rss_after: 0,
        })
    }

    /// Adds what one connection saw.
    fn add(&mut self, c: ConnResult) {
        let _ = self.hist.add(&c.hist);
        self.acks += c.acks;
        self.total_acks += c.total_acks;
        self.error_frames += c.error_frames;
        self.bad_acks += c.bad_acks;
        if c.total_acks + c.error_frames < c.sent {
            self.broken += 1;
        }
        if self.first_error.is_none() {
            self.first_error = c.first_error;
        }
    }

    /// The table row; `pg` is the pgbench comparison in rows/s.
    fn row(&self, line: &Line, pg: (f64, [f64; 2]), what: &str, target: f64) -> Row {
        let vars = (self.acks * line.vars_per_frame as u64) as f64;
        let rate = vars / self.secs;
        let per = |cpu: f64| cpu * 1e6 / vars;
        let mut notes = vec![self.headline(line, rate / pg.0 >= target, what, target)];
        self.server_notes(line, &mut notes);
        self.resource_notes(&mut notes);
        self.error_notes(&mut notes);
        Row {
            scenario: line.name.into(),
            rps: Some(rate),
            p50: Some(self.hist.value_at_quantile(0.5) as f64 / 1000.0),
            p99: Some(self.hist.value_at_quantile(0.99) as f64 / 1000.0),
            pgbench: Some(pg.0),
            cpu_us: Some([
                per(self.cpu.scriptd),
                per(self.cpu.postgres),
                per(self.cpu.client),
            ]),
            pgbench_cpu_us: Some(pg.1),
            peak_rss_kib: Some(self.peak_rss),
            note: notes.join("; "),
        }
    }

    /// The first note: the line's shape, its frame rate and worst ack, and
    /// whether it `met` its target against the pgbench comparison `what`.
    fn headline(&self, line: &Line, met: bool, what: &str, target: f64) -> String {
        format!(
            "{} runs and connections, {} var{}/frame over {} keys per run, ≤{INFLIGHT} frames in flight each; {:.0} frames/s, max ack {:.1} ms; {what}; target ≥ {target}× ({})",
            line.conns,
            line.vars_per_frame,
            if line.vars_per_frame == 1 { "" } else { "s" },
            self.keys,
            self.acks as f64 / self.secs,
            self.hist.max() as f64 / 1000.0,
            if met { "met" } else { "missed" },
        )
    }

    /// What scriptd's counters say: rows written, frames acked and refused,
    /// streams and run actors left after closing.
    fn server_notes(&self, line: &Line, notes: &mut Vec<String>) {
        let acked_vars = self.total_acks * line.vars_per_frame as u64;
        let sv = &self.server;
        notes.push(format!(
            "scriptd wrote {} rows for {acked_vars} acked variables ({:.2} per variable) in {} statements ({:.0} rows each)",
            sv.rows,
            sv.rows as f64 / acked_vars.max(1) as f64,
            sv.statements,
            sv.rows as f64 / sv.statements.max(1) as f64
        ));
        if sv.acked != self.total_acks as i64 || sv.refused != self.error_frames as i64 {
            notes.push(format!(
                "ERROR: scriptd counts {} acked and {} refused frames, the load generator {} and {}",
                sv.acked, sv.refused, self.total_acks, self.error_frames
            ));
        }
        notes.push(format!(
            "after closing: {} streams open, {} run actors live",
            sv.open, sv.run_actors
        ));
    }

    /// Cores busy in the measured window and scriptd's RSS.
    fn resource_notes(&self, notes: &mut Vec<String>) {
        let mib = |k: u64| k as f64 / 1024.0;
        let cores = |secs: f64| secs / self.secs;
        let ours = self.cpu.scriptd + self.cpu.postgres + self.cpu.client;
        notes.push(format!(
            "cores busy {:.2} of {} (scriptd {:.2}, PostgreSQL {:.2}, load generator {:.2}, other processes {:.2})",
            cores(self.busy),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cores(self.cpu.scriptd),
            cores(self.cpu.postgres),
            cores(self.cpu.client),
            cores(self.busy - ours).max(0.0),
        ));
        notes.push(format!(
            "RSS {:.1} MiB before, {:.1} after closing",
            mib(self.rss_before),
            mib(self.rss_after)
        ));
    }

    /// Error frames, bad acks, broken connections and the committed check.
    fn error_notes(&self, notes: &mut Vec<String>) {
        notes.push(format!("{} error frames", self.error_frames));
        if let Some(e) = &self.first_error {
            notes.push(format!("first error frame: {e}"));
        }
        if self.bad_acks > 0 {
            notes.push(format!("ERROR: {} bad acks", self.bad_acks));
        }
        if self.broken > 0 {
            notes.push(format!(
                "ERROR: {} connections ended with frames unanswered",
                self.broken
            ));
        }
        if self.check.is_empty() {
            notes.push(format!(
                "committed check ok ({} acked frames = the runs' stream_seq, rows and last values)",
                self.total_acks
            ));
        } else {
            notes.push(format!("ERROR: committed check: {}", self.check.join(", ")));
        }
    }
}

/// What one connection saw.
struct ConnResult {
    hist: Histogram<u64>,
    /// Acks in the measured window.
    acks: u64,
    /// Acks over the whole run: the last committed seq.
    total_acks: u64,
    error_frames: u64,
    first_error: Option<String>,
    bad_acks: u64,
    /// Frames sent (the last seq).
    sent: u64,
}

impl ConnResult {
    fn new() -> Self {
        ConnResult {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            acks: 0,
            total_acks: 0,
            error_frames: 0,
            first_error: None,
            bad_acks: 0,
            sent: 0,
        }
    }

    /// Counts the answer `text` to the frame `expect` (of `vpf` variables);
    /// `latency` is its send → answer time if it came in the measured window.
    fn answer(&mut self, text: &str, expect: u64, vpf: usize, latency: Option<Duration>) {
        if text.starts_with(r#"{"type":"ack""#) {
            let ok = field(text, r#""seq":"#) == Some(expect)
                && field(text, r#""upserted":"#) == Some(vpf as u64);
            if !ok {
                self.bad_acks += 1;
            }
            self.total_acks += 1;
            if let Some(latency) = latency {
                self.acks += 1;
                let _ = self.hist.record(latency.as_micros().max(1) as u64);
            }
        } else {
            self.error_frames += 1;
            if self.first_error.is_none() {
                self.first_error = Some(text.chars().take(300).collect());
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(addr: &str, run: &str) -> Result<Ws> {
    let mut req = format!("ws://{addr}/runs/{run}/stream").into_client_request()?;
    let h = req.headers_mut();
    h.insert("authorization", "Bearer bench".parse()?);
    h.insert("x-tenant-id", TENANT.parse()?);
    let sock = tokio::net::TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(req, sock)
        .await
        .with_context(|| format!("opening the stream of run {run}"))?;
    Ok(ws)
}

async fn run_line(env: &Env, args: &Args, line: &Line) -> Result<LineResult> {
    eprintln!(
        "{}: {} runs, one stream each, {} var(s)/frame, {}s + {}s warm-up",
        line.name, line.conns, line.vars_per_frame, args.duration, args.warmup
    );
    let vpf = line.vars_per_frame;
    let keys = if args.stream_keys > 0 {
        args.stream_keys
    } else {
        INFLIGHT * vpf
    };
    let db = env.sql().await?;
    insert_runs(&db, line, keys).await?;
    let server_before = server_stats(env).await?;
    let (rss_before, _) = env.rss();
    let runs: Vec<String> = (0..line.conns)
        .map(|i| stream_run_id(line.base, i))
        .collect();
    env.reset_peak();
    let socks = open_all(env, &runs).await?;
    let pids = (env.pid(), env.postmaster);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let sampler = spawn_sampler(pids, measure_from, end);
    let tasks: Vec<_> = socks
        .into_iter()
        .map(|ws| tokio::spawn(drive(ws, vpf, keys, measure_from, end)))
        .collect();
    let (cpu, busy) = sampler.await.unwrap_or_default();
    let (_, peak_rss) = env.rss();
    let mut res = LineResult {
        secs: args.duration as f64,
        cpu,
        busy,
        peak_rss,
        keys,
        rss_before,
        ..LineResult::empty()?
    };
    let mut acked = Vec::with_capacity(line.conns);
    for t in tasks {
        let c = t.await?;
        acked.push(c.total_acks);
        res.add(c);
    }
    // Let the peak include the drain after the window.
    res.peak_rss = res.peak_rss.max(env.rss().1);
    res.check = check(&db, &runs, &acked, keys).await?;
    res.server = server_stats(env).await?.since(server_before);
    res.rss_after = env.rss().0;
    Ok(res)
}

/// Inserts the line's RUNNING runs and their `keys` variables, so every
/// write of the stream is an update.
async fn insert_runs(db: &tokio_postgres::Client, line: &Line, keys: usize) -> Result<()> {
    db.batch_execute(&format!(
        "INSERT INTO script_runs (id, tenant_id, script_id, version, status, started_at)
           SELECT ('00000000-0000-7000-b000-' || lpad(n::text, 12, '0'))::uuid, '{TENANT}', '{hot}', 1, 'RUNNING', now()
           FROM generate_series({first}, {last}) n;
         INSERT INTO run_variables (run_id, key, num_val, updated_at)
           SELECT ('00000000-0000-7000-b000-' || lpad(n::text, 12, '0'))::uuid, 'k' || k, 0, now()
           FROM generate_series({first}, {last}) n, generate_series(0, {last_key}) k;
         ANALYZE script_runs; ANALYZE run_variables;",
        hot = script_id(0),
        first = line.base,
        last = line.base + line.conns - 1,
        last_key = keys - 1,
    ))
    .await?;
    Ok(())
}

/// Opens the stream of each of `runs`, 100 at a time.
async fn open_all(env: &Env, runs: &[String]) -> Result<Vec<Ws>> {
    let addr = env.base.trim_start_matches("http://").to_string();
    let mut socks = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(100) {
        let opened = futures::future::join_all(chunk.iter().map(|r| open(&addr, r))).await;
        for ws in opened {
            socks.push(ws?);
        }
    }
    Ok(socks)
}

/// The CPU used by scriptd, PostgreSQL (`pids`) and this process, and by the
/// whole machine, from `measure_from` to `end`.
fn spawn_sampler(
    (scriptd, postmaster): (u32, u32),
    measure_from: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<(Cpu, f64)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let (before, busy) = (cpu_now(scriptd, postmaster), machine_busy());
        tokio::time::sleep_until(end.into()).await;
        let used = cpu_now(scriptd, postmaster).since(before);
        (used, machine_busy() - busy)
    })
}

/// CPU seconds the whole machine has spent busy (`/proc/stat`: all but idle and iowait).
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    // user..steal; guest time is already in user.
    (ticks.iter().take(8).sum::<f64>() - idle) / hz
}

/// What scriptd's `/metrics` says about the stream and the variable writer.
#[derive(Debug, Clone, Copy, Default)]
struct ServerStats {
    /// The variable writer's statements and rows since start (rows after the
    /// run actors merged their queued frames: last write per key wins).
    statements: i64,
    rows: i64,
    /// Frames acked and refused since start.
    acked: i64,
    refused: i64,
    /// Open streams and live run actors now.
    open: i64,
    run_actors: i64,
}

impl ServerStats {
    /// These stats with the counters since `before` (the gauges as they are).
    fn since(self, before: ServerStats) -> ServerStats {
        ServerStats {
            statements: self.statements - before.statements,
            rows: self.rows - before.rows,
            acked: self.acked - before.acked,
            refused: self.refused - before.refused,
            ..self
        }
    }
}

async fn server_stats(env: &Env) -> Result<ServerStats> {
    let text = env
        .http
        .get(env.url("/metrics"))
        .bearer_auth("dev-admin")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let get = |series: &str| -> Result<i64> {
        let prefix = format!("scriptd_{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as i64)
            .with_context(|| format!("scriptd_{series} in /metrics"))
    };
    Ok(ServerStats {
        statements: get(r#"var_writer{what="statements"}"#)?,
        rows: get(r#"var_writer{what="rows"}"#)?,
        acked: get(r#"run_stream_frames{outcome="acked"}"#)?,
        refused: get(r#"run_stream_frames{outcome="refused"}"#)?,
        open: get("run_streams_open")?,
        run_actors: get(r#"actors_live{kind="run"}"#)?,
    })
}

/// Compares each run's committed `stream_seq`, its row count (its `keys`
/// rows, inserted before) and its largest value (every variable of frame
/// `seq` is written as `seq`) with the frames acked on its connection.
async fn check(
    db: &tokio_postgres::Client,
    runs: &[String],
    acked: &[u64],
    keys: usize,
) -> Result<Vec<String>> {
    let rows = db
        .query(
            "SELECT r.id::text, r.stream_seq, count(v.key), coalesce(max(v.num_val), 0)
               FROM script_runs r LEFT JOIN run_variables v ON v.run_id = r.id
              WHERE r.id = ANY($1::text[]::uuid[]) GROUP BY r.id, r.stream_seq",
            &[&runs],
        )
        .await?;
    let found: HashMap<String, (i64, i64, f64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let (mut seq_bad, mut rows_bad, mut last_bad, mut missing) = (0, 0, 0, 0);
    let mut first = None;
    for (run, &n) in runs.iter().zip(acked) {
        let Some(&(seq, count, max)) = found.get(run) else {
            missing += 1;
            continue;
        };
        if seq != n as i64 {
            seq_bad += 1;
            first.get_or_insert(format!("run {run}: stream_seq {seq}, {n} acks"));
        }
        if count != keys as i64 {
            rows_bad += 1;
        }
        if max != n as f64 {
            last_bad += 1;
        }
    }
    let mut problems = Vec::new();
    if seq_bad > 0 {
        problems.push(format!(
            "{seq_bad} runs whose stream_seq is not their acks ({})",
            first.unwrap_or_default()
        ));
    }
    if rows_bad > 0 {
        problems.push(format!("{rows_bad} runs with an unexpected row count"));
    }
    if last_bad > 0 {
        problems.push(format!(
            "{last_bad} runs missing their last acked frame's values"
        ));
    }
    if missing > 0 {
        problems.push(format!("{missing} runs not found"));
    }
    Ok(problems)
}

/// The frame `seq` into `buf`: `vpf` variables, each set to `seq`.
fn frame(keys: &[String], seq: u64, vpf: usize, buf: &mut String) {
    let n = keys.len();
    buf.clear();
    let _ = write!(buf, r#"{{"type":"vars","seq":{seq},"vars":["#);
    for j in 0..vpf {
        if j > 0 {
            buf.push(',');
        }
        buf.push_str(&keys[(seq as usize * vpf + j) % n]);
        let _ = write!(buf, "{seq}}}");
    }
    buf.push_str("]}");
}

/// Reads `"name":<digits>` from an ack frame.
fn field(text: &str, name: &str) -> Option<u64> {
    let i = text.find(name)? + name.len();
    let digits = text[i..].bytes().take_while(u8::is_ascii_digit).count();
    text[i..i + digits].parse().ok()
}

/// What the writer and the reader of one connection share.
struct Flight {
    /// A permit per frame that may still be sent.
    window: Semaphore,
    /// Send instants of the frames in flight, oldest first.
    sent_at: Mutex<VecDeque<Instant>>,
    /// Set when the reader stopped.
    closed: AtomicBool,
}

/// Drives one connection: a writer that keeps up to `INFLIGHT` frames in
/// flight until `end`, then waits for their answers and closes, and a reader
/// that times each answer (they come in `seq` order).
async fn drive(
    ws: Ws,
    vpf: usize,
    nkeys: usize,
    measure_from: Instant,
    end: Instant,
) -> ConnResult {
    let (mut sink, mut stream) = ws.split();
    let flight = Flight {
        window: Semaphore::new(INFLIGHT),
        sent_at: Mutex::new(VecDeque::with_capacity(INFLIGHT)),
        closed: AtomicBool::new(false),
    };
    let keys: Vec<String> = (0..nkeys)
        .map(|k| format!(r#"{{"key":"k{k}","numVal":"#))
        .collect();
    let writer = write_frames(&mut sink, &flight, &keys, vpf, end);
    let reader = read_answers(&mut stream, &flight, vpf, measure_from, end);
    let (sent, mut r) = tokio::join!(writer, reader);
    r.sent = sent;
    r
}

/// Waits for a free place in `window` and takes every free one: how many
/// (`None` if the window is closed).
async fn take_free(window: &Semaphore) -> Option<usize> {
    let Ok(permit) = window.acquire().await else {
        return None;
    };
    permit.forget();
    let mut n = 1;
    while let Ok(p) = window.try_acquire() {
        p.forget();
        n += 1;
    }
    Some(n)
}

/// The writer of `drive`: sends frames while the window has room until
/// `end` or the reader stops, then waits for every answer and closes. The
/// frames sent (the last seq).
async fn write_frames(
    sink: &mut futures::stream::SplitSink<Ws, Message>,
    flight: &Flight,
    keys: &[String],
    vpf: usize,
    end: Instant,
) -> u64 {
    let window = &flight.window;
    let mut seq = 0u64;
    let cap = 64 + vpf * 32;
    'send: loop {
        let Some(n) = take_free(window).await else {
            break;
        };
        let now = Instant::now();
        if now >= end || flight.closed.load(Ordering::Relaxed) {
            window.add_permits(n);
            break;
        }
        flight
            .sent_at
            .lock()
            .expect("lock")
            .extend((0..n).map(|_| now));
        for _ in 0..n {
            seq += 1;
            let mut text = String::with_capacity(cap);
            frame(keys, seq, vpf, &mut text);
            if sink.feed(Message::text(text)).await.is_err() {
                break 'send;
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // Every answer back (or the reader gone), then the close handshake.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        window.acquire_many(INFLIGHT as u32),
    )
    .await;
    let _ = sink.send(Message::Close(None)).await;
    seq
}

/// The reader of `drive`: counts and times each answer until the stream
/// ends (or 60 s after `end`), then unblocks the writer.
async fn read_answers(
    stream: &mut futures::stream::SplitStream<Ws>,
    flight: &Flight,
    vpf: usize,
    measure_from: Instant,
    end: Instant,
) -> ConnResult {
    let mut r = ConnResult::new();
    let mut expect = 1u64;
    let deadline = end + Duration::from_secs(60);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline.into(), stream.next()).await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let now = Instant::now();
        let t0 = flight.sent_at.lock().expect("lock").pop_front();
        flight.window.add_permits(1);
        let measured = now >= measure_from && now <= end;
        let latency = t0.filter(|_| measured).map(|t0| now - t0);
        r.answer(text.as_str(), expect, vpf, latency);
        expect += 1;
    }
    flight.closed.store(true, Ordering::Relaxed);
    // Unblock the writer if the stream ended early.
    flight.window.add_permits(INFLIGHT);
    r
}

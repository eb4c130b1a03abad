//! Prometheus metrics (the `prometheus` crate): request counts and latency per
//! route and status, and gauges read at scrape time (pool, actors, mailboxes,
//! outbox, SSE sessions, events).

use actix_web::http::Method;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use std::sync::atomic::Ordering;

use actors::service::{BusState, Services};

use crate::http::run_streams::RunStreams;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool: IntGaugeVec,
    actors_live: IntGaugeVec,
    mailbox: IntGaugeVec,
    outbox: IntGaugeVec,
    outbox_oldest: Gauge,
    sse_sessions: IntGauge,
    events: IntGauge,
    var_writes: IntGaugeVec,
    streams: StreamMetrics,
    read_cache: IntGaugeVec,
    bus: BusMetrics,
}

/// The runner streams: open now, and the frames they answered since start.
struct StreamMetrics {
    open: IntGauge,
    frames: IntGaugeVec,
}

impl StreamMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let open = IntGauge::new(
            "run_streams_open",
            "Open runner streams (GET /runs/:runId/stream) in this process",
        )?;
        let frames = IntGaugeVec::new(
            Opts::new(
                "run_stream_frames",
                "Runner-stream frames answered since start: acked (committed), duplicate \
                 (a resend of a committed frame), refused (an error frame)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        Ok(StreamMetrics { open, frames })
    }

    fn refresh(&self, streams: &RunStreams) {
        self.open.set(streams.open_count() as i64);
        let s = &streams.stats;
        for (outcome, v) in [
            ("acked", &s.acked),
            ("duplicate", &s.duplicates),
            ("refused", &s.refused),
        ] {
            self.frames
                .with_label_values(&[outcome])
                .set(v.load(Ordering::Relaxed) as i64);
        }
    }
}

/// The bus: connected or not, and its counters since start (set at scrape
/// time from the core's atomics).
struct BusMetrics {
    connected: IntGauge,
    published: IntCounter,
    publish_failures: IntCounter,
    completions: IntCounterVec,
    timeouts: IntCounter,
    /// Two scrapes at once must not both add the same difference.
    refreshing: std::sync::Mutex<()>,
}

/// A counter brought up to a total counted elsewhere.
fn catch_up(counter: &IntCounter, total: &std::sync::atomic::AtomicU64) {
    let (now, seen) = (total.load(Ordering::Relaxed), counter.get());
    if now > seen {
        counter.inc_by(now - seen);
    }
}

impl BusMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let m = BusMetrics {
            connected: IntGauge::new(
                "bus_connected",
                "1 while connected to NATS (0 also when no bus is configured)",
            )?,
            published: IntCounter::new(
                "bus_commands_published_total",
                "Commands published to JetStream and acknowledged, since start",
            )?,
            publish_failures: IntCounter::new(
                "bus_publish_failures_total",
                "Command publishes that failed (the command stayed PENDING), since start",
            )?,
            completions: IntCounterVec::new(
                Opts::new(
                    "bus_completions_total",
                    "Completions consumed from the bus by outcome, since start",
                ),
                &["outcome"],
            )?,
            timeouts: IntCounter::new(
                "outbox_timeouts_total",
                "Attempts whose deadline passed without a completion, found by this process",
            )?,
            refreshing: std::sync::Mutex::default(),
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.publish_failures.clone()))?;
        registry.register(Box::new(m.completions.clone()))?;
        registry.register(Box::new(m.timeouts.clone()))?;
        Ok(m)
    }

    fn refresh(&self, services: &Services) {
        let connected = services.bus_state() == BusState::Connected;
        self.connected.set(i64::from(connected));
        let Some(bus) = services.commands.bus() else {
            return;
        };
        let _one = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let s = bus.stats();
        catch_up(&self.published, &s.published);
        catch_up(&self.publish_failures, &s.publish_failures);
        for (outcome, c) in [
            ("applied", &s.applied),
            ("ignored", &s.ignored),
            ("malformed", &s.malformed),
        ] {
            catch_up(&self.completions.with_label_values(&[outcome]), c);
        }
        catch_up(&self.timeouts, &s.timeouts);
    }
}

/// `scriptd_build_info{version, commit} 1`.
fn register_build_info(registry: &Registry) -> anyhow::Result<()> {
    let build = IntGaugeVec::new(
        Opts::new(
            "build_info",
            "The build: always 1, labelled with version and commit",
        ),
        &["version", "commit"],
    )?;
    build
        .with_label_values(&[crate::VERSION, crate::GIT_COMMIT])
        .set(1);
    registry.register(Box::new(build))?;
    Ok(())
}

/// A gauge family with one label, registered.
fn registered_gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> anyhow::Result<IntGaugeVec> {
    let gauges = IntGaugeVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(gauges.clone()))?;
    Ok(gauges)
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("scriptd".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route, method and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let gauges = |name, help, label| registered_gauges(&registry, name, help, label);
        let pool = gauges(
            "db_pool_connections",
            "Pooled connections by state",
            "state",
        )?;
        let actors_live = gauges("actors_live", "Live actors by kind", "kind")?;
        let mailbox = gauges(
            "actor_mailbox_depth",
            "Queued messages by actor kind",
            "kind",
        )?;
        let outbox = gauges("outbox_commands", "Outbox commands by status", "status")?;
        let outbox_oldest = Gauge::new(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest PENDING command",
        )?;
        let sse_sessions = IntGauge::new("sse_sessions", "Open SSE sessions in this process")?;
        let events = IntGauge::new(
            "events_appended_total",
            "Events appended to the events table (by any process) since this process started",
        )?;
        registry.register(Box::new(outbox_oldest.clone()))?;
        registry.register(Box::new(sse_sessions.clone()))?;
        let var_writes = gauges(
            "var_writer",
            "Run variable writer: queued run batches, and since start: statements, \
             rows, failed groups retried run by run",
            "what",
        )?;
        registry.register(Box::new(events.clone()))?;
        register_build_info(&registry)?;
        let streams = StreamMetrics::new(&registry)?;
        let read_cache = gauges(
            "read_cache",
            "The script actors' read cache: bytes and entries held, and since start \
             hits, misses, invalidations, evictions, suspensions (listener lost)",
            "what",
        )?;
        Ok(Metrics {
            bus: BusMetrics::new(&registry)?,
            registry,
            requests,
            latency,
            pool,
            actors_live,
            mailbox,
            outbox,
            outbox_oldest,
            sse_sessions,
            events,
            var_writes,
            streams,
            read_cache,
        })
    }

    /// `route` must be a route pattern or `unmatched`: labels come from a
    /// closed set, whatever clients send.
    pub fn observe(&self, route: &str, method: &Method, status: u16, secs: f64) {
        let status = status.to_string();
        let labels = [route, method_label(method), status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(secs);
    }

    /// The text exposition, with the scrape-time gauges refreshed.
    pub async fn render(&self, services: &Services, streams: &RunStreams) -> String {
        let (size, available, max) = services.pool_status();
        for (what, v) in [
            ("in_use", size - available),
            ("idle", available),
            ("max", max),
        ] {
            self.pool.with_label_values(&[what]).set(v as i64);
        }
        for (kind, counts, live) in services.actors() {
            self.actors_live
                .with_label_values(&[kind])
                .set(counts.live as i64);
            let depth: i64 = live.iter().map(|a| a.mailbox).sum();
            self.mailbox.with_label_values(&[kind]).set(depth);
        }
        if let Ok(d) = services.commands.depth().await {
            self.outbox.with_label_values(&["pending"]).set(d.pending);
            self.outbox
                .with_label_values(&["processing"])
                .set(d.processing);
            self.outbox.with_label_values(&["failed"]).set(d.failed);
            self.outbox_oldest.set(d.oldest_pending_secs.unwrap_or(0.0));
        }
        if let Ok(counts) = services.events.session_counts().await {
            self.sse_sessions.set(counts.values().sum::<usize>() as i64);
        }
        self.events
            .set(services.events.stats().fetched.load(Ordering::Relaxed) as i64);
        let w = services.runs.writer_stats();
        for (what, v) in [
            ("queued", &w.queued),
            ("statements", &w.statements),
            ("rows", &w.rows),
            ("group_retries", &w.group_retries),
        ] {
            self.var_writes
                .with_label_values(&[what])
                .set(v.load(Ordering::Relaxed) as i64);
        }
        self.streams.refresh(streams);
        let c = services.scripts.cache_stats();
        for (what, v) in [
            ("bytes", &c.bytes),
            ("entries", &c.entries),
            ("hits", &c.hits),
            ("misses", &c.misses),
            ("invalidations", &c.invalidations),
            ("evictions", &c.evictions),
            ("suspensions", &c.suspensions),
        ] {
            self.read_cache
                .with_label_values(&[what])
                .set(v.load(Ordering::Relaxed) as i64);
        }
        self.bus.refresh(services);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `method` label: a standard method, or `other` for any made-up one.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

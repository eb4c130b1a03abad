//! The bus: NATS JetStream between scriptd and the integration services that
//! handle commands. scriptd publishes claimed commands to
//! `<subject_prefix>.commands.<command>` and applies what handlers publish to
//! `<subject_prefix>.completions.<command>` (one durable consumer shared by
//! every scriptd process). The outbox stays the source of truth: NATS only
//! carries messages, and nothing accepted is lost whatever NATS does.

pub mod completions;
pub mod dev_handler;
mod message;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use tokio::sync::Notify;

pub use message::{CommandMessage, CompletionMessage, ERROR_MAX};

/// What `[bus]` says, plus how long messages are kept.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// One NATS server URL, or several separated by commas.
    pub url: String,
    pub credentials_file: Option<PathBuf>,
    pub subject_prefix: String,
    pub stream_prefix: String,
    pub replicas: usize,
    /// Max age of the commands and completions streams.
    pub retention: Duration,
    /// The connection's name as NATS shows it (`scriptd`, `scriptd dev-handler`).
    pub client_name: String,
}

/// How long `connect` waits for a first connection before giving up.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// JetStream keeps message ids this long to drop republished duplicates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Counters since start, read by `/metrics`.
#[derive(Debug, Default)]
pub struct BusStats {
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    pub applied: AtomicU64,
    pub ignored: AtomicU64,
    pub malformed: AtomicU64,
    /// Attempts whose deadline passed without a completion.
    pub timeouts: AtomicU64,
}

impl BusStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: BusConfig,
    stats: BusStats,
    /// Woken at each (re)connection.
    connected: Arc<Notify>,
}

impl Bus {
    /// Connects (reconnecting by itself for as long as the process runs) and
    /// waits up to `STARTUP_WAIT` for the first connection.
    pub async fn connect(config: BusConfig) -> anyhow::Result<Bus> {
        check_names(&config)?;
        let servers = parse_servers(&config.url)?;
        let shown = redacted(&config.url);
        let connected = Arc::new(Notify::new());
        let on_event = connected.clone();
        let mut options = ConnectOptions::new()
            .name(&config.client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let notify = on_event.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("bus: connected to NATS");
                            notify.notify_waiters();
                        }
                        Event::Disconnected => {
                            tracing::warn!("bus: NATS connection lost; reconnecting")
                        }
                        other => tracing::info!(event = %other, "bus: NATS event"),
                    }
                }
            });
        if let Some(file) = &config.credentials_file {
            options = options
                .credentials_file(file)
                .await
                .with_context(|| format!("reading bus.credentials_file {}", file.display()))?;
        }
        let client = options
            .connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {shown}"))?;
        let started = tokio::time::Instant::now();
        while client.connection_state() != State::Connected {
            anyhow::ensure!(
                started.elapsed() < STARTUP_WAIT,
                "cannot reach NATS at {shown} (bus.url) within {}s: is nats-server running, with JetStream (-js)?",
                STARTUP_WAIT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(Bus {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                stats: BusStats::default(),
                connected,
            }),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    /// Resolves at the next (re)connection.
    pub async fn reconnected(&self) {
        self.inner.connected.notified().await
    }

    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.inner.config.stream_prefix)
    }

    pub fn completions_stream(&self) -> String {
        format!("{}_COMPLETIONS", self.inner.config.stream_prefix)
    }

    pub fn command_subject(&self, command: &str) -> String {
        format!("{}.commands.{command}", self.inner.config.subject_prefix)
    }

    pub fn completion_subject(&self, command: &str) -> String {
        format!("{}.completions.{command}", self.inner.config.subject_prefix)
    }

    /// Publishes one command and waits for JetStream's ack. The message id
    /// `<commandId>.<attempt>` lets JetStream drop a republish of the same
    /// attempt (a process that died between the ack and its commit).
    pub async fn publish_command(&self, message: CommandMessage) -> Result<(), String> {
        let result = self.publish_acked(&message).await;
        let counter = match result {
            Ok(()) => &self.inner.stats.published,
            Err(_) => &self.inner.stats.publish_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn publish_acked(&self, m: &CommandMessage) -> Result<(), String> {
        let body = serde_json::to_vec(m).map_err(|e| e.to_string())?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(format!("{}.{}", m.command_id, m.attempt));
        let ack = self
            .js()
            .send_publish(self.command_subject(&m.command), publish)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Publishes a handler's completion (the dev handler and tests), with
    /// the message id `<commandId>.<attempt>.completion`.
    pub async fn publish_completion(
        &self,
        command: &str,
        completion: &CompletionMessage,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&completion.to_json())?;
        let attempt = completion.report.attempt.unwrap_or(0);
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(format!("{}.{attempt}.completion", completion.command_id));
        self.js()
            .send_publish(self.completion_subject(command), publish)
            .await?
            .await?;
        Ok(())
    }

    fn streams(&self) -> [(String, String); 2] {
        let p = &self.inner.config.subject_prefix;
        [
            (self.commands_stream(), format!("{p}.commands.>")),
            (self.completions_stream(), format!("{p}.completions.>")),
        ]
    }

    /// Creates the commands and completions streams if missing; an existing
    /// stream must carry the subjects scriptd publishes to.
    pub async fn ensure_streams(&self) -> anyhow::Result<()> {
        for (name, subject) in self.streams() {
            match self.js().get_stream(&name).await {
                Ok(stream) => check_stream(stream.cached_info(), &subject)?,
                Err(e) if is_not_found(&e) => {
                    self.create_stream(&name, &subject).await?;
                    tracing::info!(stream = %name, %subject, "bus: stream created");
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "looking up the NATS stream {name} (is JetStream enabled?)"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn create_stream(&self, name: &str, subject: &str) -> anyhow::Result<()> {
        let c = &self.inner.config;
        self.js()
            .create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subject.to_string()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: c.retention,
                duplicate_window: DUPLICATE_WINDOW,
                num_replicas: c.replicas.max(1),
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!(
                    "creating the NATS stream {name} on {subject} (another stream may already \
                     hold these subjects: set bus.subject_prefix, or remove that stream)"
                )
            })?;
        Ok(())
    }

    /// Waits until both streams exist (a handler that starts before scriptd).
    pub async fn wait_for_streams(&self) -> anyhow::Result<()> {
        let mut said = false;
        for (name, subject) in self.streams() {
            loop {
                match self.js().get_stream(&name).await {
                    Ok(stream) => {
                        check_stream(stream.cached_info(), &subject)?;
                        break;
                    }
                    Err(e) => {
                        if !said {
                            tracing::info!(stream = %name, error = %e, "waiting for scriptd to create the bus streams");
                            said = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn check_stream(info: &stream::Info, subject: &str) -> anyhow::Result<()> {
    let subjects = &info.config.subjects;
    anyhow::ensure!(
        subjects.iter().any(|s| covers(s, subject)),
        "the NATS stream {} exists with subjects {subjects:?}, which do not cover {subject}: \
         add {subject} to it, delete it so that scriptd creates it, or set bus.stream_prefix",
        info.config.name
    );
    if info.config.duplicate_window < DUPLICATE_WINDOW {
        tracing::warn!(stream = %info.config.name, window = ?info.config.duplicate_window,
            "bus: the stream's duplicate window is under 2 minutes; republished commands may reach handlers twice");
    }
    Ok(())
}

/// Does the subject filter `pattern` match every subject `subject` matches?
/// Token by token: `>` covers one or more tokens, `*` exactly one.
pub(crate) fn covers(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn parse_servers(url: &str) -> anyhow::Result<Vec<ServerAddr>> {
    let servers: Vec<ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .with_context(|| format!("bus.url: {} is not a NATS URL", redacted(s)))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!servers.is_empty(), "bus.url is empty");
    Ok(servers)
}

/// `url` without a password, for messages.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Subject tokens and stream names NATS accepts.
fn check_names(c: &BusConfig) -> anyhow::Result<()> {
    let token_ok = |t: &str| {
        !t.is_empty() && !t.contains(|ch: char| ch.is_whitespace() || matches!(ch, '*' | '>'))
    };
    anyhow::ensure!(
        c.subject_prefix.split('.').all(token_ok),
        "bus.subject_prefix {:?} is not a NATS subject prefix (dot-separated tokens without spaces, * or >)",
        c.subject_prefix
    );
    anyhow::ensure!(
        !c.stream_prefix.is_empty()
            && !c.stream_prefix.contains(|ch: char| {
                ch.is_whitespace() || matches!(ch, '.' | '*' | '>' | '/' | '\\')
            }),
        "bus.stream_prefix {:?} is not a NATS stream name (no spaces, ., *, >, / or \\)",
        c.stream_prefix
    );
    anyhow::ensure!(
        (1..=5).contains(&c.replicas),
        "bus.replicas is {}; JetStream allows 1 to 5",
        c.replicas
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters_cover_token_by_token() {
        assert!(covers("scriptd.commands.>", "scriptd.commands.>"));
        assert!(covers("scriptd.>", "scriptd.commands.>"));
        assert!(covers(">", "scriptd.commands.>"));
        assert!(covers("*.commands.>", "scriptd.commands.>"));
        assert!(!covers("scriptd.commands.*", "scriptd.commands.>"));
        assert!(!covers("scriptd.commands", "scriptd.commands.>"));
        assert!(!covers("scriptd.completions.>", "scriptd.commands.>"));
        assert!(!covers("other.>", "scriptd.commands.>"));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("nats://u:secret@h1:4222, nats://h2:4222"),
            "nats://***@h1:4222,nats://h2:4222"
        );
    }

    #[test]
    fn several_servers_separated_by_commas() {
        assert_eq!(parse_servers("nats://a:1, nats://b:2").unwrap().len(), 2);
        assert!(parse_servers(" , ").is_err());
    }
}

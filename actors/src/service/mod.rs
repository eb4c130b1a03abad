//! The services: one door per aggregate (scripts with their versions and
//! audit, runs, commands, events) plus idempotency keys and the admin view.
//! They are the only API the HTTP edge calls, for reads and writes alike;
//! below them are the actors, the workers and the store.

pub mod commands;
pub mod events;
pub mod idempotency;
pub mod runs;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use commands::Commands;
pub use events::Events;
pub use idempotency::Idempotency;
pub use runs::Runs;
pub use scripts::Scripts;

use crate::bus::{self, Bus, BusConfig};
use crate::domain::Result;
use crate::hub::{EventHub, HubStats};
use crate::keyed::{ActorInfo, KindCounts, Singleton};
use crate::outbox::{Dispatch, Outbox, OutboxActor, OutboxConfig};
use crate::sse::SessionConfig;
use crate::store::{cluster, Db};
use crate::workers::appender::EventPublisher;
use crate::workers::dispatcher::Dispatcher;
use crate::workers::listener;
use crate::workers::var_writer::VarWriter;

/// `scriptd migrate`: applies the pending migrations and returns.
pub async fn migrate(
    database_url: &str,
    connect_timeout: Duration,
    startup_wait: Duration,
) -> anyhow::Result<()> {
    cluster::wait_until_reachable(database_url, startup_wait, connect_timeout).await?;
    Db::connect(database_url, 1, 1, connect_timeout)?
        .migrate()
        .await?;
    Ok(())
}

/// Where a database url points (host, port, database, user; never the
/// password), for log lines and errors.
pub fn describe_database(url: &str) -> String {
    cluster::describe_target(url)
}

/// What the services are started with.
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// How long to wait at start for an unreachable database.
    pub startup_wait: Duration,
    /// Connections of each HTTP worker's read pool.
    pub read_pool_size: usize,
    pub actor_idle: Duration,
    /// Bytes the script actors keep for reads, over all of them (0: none).
    pub read_cache_bytes: usize,
    pub run_queue_max: usize,
    pub var_write_statements: usize,
    pub session_buffer: usize,
    pub retention_hours: u64,
    pub sessions: SessionConfig,
    pub idempotency_ttl: chrono::Duration,
    pub idempotency_lease: chrono::Duration,
    /// Who completes commands.
    pub dispatcher: Dispatching,
    /// NATS JetStream, when configured.
    pub bus: Option<BusConfig>,
    pub outbox: OutboxConfig,
    /// Whether this process runs the OutboxActor (else only `poll_once`).
    pub outbox_autorun: bool,
}

/// Who completes commands.
#[derive(Clone)]
pub enum Dispatching {
    /// Nobody: commands stay PENDING (until completed over HTTP).
    None,
    /// A dispatcher in this process (the dev worker, or a test's).
    InProcess(Arc<dyn Dispatcher>),
    /// Handlers over the bus (needs `bus`).
    Bus,
}

/// Whether the bus is configured and connected (`/readyz`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusState {
    Off,
    Connected,
    Disconnected,
}

impl BusState {
    pub fn as_str(self) -> &'static str {
        match self {
            BusState::Off => "off",
            BusState::Connected => "connected",
            BusState::Disconnected => "disconnected",
        }
    }
}

/// Connects to NATS and creates or checks the streams, before serving.
async fn connect_bus(config: Option<BusConfig>) -> anyhow::Result<Option<Bus>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let bus = Bus::connect(config).await?;
    bus.ensure_streams().await?;
    Ok(Some(bus))
}

/// The outbox for the chosen dispatcher (`None`: nobody dispatches).
fn outbox_for(
    dispatching: Dispatching,
    bus: &Option<Bus>,
    db: &Db,
    config: &OutboxConfig,
) -> anyhow::Result<Option<Outbox>> {
    let dispatch = match (dispatching, bus) {
        (Dispatching::None, _) => return Ok(None),
        (Dispatching::InProcess(d), _) => Dispatch::InProcess(d),
        (Dispatching::Bus, Some(bus)) => Dispatch::Bus(bus.clone()),
        (Dispatching::Bus, None) => {
            anyhow::bail!("outbox.dispatcher is \"bus\" but bus.url is empty")
        }
    };
    Ok(Some(Outbox::new(db.clone(), dispatch, config.clone())))
}

/// Every door, cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub scripts: Scripts,
    pub runs: Runs,
    pub commands: Commands,
    pub events: Events,
    pub idempotency: Idempotency,
    outbox_actor: Option<Singleton<OutboxActor>>,
    db: Db,
}

impl Services {
    /// Connects, applies the migrations, starts the actors and the LISTEN
    /// connection. Call it on the actix system that will run them.
    pub async fn start(c: Config) -> anyhow::Result<Self> {
        cluster::wait_until_reachable(&c.database_url, c.startup_wait, c.connect_timeout).await?;
        let db = Db::connect(
            &c.database_url,
            c.pool_size,
            c.read_pool_size,
            c.connect_timeout,
        )?;
        db.migrate().await?;
        let stats = Arc::new(HubStats::default());
        let cache = Arc::new(crate::read_cache::ReadCache::new(c.read_cache_bytes));
        let hub = {
            let (db, stats) = (db.clone(), stats.clone());
            let (buffer, retention) = (c.session_buffer, c.retention_hours);
            Singleton::start("eventhub", move |meta| {
                EventHub::new(db.clone(), buffer, retention, stats.clone(), meta)
            })
        };
        let bus = connect_bus(c.bus).await?;
        let outbox = outbox_for(c.dispatcher, &bus, &db, &c.outbox)?;
        let outbox_actor = outbox
            .clone()
            .filter(|_| c.outbox_autorun)
            .map(|o| Singleton::start("outbox", move |meta| OutboxActor::new(o.clone(), meta)));
        let targets = listener::Targets {
            hub: hub.clone(),
            outbox: outbox_actor.clone(),
            cache: cache.clone(),
        };
        actix::spawn(listener::run(db.url().to_string(), targets));
        let commands = Commands {
            db: db.clone(),
            outbox,
            config: c.outbox,
            bus,
        };
        if let Some(bus) = commands.bus.clone() {
            // Whichever dispatcher runs: a handler may answer a command that
            // reached it some other way. A quarter of the write pool at most.
            let concurrency = (c.pool_size / 4).clamp(1, 64);
            actix::spawn(bus::completions::run(bus, commands.clone(), concurrency));
        }
        let publisher = EventPublisher::start(db.clone());
        let writer = VarWriter::start(db.clone(), c.var_write_statements);
        let run_actors = crate::run::actors(
            db.clone(),
            publisher.clone(),
            c.actor_idle,
            c.run_queue_max,
            writer.clone(),
        );
        Ok(Services {
            scripts: Scripts {
                db: db.clone(),
                actors: crate::script::actors(db.clone(), c.actor_idle),
                cache,
            },
            runs: Runs {
                db: db.clone(),
                actors: run_actors,
                writer,
            },
            commands: commands.clone(),
            events: Events {
                db: db.clone(),
                hub,
                stats,
                publisher,
                replays: Arc::new(Semaphore::new((c.pool_size / 4).max(1))),
                sessions: c.sessions,
            },
            idempotency: Idempotency {
                db: db.clone(),
                ttl: c.idempotency_ttl,
                lease: c.idempotency_lease,
            },
            outbox_actor,
            db,
        })
    }

    /// A copy whose reads use a pool of their own, for one HTTP worker thread.
    pub fn for_worker(&self) -> Self {
        let db = self.db.for_worker();
        let mut s = self.clone();
        s.scripts.db = db.clone();
        s.runs.db = db.clone();
        s.commands.db = db.clone();
        s.events.db = db.clone();
        s.db = db;
        s
    }

    pub fn bus_state(&self) -> BusState {
        match &self.commands.bus {
            None => BusState::Off,
            Some(b) if b.is_connected() => BusState::Connected,
            Some(_) => BusState::Disconnected,
        }
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    /// (size, available, max) of the write pool.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        self.db.pool_status()
    }

    /// What is live, by kind (script, run, outbox, eventhub), with each
    /// kind's live actors; the mailbox depth of each kind is their sum.
    pub fn actors(&self) -> Vec<(&'static str, KindCounts, Vec<ActorInfo>)> {
        let mut kinds = vec![
            (
                "script",
                self.scripts.actors.registry().counts(),
                self.scripts.actors.registry().actors(),
            ),
            (
                "run",
                self.runs.actors.registry().counts(),
                self.runs.actors.registry().actors(),
            ),
        ];
        let outbox = self.outbox_actor.as_ref().map(|o| o.registry());
        kinds.push((
            "outbox",
            outbox.map(|r| r.counts()).unwrap_or_default(),
            outbox.map(|r| r.actors()).unwrap_or_default(),
        ));
        let hub = self.events.hub.registry();
        kinds.push(("eventhub", hub.counts(), hub.actors()));
        kinds
    }
}

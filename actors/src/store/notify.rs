//! LISTEN/NOTIFY: the channels scriptd announces on, and the one listening
//! connection of a process.

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// NOTIFY channel announcing new events (payload: the last id).
pub const EVENTS_CHANNEL: &str = "scriptd_events";
/// NOTIFY channel announcing a new PENDING command.
pub const OUTBOX_CHANNEL: &str = "scriptd_outbox";
/// NOTIFY channel announcing a changed script row (payload: "<id> <revision>",
/// sent by a trigger).
pub const SCRIPTS_CHANNEL: &str = "scriptd_scripts";

/// What the listening connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// LISTEN is in place (after every (re)connect): anything may have
    /// happened while nobody listened.
    Listening,
    Events,
    Outbox,
    Script {
        id: uuid::Uuid,
        revision: i64,
    },
    /// The listening connection failed (sent by its supervisor, in order
    /// with the rest).
    Lost,
}

fn script_change(payload: &str) -> Option<Notice> {
    let (id, revision) = payload.split_once(' ')?;
    Some(Notice::Script {
        id: id.parse().ok()?,
        revision: revision.parse().ok()?,
    })
}

/// Connects, LISTENs on the channels asked for, and sends what arrives to
/// `tx` until the connection fails (the error) or `tx` closes (Ok).
pub async fn listen_once(
    url: &str,
    outbox: bool,
    tx: &mpsc::UnboundedSender<Notice>,
) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (raw_tx, mut raw) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if raw_tx
                        .send((n.channel().to_string(), n.payload().to_string()))
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection error");
                    break;
                }
            }
        }
    });
    let mut listen = format!("LISTEN {EVENTS_CHANNEL}; LISTEN {SCRIPTS_CHANNEL};");
    if outbox {
        listen.push_str(&format!(" LISTEN {OUTBOX_CHANNEL};"));
    }
    client.batch_execute(&listen).await?;
    tracing::info!("listening for notifications");
    if tx.send(Notice::Listening).is_err() {
        return Ok(());
    }
    while let Some((channel, payload)) = raw.recv().await {
        let notice = match channel.as_str() {
            EVENTS_CHANNEL => Notice::Events,
            OUTBOX_CHANNEL => Notice::Outbox,
            SCRIPTS_CHANNEL => match script_change(&payload) {
                Some(n) => n,
                None => continue,
            },
            _ => continue,
        };
        if tx.send(notice).is_err() {
            driver.abort();
            return Ok(());
        }
    }
    driver.abort();
    drop(client);
    anyhow::bail!("the LISTEN connection closed")
}

//! ScriptActor: one per script id. It serializes every mutation of its
//! script (PATCH, version create, publish) and commits queued version creates
//! together (group commit). Each mutation is one transaction that re-reads
//! the row under its lock (which serializes writers across processes too)
//! and writes the audit row with the change.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::history;
use crate::domain::script::{archived, check_base, check_patch, patch_action};
use crate::domain::{
    AuditAction, Error, ErrorCode, NewVersion, PatchRequest, PublishRequest, Result, Script,
    ScriptStatus, ScriptView, TenantId, Version, VersionContent, VersionRequest,
};
use crate::keyed::{self, KeyedActor, Loading, Queue};
use crate::store::idempotency::Idem;
use crate::store::{self, scripts as sql, Db};

/// Version creates committed in one transaction at most.
const MAX_GROUP: usize = 64;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A version create, completing its idempotency key in its transaction.
pub struct CreateVersion {
    pub req: VersionRequest,
    pub idem: Option<Idem<Version>>,
}

/// A created version, and the script's revision after its commit.
pub type Created = (Version, i64);

crate::keyed_jobs!(ScriptJob for ScriptActor {
    Create(CreateVersion) -> Created, |c| &c.req.tenant;
    Patch(PatchRequest) -> ScriptView, |r| &r.tenant;
    Publish(PublishRequest) -> ScriptView, |r| &r.tenant;
});

/// The script kind of keyed actor: what it shares is the database.
pub struct ScriptActor {
    pub db: Db,
}

impl KeyedActor for ScriptActor {
    const KIND: &'static str = "script";
    /// Only the tenant is kept: every mutation reads the row under its lock.
    type State = ();
    type Job = ScriptJob;
    type Done = ();

    fn load(&self, key: Uuid) -> Loading<()> {
        let db = self.db.clone();
        async move {
            let client = db.write().await?;
            Ok(sql::load_script(&client, key)
                .await?
                .map(|s| (s.tenant_id, ())))
        }
        .boxed()
    }

    /// All version creates at the head of the queue together, or one
    /// PATCH or publish.
    fn next(
        &mut self,
        key: Uuid,
        _: &mut Self::State,
        queue: &mut Queue<ScriptJob>,
    ) -> BoxFuture<'static, ()> {
        let db = self.db.clone();
        match queue.pop() {
            Some(ScriptJob::Create(first, tx)) => {
                let mut batch = vec![(first, tx)];
                while batch.len() < MAX_GROUP {
                    match queue.pop_if(|j| matches!(j, ScriptJob::Create(..))) {
                        Some(ScriptJob::Create(c, tx)) => batch.push((c, tx)),
                        _ => break,
                    }
                }
                commit_versions(db, key, batch).boxed()
            }
            Some(ScriptJob::Patch(req, tx)) => async move {
                let _ = tx.send(patch_script(&db, key, &req).await);
            }
            .boxed(),
            Some(ScriptJob::Publish(req, tx)) => async move {
                let _ = tx.send(publish(&db, key, &req).await);
            }
            .boxed(),
            None => async {}.boxed(),
        }
    }
}

/// Commits a group of version creates; if the group transaction fails, each
/// request is retried alone so that one bad request cannot fail the others.
async fn commit_versions(db: Db, id: Uuid, batch: Vec<(CreateVersion, Reply<Created>)>) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match create_versions(&db, id, &requests).await {
        Ok((outcomes, revision)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.map(|v| (v, revision)));
            }
        }
        Err(e) if requests.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(script = %id, error = %e, size = requests.len(), "group commit failed; retrying one by one");
            for (req, reply) in requests.iter().zip(replies) {
                let outcome = create_versions(&db, id, std::slice::from_ref(req))
                    .await
                    .and_then(|(mut o, revision)| {
                        let one = o.pop().unwrap_or_else(|| Err(Error::not_found("script")));
                        one.map(|v| (v, revision))
                    });
                let _ = reply.send(outcome);
            }
        }
    }
}

/// The versions a group creates: each request checked against the locked
/// row and the numbers handed out before it, with its content resolved
/// (given, restored or merged) and its audit note.
struct Planned {
    outcomes: Vec<Result<Version>>,
    audits: Vec<Option<serde_json::Value>>,
    latest: i32,
}

/// A version's graph and variables.
type Content = (serde_json::Value, Option<serde_json::Value>);

/// The stored versions a group needs (restore sources, merge bases and the
/// latest version as "theirs"), loaded once under the row lock.
fn sources(script: &Script, requests: &[CreateVersion]) -> Vec<i32> {
    let mut wanted = Vec::new();
    for CreateVersion { req, .. } in requests {
        if let VersionContent::Restore(n) = req.new.content {
            wanted.push(n);
        }
        if let (true, Some(base)) = (req.new.merge, req.new.base_version) {
            wanted.extend([base, script.latest_version]);
        }
    }
    wanted.retain(|n| (1..=script.latest_version).contains(n));
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

impl Planned {
    /// Version `n`'s content: stored, or planned earlier in this group.
    fn content_of<'s>(
        &'s self,
        stored: &'s HashMap<i32, Content>,
        n: i32,
    ) -> Option<(&'s serde_json::Value, &'s Option<serde_json::Value>)> {
        if let Some((graph, vars)) = stored.get(&n) {
            return Some((graph, vars));
        }
        self.outcomes
            .iter()
            .flatten()
            .find(|v| v.version == n)
            .map(|v| (&v.graph_json, &v.variables_def))
    }

    /// The content of one request and the audit note that says where it came
    /// from, or why it is refused.
    fn resolve(
        &self,
        stored: &HashMap<i32, Content>,
        new: &NewVersion,
    ) -> Result<(Content, Option<serde_json::Value>)> {
        let merging = new.merge && new.base_version.is_some_and(|b| b < self.latest);
        if !merging {
            check_base(new.base_version, self.latest)?;
        }
        match &new.content {
            VersionContent::Restore(n) => {
                let (graph, vars) = self
                    .content_of(stored, *n)
                    .ok_or_else(|| Error::not_found("version"))?;
                Ok((
                    (graph.clone(), vars.clone()),
                    Some(json!({ "restoredFrom": n })),
                ))
            }
            VersionContent::Given {
                graph_json,
                variables_def,
            } if !merging => Ok(((graph_json.clone(), variables_def.clone()), None)),
            VersionContent::Given {
                graph_json,
                variables_def,
            } => {
                let base = new.base_version.unwrap_or_default();
                let missing = || Error::Unexpected(anyhow::anyhow!("merge source missing"));
                let b = self.content_of(stored, base).ok_or_else(missing)?;
                let t = self.content_of(stored, self.latest).ok_or_else(missing)?;
                let null = serde_json::Value::Null;
                let (graph, vars) = history::merge(
                    (b.0, b.1.as_ref().unwrap_or(&null)),
                    (t.0, t.1.as_ref().unwrap_or(&null)),
                    (graph_json, variables_def.as_ref().unwrap_or(&null)),
                )
                .map_err(|conflicts| merge_conflict(self.latest, conflicts))?;
                let vars = (!vars.is_null()).then_some(vars);
                let note = json!({ "mergedFrom": { "base": base, "theirs": self.latest } });
                Ok(((graph, vars), Some(note)))
            }
        }
    }
}

fn merge_conflict(latest: i32, conflicts: Vec<history::Conflict>) -> Error {
    Error::rejected_with(
        ErrorCode::MergeConflict,
        format!(
            "{} conflicting edit(s) against version {latest}",
            conflicts.len()
        ),
        json!({ "latestVersion": latest, "conflicts": conflicts }),
    )
}

fn plan_versions(
    script: &Script,
    stored: &HashMap<i32, Content>,
    requests: &[CreateVersion],
    now: chrono::DateTime<chrono::Utc>,
) -> Planned {
    let mut plan = Planned {
        outcomes: Vec::with_capacity(requests.len()),
        audits: Vec::with_capacity(requests.len()),
        latest: script.latest_version,
    };
    for CreateVersion { req: r, .. } in requests {
        let resolved = if script.status == ScriptStatus::Archived {
            Err(archived())
        } else {
            plan.resolve(stored, &r.new)
        };
        let ((graph_json, variables_def), audit) = match resolved {
            Ok(r) => r,
            Err(e) => {
                plan.outcomes.push(Err(e));
                plan.audits.push(None);
                continue;
            }
        };
        plan.latest += 1;
        plan.audits.push(audit);
        plan.outcomes.push(Ok(Version {
            id: Uuid::now_v7(),
            script_id: script.id,
            version: plan.latest,
            graph_json,
            variables_def,
            changelog: r.new.changelog.clone(),
            is_published: false,
            is_active: false,
            created_by_id: r.actor.to_string(),
            created_at: now,
        }));
    }
    plan
}

/// The rows of the planned versions and their audit rows.
fn rows_of<'a>(
    plan: &'a Planned,
    requests: &'a [CreateVersion],
) -> (Vec<sql::VersionRow<'a>>, Vec<sql::AuditRow<'a>>) {
    let mut rows = Vec::new();
    let mut audits = Vec::new();
    for ((outcome, audit), r) in plan.outcomes.iter().zip(&plan.audits).zip(requests) {
        let Ok(v) = outcome else { continue };
        rows.push(sql::VersionRow {
            id: v.id,
            version: v.version,
            graph_json: &v.graph_json,
            variables_def: v.variables_def.as_ref(),
            changelog: v.changelog.as_deref(),
            created_by_id: &v.created_by_id,
        });
        audits.push(sql::AuditRow {
            id: Uuid::now_v7(),
            action: AuditAction::Create,
            version: v.version,
            actor_id: &v.created_by_id,
            diff_json: audit.clone(),
            note: r.req.new.note.as_deref(),
        });
    }
    (rows, audits)
}

/// Creates the versions of `requests` in ONE transaction: one counter update
/// for N versions, N version rows, N audit rows. Requests that a rule refuses
/// (archived, baseVersion, a merge conflict, an unknown restore source) get
/// their own error without failing the others. Restores and merges read their
/// sources under the script's row lock, so they see every earlier create.
#[tracing::instrument(level = "debug", skip_all, fields(script = %script_id, group = requests.len()))]
/// The outcomes, and the script's revision after the commit.
async fn create_versions(
    db: &Db,
    script_id: Uuid,
    requests: &[CreateVersion],
) -> Result<(Vec<Result<Version>>, i64)> {
    let mut client = db.write().await?;
    let tx = client.transaction().await?;
    let Some(script) = sql::lock_script(&tx, script_id).await? else {
        let none = requests.iter().map(|_| Err(Error::not_found("script")));
        return Ok((none.collect(), 0));
    };
    let now = store::now_ms();
    let stored = sql::version_contents(&tx, script_id, &sources(&script, requests)).await?;
    let plan = plan_versions(&script, &stored, requests, now);
    let (rows, audits) = rows_of(&plan, requests);
    if rows.is_empty() {
        return Ok((plan.outcomes, script.revision));
    }
    let count = rows.len() as i32;
    let last_actor = rows.last().map(|r| r.created_by_id).unwrap_or_default();
    let new_latest = sql::advance_versions(&tx, script_id, count, last_actor, now).await?;
    if new_latest != plan.latest {
        // Impossible under the row lock; refuse to commit numbers we did not check.
        return Err(Error::Unexpected(anyhow::anyhow!(
            "version counter moved under the lock: expected {}, got {new_latest}",
            plan.latest
        )));
    }
    sql::insert_versions(&tx, script_id, &script.tenant_id, &rows, now).await?;
    sql::insert_audits(&tx, script_id, &script.tenant_id, &audits, now).await?;
    for (r, outcome) in requests.iter().zip(&plan.outcomes) {
        if let (Some(idem), Ok(v)) = (&r.idem, outcome) {
            idem.complete(&tx, v).await?;
        }
    }
    tx.commit().await?;
    Ok((plan.outcomes, script.revision + i64::from(count)))
}

async fn view_of(
    client: &impl deadpool_postgres::GenericClient,
    script: Script,
) -> Result<ScriptView> {
    let active_version = match script.active_version_id {
        Some(id) => sql::get_version_by_id(client, id).await?,
        None => None,
    };
    Ok(ScriptView {
        script,
        active_version,
    })
}

/// The script row, locked, when it belongs to `tenant`.
async fn lock_in_tenant(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    tenant: &TenantId,
) -> Result<Script> {
    sql::lock_script(tx, id)
        .await?
        .filter(|s| s.tenant_id == tenant.as_str())
        .ok_or_else(|| Error::not_found("script"))
}

/// PATCH: merge patch, If-Match, the status transition table, one audit row.
#[tracing::instrument(level = "debug", skip_all, fields(script = %script_id))]
async fn patch_script(db: &Db, script_id: Uuid, req: &PatchRequest) -> Result<ScriptView> {
    let mut client = db.write().await?;
    let tx = client.transaction().await?;
    let script = lock_in_tenant(&tx, script_id, &req.tenant).await?;
    let (changes, diff) = check_patch(&script, req)?;
    if diff.is_empty() {
        return view_of(&tx, script).await;
    }
    let now = store::now_ms();
    let updated = sql::update_script(&tx, script_id, &changes, req.actor.as_str(), now).await?;
    let audit = sql::AuditRow {
        id: Uuid::now_v7(),
        action: patch_action(&changes),
        version: updated.latest_version,
        actor_id: req.actor.as_str(),
        diff_json: Some(serde_json::Value::Object(diff)),
        note: req.note.as_deref(),
    };
    sql::insert_audits(&tx, script_id, &updated.tenant_id, &[audit], now).await?;
    let view = view_of(&tx, updated).await?;
    tx.commit().await?;
    Ok(view)
}

/// Publish (or roll back to) a version: PUBLISH, or ROLLBACK when lower than
/// the version active before; a no-op when it is already active and PUBLISHED.
#[tracing::instrument(level = "debug", skip_all, fields(script = %script_id, version = req.version))]
async fn publish(db: &Db, script_id: Uuid, req: &PublishRequest) -> Result<ScriptView> {
    let mut client = db.write().await?;
    let tx = client.transaction().await?;
    let script = lock_in_tenant(&tx, script_id, &req.tenant).await?;
    if script.status == ScriptStatus::Archived {
        return Err(archived());
    }
    let target = sql::get_version(&tx, script_id, req.version, script.active_version_id)
        .await?
        .ok_or_else(|| Error::not_found("version"))?;
    if target.is_active && script.status == ScriptStatus::Published {
        return Ok(ScriptView {
            script,
            active_version: Some(target),
        });
    }
    let previous = match script.active_version_id {
        Some(id) => sql::get_version_by_id(&tx, id).await?,
        None => None,
    };
    let action = match &previous {
        Some(p) if target.version < p.version => AuditAction::Rollback,
        _ => AuditAction::Publish,
    };
    let now = store::now_ms();
    let updated = sql::activate_version(&tx, script_id, target.id, req.actor.as_str(), now).await?;
    let diff = json!({
        "activeVersionId": { "from": script.active_version_id, "to": target.id },
        "status": { "from": script.status.as_str(), "to": ScriptStatus::Published.as_str() },
    });
    let audit = sql::AuditRow {
        id: Uuid::now_v7(),
        action,
        version: target.version,
        actor_id: req.actor.as_str(),
        diff_json: Some(diff),
        note: req.note.as_deref(),
    };
    sql::insert_audits(&tx, script_id, &updated.tenant_id, &[audit], now).await?;
    tx.commit().await?;
    Ok(ScriptView {
        script: updated,
        active_version: Some(Version {
            is_published: true,
            is_active: true,
            ..target
        }),
    })
}

/// The script actors of this process.
pub type ScriptActors = keyed::Actors<ScriptActor>;

/// Starts the registry of script actors.
pub fn actors(db: Db, idle: std::time::Duration) -> ScriptActors {
    let db = Arc::new(db);
    keyed::Actors::new(idle, move || ScriptActor { db: (*db).clone() })
}

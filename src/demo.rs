//! `scriptd demo`: `serve` with sample data in tenant `demo`, so that a front
//! end has something to show at once: a published script with three versions
//! (version 2 active after a rollback from 3), a run with all four kinds of
//! variables, a finished run, and three commands (the dev worker completes
//! them). Loaded once: a second start finds the script and adds nothing.

use actors::domain::{
    ActorId, CommandName, ErrorCode, NewCommand, NewRun, NewScript, NewVersion, PublishRequest,
    RunStatus, Slug, TenantId, VarKey, VarUpsert, VarValue, VersionContent, VersionRequest,
};
use actors::service::Services;
use anyhow::Context;
use serde_json::{json, Value};
use uuid::Uuid;

pub const TENANT: &str = "demo";
const SLUG: &str = "welcome";

fn graph(version: usize) -> Value {
    let mut nodes = vec![
        json!({ "id": "start", "type": "message", "text": "Hi! What is your name?" }),
        json!({ "id": "ask_name", "type": "input", "variable": "name" }),
        json!({ "id": "bye", "type": "message", "text": "Thanks, {{name}}!" }),
    ];
    let mut edges = vec![
        json!({ "id": "e1", "from": "start", "to": "ask_name" }),
        json!({ "id": "e2", "from": "ask_name", "to": "bye" }),
    ];
    if version >= 2 {
        nodes.insert(
            2,
            json!({ "id": "ask_email", "type": "input", "variable": "email" }),
        );
        edges[1] = json!({ "id": "e2", "from": "ask_name", "to": "ask_email" });
        edges.push(json!({ "id": "e3", "from": "ask_email", "to": "bye" }));
    }
    if version >= 3 {
        nodes.push(
            json!({ "id": "crm", "type": "command", "command": "Contacts.UpsertAndLink.v1" }),
        );
        edges.push(json!({ "id": "e4", "from": "bye", "to": "crm" }));
    }
    json!({ "nodes": nodes, "edges": edges })
}

fn key(k: &str) -> anyhow::Result<VarKey> {
    VarKey::parse(k).map_err(anyhow::Error::msg)
}

/// Loads the sample data unless it is there already; returns whether it did.
pub async fn seed(services: &Services) -> anyhow::Result<bool> {
    let tenant = TenantId::parse(TENANT).map_err(anyhow::Error::msg)?;
    let actor = ActorId::new("demo-author");
    let new = NewScript {
        name: "Welcome".into(),
        slug: Slug::parse(SLUG).map_err(anyhow::Error::msg)?,
        description: Some("A sample script loaded by `scriptd demo`".into()),
        labels: vec!["sample".into()],
        intents: vec!["greeting".into()],
        language_codes: vec!["en".into()],
        embedding_key: None,
    };
    let script = match services.scripts.create(&tenant, &actor, new, None).await {
        Ok(s) => s,
        Err(e) if e.code() == Some(ErrorCode::SlugTaken) => return Ok(false),
        Err(e) => return Err(e).context("creating the sample script"),
    };
    for v in 1..=3 {
        let req = VersionRequest {
            tenant: tenant.clone(),
            actor: actor.clone(),
            new: NewVersion {
                content: VersionContent::Given {
                    graph_json: graph(v),
                    variables_def: Some(json!({ "name": "string", "email": "string" })),
                },
                changelog: Some(format!("sample version {v}")),
                note: None,
                base_version: None,
                merge: false,
            },
        };
        services
            .scripts
            .create_version(script.id, req, None)
            .await?;
    }
    for (version, note) in [(3, "publish"), (2, "roll back to 2")] {
        let req = PublishRequest {
            tenant: tenant.clone(),
            actor: actor.clone(),
            version,
            note: Some(note.into()),
        };
        services.scripts.publish(script.id, req).await?;
    }
    seed_runs(services, &tenant, &actor, script.id).await?;
    seed_commands(services, &tenant).await?;
    Ok(true)
}

async fn seed_runs(
    services: &Services,
    tenant: &TenantId,
    actor: &ActorId,
    script: Uuid,
) -> anyhow::Result<()> {
    for finished in [false, true] {
        let new = NewRun {
            script_id: script,
            version: None,
            started_by_id: Some("demo-runner".into()),
            connector_type: Some("web".into()),
            connector_key: None,
        };
        let run = services.runs.start(tenant, actor, new, None).await?;
        let items = vec![
            VarUpsert {
                key: key("name")?,
                value: VarValue::Str("Ada".into()),
            },
            VarUpsert {
                key: key("age")?,
                value: VarValue::Num(36.0),
            },
            VarUpsert {
                key: key("vip")?,
                value: VarValue::Bool(true),
            },
            VarUpsert {
                key: key("tags")?,
                value: VarValue::Json(json!(["new", "priority"])),
            },
        ];
        services
            .runs
            .upsert(run.id, tenant.clone(), items, None)
            .await?;
        if finished {
            services
                .runs
                .finish(run.id, tenant.clone(), RunStatus::Succeeded, None)
                .await?;
        }
    }
    Ok(())
}

async fn seed_commands(services: &Services, tenant: &TenantId) -> anyhow::Result<()> {
    for (name, payload) in [
        (
            "Contacts.UpsertAndLink.v1",
            json!({ "contacts": [{ "role": "applicant", "email": "ada@example.com" }] }),
        ),
        ("Notes.Create.v1", json!({ "text": "Called back" })),
        ("Tasks.Schedule.v1", json!({ "at": "2026-12-24T09:00:00Z" })),
    ] {
        let command = NewCommand {
            tenant_id: tenant.to_string(),
            command: CommandName::parse(name).map_err(anyhow::Error::msg)?,
            correlation_id: Uuid::now_v7(),
            actor_user_id: "demo-author".into(),
            created_by_id: "demo-author".into(),
            context: json!({ "source": "scriptd demo" }),
            payload,
        };
        services.commands.accept(&command, None).await?;
    }
    Ok(())
}

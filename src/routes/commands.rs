//! Commands: accepted into the transactional outbox, completed asynchronously.

use actix_web::http::StatusCode;
use actix_web::web::Path;
use actix_web::{get, post, HttpResponse};
use actors::domain::Accepted;
use actors::service::idempotency::Recorded;

use crate::dto::commands::{
    CommandAccepted, CommandRequest, CommandStatus, CommandView, CompleteRequest,
};
use crate::http::error::{ApiError, ApiResult, Code};
use crate::http::extract::JsonBody;
use crate::http::idempotency::{recorded_json, KeyedPost};
use crate::http::state::Svc;
use crate::http::tenant::Ctx;
use crate::http::validation::to_api;
use crate::settings::AuthMode;
use validator::Validate;

/// Accept a command into the outbox; its completion arrives on `/events/stream`.
#[utoipa::path(tag = "commands", params(crate::dto::TenantHeader),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Accepted (committed to the outbox)", body = CommandAccepted,
            headers(("Location" = String, description = "/commands/{correlationId}"))),
    ))]
#[post("/commands")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn post_command(post: KeyedPost<CommandRequest>, svc: Svc) -> ApiResult {
    let tenant = post.ctx.tenant(None)?;
    // Authorization comes before the key is looked up: a refused caller
    // neither claims nor reads anyone's key.
    let subject = post.ctx.caller.actor_id.as_str();
    if post.state().auth.mode() == AuthMode::Jwt && post.body.value.actor.user_id != subject {
        return Err(ApiError::new(
            Code::Forbidden,
            "actor.userId must be the token's subject",
        ));
    }
    post.run(tenant, render_accepted, |w| async move {
        let command = w.body.into_new(&w.tenant, &w.actor)?;
        Ok(svc.commands.accept(&command, w.idem.as_ref()).await?)
    })
    .await
}

fn render_accepted(a: &Accepted) -> Recorded {
    recorded_json(
        StatusCode::ACCEPTED,
        vec![("location", format!("/commands/{}", a.correlation_id))],
        &CommandAccepted {
            correlation_id: a.correlation_id,
            command_id: a.command_id,
            status: CommandStatus::Pending,
        },
    )
}

/// A command's status, attempts and result.
#[utoipa::path(tag = "commands", params(crate::dto::TenantHeader, ("correlationId" = uuid::Uuid, Path, description = "The command's correlation id")),
    responses(
        (status = 200, description = "The command", body = CommandView),
    ))]
#[get("/commands/{correlationId}")]
#[tracing::instrument(level = "debug", skip_all, fields(correlation = %path.as_str()))]
pub async fn get_command(ctx: Ctx, path: Path<String>, svc: Svc) -> ApiResult {
    let (correlation_id, tenant) = ctx.target("correlationId", &path)?;
    let c = svc.commands.get(&tenant, correlation_id).await?;
    Ok(HttpResponse::Ok().json(CommandView::from(c)))
}

/// Complete a command over HTTP (for handlers that answer that way, whatever
/// the dispatcher): `success: true` → COMPLETED, `false` → FAILED, with the
/// given event streamed. Needs the `worker` or `admin` role in `jwt` mode.
#[utoipa::path(tag = "commands", params(crate::dto::TenantHeader, ("correlationId" = uuid::Uuid, Path, description = "The command's correlation id")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "The command, now final", body = CommandView),
    ))]
#[post("/commands/{correlationId}/complete")]
#[tracing::instrument(level = "debug", skip_all, fields(correlation = %path.as_str()))]
pub async fn complete_command(
    ctx: Ctx,
    path: Path<String>,
    svc: Svc,
    body: JsonBody<CompleteRequest>,
) -> ApiResult {
    ctx.caller.require_worker()?;
    let (correlation_id, tenant) = ctx.target("correlationId", &path)?;
    body.value.validate().map_err(to_api)?;
    let report = body.value.into_report();
    let c = svc
        .commands
        .complete(&tenant, correlation_id, &report)
        .await?;
    Ok(HttpResponse::Ok().json(CommandView::from(c)))
}

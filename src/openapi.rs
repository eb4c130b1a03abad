//! The OpenAPI document, collected from the handlers' own annotations.

use actix_web::App;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::Modify;
use utoipa_actix_web::AppExt;

/// The `x-tenant-id` header every tenant-scoped route takes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct TenantHeader {
    /// The tenant, `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`.
    #[param(rename = "x-tenant-id")]
    x_tenant_id: Option<String>,
}

/// The serialized document, served at `GET /openapi.json`.
pub struct OpenApiJson(pub String);

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "scriptd",
        description = "Backend of a conversational-script editor: scripts with immutable numbered versions, publishing and rollback, an audit trail, runs with typed variables, a command outbox and a live event stream.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the document by registering every route on a throwaway app.
pub fn document() -> OpenApi {
    use utoipa::OpenApi as _;
    let (_, paths) = App::new()
        .into_utoipa_app()
        .configure(crate::routes::configure)
        .split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    doc
}

pub fn document_json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

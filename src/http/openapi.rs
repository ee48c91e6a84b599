//! The OpenAPI 3 document, generated from the handlers and types it describes.

use axum::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ok;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "synchspeed",
        description = "Lossless offline and online for gateway-fronted microservices: the registry first, then every gateway node at once."
    ),
    paths(
        super::instances::post_offline,
        super::instances::post_online,
        super::instances::get_instance,
        super::operations::post_batch,
        super::operations::get_operation,
        super::operations::list_operations,
        super::offline::list_offline,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "instances", description = "Take instances out of service and bring them back"),
        (name = "operations", description = "The audit trail, batches, probes")
    )
)]
pub struct ApiDoc;

/// Declares the optional bearer token (required only when `security.tokens` is set).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json() -> Response {
    ok(ApiDoc::openapi())
}

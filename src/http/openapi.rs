//! The OpenAPI 3 document, generated from the handlers and types it describes.

use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
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
        super::events::operation_events,
        super::events::every_event,
        super::offline::list_offline,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    modifiers(&BearerAuth),
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

/// What every answer of a status means, where an operation does not say more.
fn description_of(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "202" => {
            "Accepted: the registry took it, the fan-out goes on (Location names the operation)"
        }
        "400" => "Bad request: the error names the option or field and what it takes",
        "401" => "Tokens are configured and the request has none or a wrong one",
        "403" => "The caller's address may not call, or a browser request from another site",
        "404" => "Not found",
        "408" => "The body did not arrive within server.body_read_timeout",
        "409" => {
            "A request with this Idempotency-Key is still being handled, or drain.min_up refuses"
        }
        "413" => "The body is larger than server.body_limit",
        "414" => "The path and query are longer than synchspeed takes (16 KiB)",
        "431" => "More header fields (100) or header bytes (16 KiB) than synchspeed takes",
        "415" => "A body must be application/json",
        "422" => "The Idempotency-Key was used for another request",
        "429" => "Too many operations in flight; Retry-After says when to come back",
        "502" => "The registry refused the change, or some nodes failed after every retry",
        "503" => {
            "The registry, the store or the gateway groups cannot be used: nothing was changed"
        }
        "504" => "wait=true and the timeout came first: the operation, still in progress",
        _ => "See the error body",
    }
}

/// What an option or field takes, by its name: the same name means the same thing on every
/// route, in a parameter and in a body (merged into what the types already say, so a field
/// that may be null still may).
fn constraint(name: &str) -> Option<Value> {
    Some(match name {
        "ip" => json!({"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
        "port" => json!({"minimum": 1, "maximum": 65535}),
        "limit" => json!({"minimum": 1, "maximum": 500}),
        "reason" => json!({"maxLength": 1024}),
        // 100ms and up (shorter waits are refused); longer ones are capped, never refused.
        "timeout" => json!({"pattern": "^([1-9][0-9]{2,5}ms|[1-9][0-9]{0,4}(s|m|h))?$"}),
        // Empty is no filter, as an HTML form sends it.
        // Any characters but white space and control characters, as an app name takes.
        "app" => json!({"pattern": "^[^\\s\\x00-\\x1f\\x7f-\\x9f]{0,255}$"}),
        "Idempotency-Key" => json!({"pattern": "^[!-~]{1,255}$"}),
        "id" => json!({"pattern": "^op_[0-7][0-9A-HJKMNP-TV-Z]{25}$"}),
        // The previous page's `next`; empty is no cursor.
        "before" => json!({"pattern": "^(op_[0-7][0-9A-HJKMNP-TV-Z]{25})?$"}),
        "targets" => json!({"minItems": 1, "maxItems": crate::http::operations::MAX_TARGETS}),
        _ => return None,
    })
}

/// The schemas of request bodies, whose fields take the options' constraints.
const REQUEST_SCHEMAS: [&str; 3] = ["InstanceOptions", "BatchRequest", "BatchTarget"];

fn merge(schema: &mut Value, extra: Value) {
    if let (Some(schema), Value::Object(extra)) = (schema.as_object_mut(), extra) {
        schema.extend(extra);
    }
}

fn error_response(status: &str) -> Value {
    json!({
        "description": description_of(status),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// What holds for every route and answer, written once instead of on each handler: every
/// answer's description and `x-request-id`; `Location` on a 202, `Retry-After` on a 429;
/// the answers of the caller check and of the body's reading on every `/api/v1` route; each
/// option's constraints; the bearer requirement where the caller check asks for one.
fn contract(document: &mut Value, tokens_required: bool) {
    // `get_mut`, never `[]` on a `&mut Value`: that inserts a null where a key is missing.
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let guarded = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for operation in item.values_mut() {
                let has_body = operation.get("requestBody").is_some();
                if guarded && tokens_required {
                    operation["security"] = json!([{"bearer": []}]);
                }
                if let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for parameter in parameters {
                        let name = parameter.get("name").and_then(Value::as_str);
                        let in_query = parameter.get("in").and_then(Value::as_str) == Some("query");
                        let extra = match name {
                            // The audit trail's filters take an empty value as no filter.
                            Some("ip") if in_query => Some(json!({"anyOf": [
                                {"format": "ipv4"}, {"format": "ipv6"}, {"const": ""}
                            ]})),
                            Some("state") => Some(json!({"enum": [
                                "", "planned", "in_progress", "succeeded", "partial", "failed"
                            ]})),
                            other => other.and_then(constraint),
                        };
                        if let Some(extra) = extra
                            && let Some(schema) = parameter.get_mut("schema")
                        {
                            merge(schema, extra);
                        }
                    }
                }
                let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                // Every route: a head past synchspeed's limits.
                for status in ["414", "431"] {
                    responses
                        .entry(status)
                        .or_insert_with(|| error_response(status));
                }
                if guarded {
                    let mut statuses = vec!["401", "403"];
                    if has_body {
                        statuses.extend(["408", "413", "415"]);
                    }
                    for status in statuses {
                        responses
                            .entry(status)
                            .or_insert_with(|| error_response(status));
                    }
                }
                for (status, response) in responses.iter_mut() {
                    if response
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        response["description"] = json!(description_of(status));
                    }
                    let headers = response
                        .as_object_mut()
                        .map(|r| r.entry("headers").or_insert_with(|| json!({})));
                    let Some(headers) = headers.and_then(Value::as_object_mut) else {
                        continue;
                    };
                    headers.insert(
                        "x-request-id".into(),
                        json!({"description": "The request's id (the caller's when plain and short), on every log line of it", "schema": {"type": "string"}}),
                    );
                    match status.as_str() {
                        "202" => {
                            headers.insert(
                                "Location".into(),
                                json!({"description": "/api/v1/operations/{id}", "schema": {"type": "string"}}),
                            );
                        }
                        "429" => {
                            headers.insert(
                                "Retry-After".into(),
                                json!({"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}),
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let schemas = document
        .get_mut("components")
        .and_then(|components| components.get_mut("schemas"))
        .and_then(Value::as_object_mut);
    if let Some(schemas) = schemas {
        // Request bodies only: an answer's field of the same name (a node's `state`) is
        // another thing.
        for (name, schema) in schemas.iter_mut() {
            if !REQUEST_SCHEMAS.contains(&name.as_str()) {
                continue;
            }
            if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                for (name, property) in properties.iter_mut() {
                    if let Some(extra) = constraint(name) {
                        merge(property, extra);
                    }
                }
            }
        }
    }
}

/// This document, as this deployment answers: the bearer requirement on the routes behind
/// the caller check only when tokens are configured.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    contract(&mut document, state.security.tokens.is_required());
    ok(document)
}

//! Options and bodies into types, with errors a caller can act on: every one names the field
//! and says what it takes, in the query and the body alike, and none shows a Rust type name
//! (`expected u16`, `struct InstanceOptions with 7 elements`).

use serde::de::DeserializeOwned;

use super::error::ApiError;

/// What each option takes, in words.
fn expectation(field: &str) -> &'static str {
    match field {
        "port" => "a whole number from 1 to 65535",
        "limit" => "a whole number from 1 to 500",
        "wait" | "dry_run" | "force" => "true or false",
        "timeout" => "a duration such as 10s or 500ms",
        "action" => "offline or online",
        "targets" => "a list of targets such as [{\"ip\": \"10.0.0.5\"}]",
        "ip" => "an IPv4 or IPv6 address",
        "app" | "reason" | "state" => "text",
        _ => "something else",
    }
}

/// The error of one option, from what serde said of it at `path`.
fn option_error(where_: &str, path: &serde_path_to_error::Path, said: &str) -> ApiError {
    // serde says "unknown field `prot`, expected one of `port`, ...": that is the caller's
    // option name and ours, no type in it.
    if let Some(rest) = said.strip_prefix("unknown field ") {
        let options = rest
            .split_once(", expected")
            .map_or("", |(_, expected)| expected.trim_start_matches(" one of"));
        let name = rest.split(',').next().unwrap_or(rest);
        let message = if options.is_empty() {
            format!("{where_}: unknown option {name}")
        } else {
            format!("{where_}: unknown option {name}; the options are{options}")
        };
        return ApiError::bad_request("invalid_option", message);
    }
    let field = path
        .iter()
        .rev()
        .find_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .unwrap_or("");
    if let Some(missing) = said.strip_prefix("missing field ") {
        return ApiError::bad_request("invalid_option", format!("{where_}: {missing} is required"));
    }
    if field.is_empty() {
        return ApiError::bad_request(
            "invalid_option",
            format!("{where_}: not what this route takes"),
        );
    }
    ApiError::bad_request(
        "invalid_option",
        format!("{where_}: `{path}` must be {}", expectation(field)),
    )
}

/// A path parameter, or the envelope's 400 (a segment that is not UTF-8 once decoded).
pub fn path<T>(
    extracted: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<axum::extract::Path<T>, ApiError> {
    extracted.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_path",
            format!("the path cannot be read: {}", rejection.body_text()),
        )
    })
}

/// Options from a query string; an unknown one is a 400 (never ignored).
pub fn from_query<T: DeserializeOwned + Default>(query: Option<&str>) -> Result<T, ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(T::default());
    };
    let deserializer =
        serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| option_error("query string", e.path(), &e.inner().to_string()))
}

/// A JSON body: a syntax error is `invalid_json`; a known field with a wrong value, or an
/// unknown one, is `invalid_option`, as in the query.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|e| {
        let inner = e.inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // "... at line 1 column 13" is for syntax; a value's error names its field.
                let said = inner.to_string();
                let said = said.split(" at line ").next().unwrap_or(&said).to_owned();
                option_error("request body", e.path(), &said)
            }
            _ => ApiError::bad_request(
                "invalid_json",
                format!(
                    "request body: not JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            ),
        }
    })?;
    deserializer.end().map_err(|_| {
        ApiError::bad_request("invalid_json", "request body: more after the JSON value")
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::options::InstanceOptions;

    fn message(error: ApiError) -> String {
        error.to_string()
    }

    #[test]
    fn query_errors_name_the_field_and_what_it_takes() {
        let error = from_query::<InstanceOptions>(Some("port=-1")).unwrap_err();
        let text = message(error);
        assert!(
            text.contains("`port` must be a whole number from 1 to 65535"),
            "{text}"
        );
        let text = message(from_query::<InstanceOptions>(Some("wait=maybe")).unwrap_err());
        assert!(text.contains("`wait` must be true or false"), "{text}");
        let text = message(from_query::<InstanceOptions>(Some("prot=8080")).unwrap_err());
        assert!(text.contains("unknown option `prot`"), "{text}");
        assert!(text.contains("`port`"), "the options are listed: {text}");
    }

    #[test]
    fn body_errors_are_invalid_option_for_values_and_invalid_json_for_syntax() {
        let text = message(from_json::<InstanceOptions>(b"{\"port\": \"x\"}").unwrap_err());
        assert!(text.contains("`port` must be a whole number"), "{text}");
        assert!(!text.contains("u16"), "no type names: {text}");
        let text = message(from_json::<InstanceOptions>(b"[1, 2]").unwrap_err());
        assert!(!text.contains("InstanceOptions"), "no type names: {text}");
        let unknown = from_json::<InstanceOptions>(b"{\"prot\": 8080}").unwrap_err();
        assert!(matches!(
            unknown,
            ApiError::BadRequest {
                code: "invalid_option",
                ..
            }
        ));
        let syntax = from_json::<InstanceOptions>(b"{\"wait\": tru").unwrap_err();
        assert!(matches!(
            syntax,
            ApiError::BadRequest {
                code: "invalid_json",
                ..
            }
        ));
    }
}

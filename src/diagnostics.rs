//! Error text for logs and operation records, shared by every backend: an error with its
//! causes on one line, and the printable start of a peer's answer.

/// An error and its causes on one line, for foreign errors that keep the useful part in
/// `source()` (an HTTP client's "connection refused"). synchspeed's own errors say their
/// cause in their message already, and keep it as `source()` for code that walks the chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The first 200 bytes of a body, printable (control characters become spaces, so a hostile
/// answer cannot forge log lines).
pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause() {
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&error), "outer: connection refused");
    }

    #[test]
    fn a_snippet_is_short_and_has_no_control_characters() {
        let body = format!("<html>\r\n{}\x1b[31m", "x".repeat(500));
        let shown = snippet(body.as_bytes());
        assert!(shown.len() <= 200);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}

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

/// Text from a peer made safe for a terminal: control characters (ESC, BEL, CR, C1 controls)
/// and the bidirectional overrides become visible escapes such as `\u{1b}`, so an instance id
/// or an error message cannot set a window title, move the cursor, recolour the screen or
/// reorder what a reader sees.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_escapes_what_a_terminal_would_obey() {
        let hostile = "10.0.0.5\x1b]0;PWNED\x07\x1b[31m\u{202e}red";
        let shown = printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "10.0.0.5\\u{1b}]0;PWNED\\u{7}\\u{1b}[31m\\u{202e}red"
        );
        assert!(matches!(
            printable("plain ünïcode"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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

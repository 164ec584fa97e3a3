//! Syntax errors in words a user can act on.

/// A syntax error in words a user can act on: (message, label, hint).
pub(super) fn syntax_help(msg: &str, text: &str, offset: usize) -> (String, String, String) {
    let at = text[offset..].chars().next();
    if msg.contains("unique attribute key") || msg.contains("redefined attribute") {
        return (
            "an attribute is set twice in this block".into(),
            "set again here".into(),
            "keep one of them".into(),
        );
    }
    if at == Some('\'') {
        return (
            format!("syntax error: {msg}"),
            "single quotes do not make a string".into(),
            "strings use double quotes: \"text\"".into(),
        );
    }
    if offset >= text.trim_end().len().saturating_sub(1)
        && text.matches('{').count() > text.matches('}').count()
    {
        return (
            "syntax error: a `{` was not closed".into(),
            "the file ends here".into(),
            "add the missing `}` where the block ends".into(),
        );
    }
    (
        format!("syntax error: {msg}"),
        msg.to_string(),
        "fix the syntax; nothing else in this file was read".into(),
    )
}

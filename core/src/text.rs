//! Text a host wrote, made safe to print on an admin's terminal.
//!
//! A host controls its report names, sidecars and heartbeat. Printed raw, a
//! control sequence in them can retitle the terminal, erase lines, forge table
//! rows or reorder text (bidi overrides), so everything host-written goes through
//! [`display_safe`] before it reaches a terminal, and [`json_safe`] for JSON.

use std::borrow::Cow;

/// Whether `c` can move the cursor, start an escape sequence or reorder text:
/// C0 (tab and newline included: one value must stay on one line), DEL, C1,
/// bidi embeddings/overrides/isolates and marks, and the Unicode line and
/// paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1F
        | 0x7F..=0x9F
        | 0x061C
        | 0x200E | 0x200F
        | 0x2028..=0x202E
        | 0x2066..=0x2069)
}

/// `s` with every unsafe character written visibly: `\x1b` for C0, DEL and C1,
/// `\u{202e}` for the others. Backslashes are left alone, so escaping twice
/// changes nothing and plain text stays readable.
pub fn display_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// JSON text with DEL, C1 and the bidi and separator characters written as
/// `\uXXXX`. serde_json already escapes C0 but passes those through as UTF-8,
/// which some terminals still obey. Outside strings JSON is ASCII, so a
/// character-level rewrite only ever touches string contents.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_unsafe) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        // C0 can only be structural whitespace here (serde_json escaped the rest).
        if is_unsafe(c) && !matches!(c, '\n' | '\t' | '\r' | ' ') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let hostile = "a\x1b]0;owned\x07b\rc\x08d\u{9b}2Je\u{202e}f\u{2028}g\x7f\n\t";
        let safe = display_safe(hostile);
        assert!(!safe.chars().any(is_unsafe), "{safe:?}");
        assert_eq!(
            safe,
            "a\\x1b]0;owned\\x07b\\x0dc\\x08d\\x9b2Je\\u{202e}f\\u{2028}g\\x7f\\x0a\\x09"
        );
        assert_eq!(display_safe(&safe), safe, "escaping twice changes nothing");
        assert!(matches!(display_safe("web 💚 ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_meaning() {
        let v = serde_json::json!({"system": "x\u{9b}y\u{202e}z\x7f\x1b"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = json_safe(&text);
        assert!(!safe.chars().any(|c| is_unsafe(c) && c != '\n'), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}

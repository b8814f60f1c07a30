//! How a document becomes the one text that is embedded, and its checksum.
//!
//! Rules (documented in the README):
//! 1. Each of title, description and body is trimmed and its runs of whitespace (spaces,
//!    tabs, newlines) collapsed to one space. Empty parts are dropped.
//! 2. The parts are joined in the order title, description, body with "\n".
//! 3. Non-empty tags (trimmed, collapsed, empty ones dropped) are appended as a last line
//!    "tags: a, b, c".
//! 4. The result is cut to at most `max_chars` characters (on a character boundary).
//! 5. The checksum is the lowercase hex MD5 of the result's UTF-8 bytes. No Unicode
//!    normalisation is applied: texts that differ in code points are different texts.
use md5::{Digest, Md5};

fn squash(part: &str) -> String {
    part.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Combines a document's fields into one text; empty when the document has no text at all.
pub fn combine_text(
    title: Option<&str>,
    description: Option<&str>,
    body: Option<&str>,
    tags: &[String],
    max_chars: usize,
) -> String {
    let mut lines: Vec<String> = [title, description, body]
        .into_iter()
        .flatten()
        .map(squash)
        .filter(|p| !p.is_empty())
        .collect();
    let tags: Vec<String> = tags
        .iter()
        .map(|t| squash(t))
        .filter(|t| !t.is_empty())
        .collect();
    if !tags.is_empty() {
        lines.push(format!("tags: {}", tags.join(", ")));
    }
    let text = lines.join("\n");
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text,
    }
}

pub fn checksum(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_in_order_and_squashes_whitespace() {
        let t = combine_text(
            Some("  Hello\tworld "),
            None,
            Some("line one\n\n line two"),
            &["a ".into(), "".into(), "b".into()],
            1000,
        );
        assert_eq!(t, "Hello world\nline one line two\ntags: a, b");
    }

    #[test]
    fn empty_document_gives_empty_text() {
        assert_eq!(combine_text(Some("  "), Some(""), None, &[], 1000), "");
    }

    #[test]
    fn cuts_on_character_boundary() {
        assert_eq!(combine_text(Some("héllo"), None, None, &[], 2), "hé");
    }

    #[test]
    fn checksum_is_md5_hex() {
        // md5("hello") is a well-known constant.
        assert_eq!(checksum("hello"), "5d41402abc4b2a76b9719d911017c592");
    }
}

//! The codec's one error type: which field failed ([`DecodeError::path`]), how ([`ErrorKind`]) and why.

/// The class of a [`DecodeError`], for callers that map errors to their own codes (e.g. SQLSTATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The payload is longer than the allowed maximum.
    TooLarge,
    /// The text is not what the format allows: not JSON, not an object, a malformed timestamp,
    /// `__bigint` or `__buffer_b64` text.
    Syntax,
    /// A required field is absent (or `null`).
    Missing,
    /// A value has the wrong JSON type, or a sentinel object has the wrong shape.
    WrongType,
    /// A value is outside its allowed range.
    OutOfRange,
    /// A well-formed value that cannot be stored: NUL characters, sub-microsecond precision, leap seconds.
    Unsupported,
}

/// Why a payload (or a stored position) was refused.
///
/// Displays as `"{path}: {message}"`, or just `"{message}"` when `path` is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}", .path, if .path.is_empty() { "" } else { ": " }, .message)]
pub struct DecodeError {
    /// The failing field: `""` for the whole payload, `latitude`, `attributes.11`, `attributes.10.nested.0`.
    /// NUL characters of object keys are shown as `\u0000`.
    pub path: String,
    /// The class of the error.
    pub kind: ErrorKind,
    /// A human-readable reason, without the path.
    pub message: String,
}

impl DecodeError {
    /// An error about the value at the current position; the callers up the tree add the path.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { path: String::new(), kind, message: message.into() }
    }

    /// The same error, one level further up the tree: `segment` is the key or index that led to it.
    pub(crate) fn within(mut self, segment: &str) -> Self {
        let segment = segment.replace('\0', "\\u0000");
        self.path = if self.path.is_empty() { segment } else { format!("{segment}.{}", self.path) };
        self
    }
}

/// `text` quoted for an error message: escaped like a Rust string literal, cut after 40 characters.
pub(crate) fn quoted(text: &str) -> String {
    format!("{:?}", excerpt(text))
}

/// `text` cut after 40 characters (with `…` when cut), for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const LIMIT: usize = 40;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_path() {
        let e = DecodeError::new(ErrorKind::Syntax, "bad");
        assert_eq!(e.to_string(), "bad");
        let e = e.within("11").within("attributes");
        assert_eq!(e.path, "attributes.11");
        assert_eq!(e.to_string(), "attributes.11: bad");
    }

    #[test]
    fn nul_in_path_segments_is_escaped() {
        let e = DecodeError::new(ErrorKind::Unsupported, "x").within("a\0b");
        assert_eq!(e.path, "a\\u0000b");
    }

    #[test]
    fn quoted_cuts_long_text() {
        assert_eq!(quoted("yesterday"), "\"yesterday\"");
        let long = "é".repeat(100);
        let q = quoted(&long);
        assert_eq!(q.chars().count(), 40 + 3);
        assert!(q.ends_with("…\""));
        assert_eq!(excerpt("12.5"), "12.5");
        assert_eq!(quoted("a\0"), "\"a\\0\"");
    }
}

//! The crate's one error type. Every variant says what the job runner should do next: a permanent
//! error sends the job to the dead letters (retrying cannot change the bytes), a transient one may
//! be retried.

/// Why an image could not be decoded or processed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The bytes are not one of the formats this crate decodes (HEIC, AVIF, SVG, BMP, unknown …).
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// The header claims more pixels, width, height or bytes than the [`crate::Limits`] allow
    /// (pixel floods, decompression bombs, oversized uploads).
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The file ends before the image data does.
    #[error("truncated image: {0}")]
    Truncated(String),
    /// The bytes are damaged or malformed, or a decoder panicked on them.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The caller's request cannot be met (e.g. an empty width list, a watermark that is not an image).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Something failed that is not a property of the input (an encoder ran out of memory, an
    /// encoder panicked). Retrying may help.
    #[error("internal image processing failure: {0}")]
    Internal(String),
}

impl ImageError {
    /// True when retrying the same input cannot succeed: the job should go to the dead letters.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ImageError::Internal(_))
    }

    /// A short stable name for metrics and logs (`unsupported`, `too_large`, `truncated`, `corrupt`,
    /// `invalid_request`, `internal`).
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Unsupported(_) => "unsupported",
            ImageError::TooLarge(_) => "too_large",
            ImageError::Truncated(_) => "truncated",
            ImageError::Corrupt(_) => "corrupt",
            ImageError::InvalidRequest(_) => "invalid_request",
            ImageError::Internal(_) => "internal",
        }
    }

    /// Maps an `image` crate error met while decoding untrusted bytes.
    pub(crate) fn from_decode(err: image::ImageError) -> Self {
        use image::error::{ImageError as E, LimitErrorKind};
        match err {
            E::Limits(l) => match l.kind() {
                LimitErrorKind::InsufficientMemory => {
                    ImageError::TooLarge("decoding would exceed the memory limit".into())
                }
                _ => ImageError::TooLarge(l.to_string()),
            },
            E::Unsupported(u) => ImageError::Unsupported(u.to_string()),
            E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated(io.to_string()),
            E::Decoding(d) => {
                let msg = d.to_string();
                if looks_truncated(&msg) { ImageError::Truncated(msg) } else { ImageError::Corrupt(msg) }
            }
            other => ImageError::Corrupt(other.to_string()),
        }
    }
}

/// Decoders say "unexpected end of file" in several ways; they all mean truncation.
fn looks_truncated(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("unexpected eof")
        || m.contains("unexpected end")
        || m.contains("no more bytes")
        || m.contains("end of file")
        || m.contains("truncated")
}

/// Runs a decoder-side closure, turning a panic into a permanent [`ImageError::Corrupt`].
pub(crate) fn catch_decoder_panic<T>(what: &str, f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(ImageError::Corrupt(format!("{what} panicked: {}", panic_message(&payload)))),
    }
}

/// Runs an encoder-side closure, turning a panic into a transient [`ImageError::Internal`].
pub(crate) fn catch_encoder_panic<T>(what: &str, f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(ImageError::Internal(format!("{what} panicked: {}", panic_message(&payload)))),
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_panics_become_permanent_corrupt_errors() {
        let err =
            catch_decoder_panic("decoder", || -> Result<(), ImageError> { panic!("index out of bounds") }).unwrap_err();
        assert_eq!(err, ImageError::Corrupt("decoder panicked: index out of bounds".into()));
        assert!(err.is_permanent());
        let err = catch_encoder_panic("encoder", || -> Result<(), ImageError> { panic!("{}", 42) }).unwrap_err();
        assert!(matches!(err, ImageError::Internal(_)) && !err.is_permanent());
        assert_eq!(err.kind(), "internal");
    }
}

//! The inside layer's one error: which image, and why its contents cannot be
//! shown. Reading the image's bytes keeps the handle's error (and so its class:
//! a busy pool stays EAGAIN/503); everything else is the image's fault.

use std::fmt;

use crate::handle::{ErrorClass, HandleError};

/// Why an image's contents could not be read.
#[derive(Debug)]
pub struct InsideError {
    /// The image's path in the tree (`/ubuntu/amd64/ga-24.04/noble/.../squashfs`).
    pub image: String,
    /// What went wrong.
    pub reason: Reason,
}

/// What went wrong inside an image.
#[derive(Debug)]
pub enum Reason {
    /// Reading the image's bytes failed (database, disk cache).
    Read(HandleError),
    /// The bytes are not a valid image of its format: truncated or corrupt.
    Corrupt(String),
    /// A valid image that uses something this reader does not support.
    Unsupported(String),
}

impl InsideError {
    /// A corrupt-image error for `image`.
    pub fn corrupt(image: &str, why: impl Into<String>) -> InsideError {
        InsideError {
            image: image.to_string(),
            reason: Reason::Corrupt(why.into()),
        }
    }

    /// An unsupported-feature error for `image`.
    pub fn unsupported(image: &str, why: impl Into<String>) -> InsideError {
        InsideError {
            image: image.to_string(),
            reason: Reason::Unsupported(why.into()),
        }
    }

    /// What a front end should do: the handle's class for read errors; a
    /// corrupt or unsupported image is `Broken` (EIO, 500).
    pub fn class(&self) -> ErrorClass {
        match &self.reason {
            Reason::Read(e) => e.class(),
            Reason::Corrupt(_) | Reason::Unsupported(_) => ErrorClass::Broken,
        }
    }

    /// The reason without the image (for logs that already name it).
    pub fn why(&self) -> String {
        match &self.reason {
            Reason::Read(e) => e.reason(),
            Reason::Corrupt(w) => format!("corrupt or truncated image: {w}"),
            Reason::Unsupported(w) => format!("unsupported: {w}"),
        }
    }
}

impl fmt::Display for InsideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inside {}: {}", self.image, self.why())
    }
}

impl std::error::Error for InsideError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Reason::Read(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HandleError> for InsideError {
    fn from(e: HandleError) -> Self {
        InsideError {
            image: e.path.clone(),
            reason: Reason::Read(e),
        }
    }
}

//! One error type for everything the library does. Each value prints as one line for people,
//! naming the file, label or device and the problem; its fields say the same to a program.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong. Printed with `Display` it is the one line `maple-classify` shows.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be opened, read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A model, prompts or checkpoint file whose content maple cannot use (malformed container,
    /// missing tensor, wrong shape, prompts that do not fit the model).
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: maple_core::Error,
    },
    /// A PyTorch checkpoint that asks for something maple never does (a pickle global outside
    /// the allowlists, such as `os.system`). Nothing in it was run.
    Refused {
        /// The file.
        path: PathBuf,
        /// What it asked for.
        source: maple_core::Error,
    },
    /// No usable model where one was asked for (missing directory or weights, hub look-up).
    Model(String),
    /// Labels, the prompt template or the tokenizer.
    Text(maple_text::TextError),
    /// An image that cannot be decoded or used; `image` names it (a path, or `<bytes>` /
    /// `<pixels>` for images given in memory).
    Image {
        /// The image.
        image: String,
        /// Why.
        message: String,
    },
    /// The GPU could not be opened or failed while running (after `Device::Gpu`; under
    /// `Device::Auto` a failing GPU is replaced by the CPU instead, see
    /// [`crate::Classifier::device`]).
    Device(String),
    /// A setting that cannot work (`Precision::F16` on the CPU, no labels, …).
    Invalid(String),
    /// The engine refused its input (a shape or size that does not fit the model).
    Compute(maple_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The core's verdict on the content of `path`.
    pub fn core(path: &Path, e: maple_core::Error) -> Error {
        match e {
            maple_core::Error::Refused(_) => Error::Refused {
                path: path.to_path_buf(),
                source: e,
            },
            e => Error::Format {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    pub(crate) fn image(image: &Path, message: impl Into<String>) -> Error {
        Error::Image {
            image: path_display(image),
            message: message.into(),
        }
    }
}

/// A path as maple prints it (in errors, result records and reports). A UTF-8 path without a
/// backslash or a control character prints as it is. Any other path (on Unix, where names are
/// bytes) prints with each backslash doubled and each byte that is not UTF-8, and each control
/// character (newline, tab, escape, …), written `\xHH`, so two different names never print
/// the same and a name cannot break a line of output or drive the terminal: `caf\xE9.jpg` is
/// the Latin-1 name, `a\\b.jpg` the name `a\b.jpg`, `a\x0Ab.jpg` a name with a newline.
/// (On Windows, where `\` separates folders, only control characters are escaped.)
pub fn path_display(path: &Path) -> String {
    /// Appends `valid` with each control character as `\xHH` (they are all below 0x100), and
    /// with each backslash doubled when `backslash`.
    fn escaped(valid: &str, backslash: bool, out: &mut String) {
        for c in valid.chars() {
            match c {
                '\\' if backslash => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
                c => out.push(c),
            }
        }
    }
    let plain = |s: &str, backslash: bool| {
        !s.chars()
            .any(|c| (backslash && c == '\\') || c.is_control())
    };
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if let Ok(s) = std::str::from_utf8(bytes) {
            if plain(s, true) {
                return s.to_string();
            }
        }
        let mut out = String::with_capacity(bytes.len() + 8);
        for chunk in bytes.utf8_chunks() {
            escaped(chunk.valid(), true, &mut out);
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        let s = path.display().to_string();
        if plain(&s, false) {
            return s;
        }
        let mut out = String::with_capacity(s.len() + 8);
        escaped(&s, false, &mut out);
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => {
                let why = match source.kind() {
                    std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => source.to_string(),
                };
                write!(f, "{}: {why}", path_display(path))
            }
            Error::Format { path, source } => write!(f, "{}: {source}", path_display(path)),
            Error::Refused { path, source } => {
                write!(f, "refusing to load {}: {source}", path_display(path))
            }
            Error::Image { image, message } => write!(f, "{image}: {message}"),
            Error::Text(e) => e.fmt(f),
            Error::Model(m) | Error::Device(m) | Error::Invalid(m) => f.write_str(m),
            Error::Compute(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Format { source, .. } | Error::Refused { source, .. } => Some(source),
            Error::Text(e) => Some(e),
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }
}

impl From<maple_text::TextError> for Error {
    fn from(e: maple_text::TextError) -> Error {
        Error::Text(e)
    }
}

#[cfg(test)]
mod tests {
    use super::path_display;
    use std::path::Path;

    #[cfg(unix)]
    #[test]
    fn paths_print_without_two_names_looking_alike() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let p = |b: &[u8]| path_display(Path::new(OsStr::from_bytes(b)));
        assert_eq!(p(b"photos/chat.jpg"), "photos/chat.jpg");
        assert_eq!(p("photos/été.jpg".as_bytes()), "photos/été.jpg");
        assert_eq!(p(b"caf\xe9.jpg"), "caf\\xE9.jpg");
        assert_eq!(p(b"caf\\xE9.jpg"), "caf\\\\xE9.jpg");
        assert_eq!(p(b"a\xff\xfe\\b"), "a\\xFF\\xFE\\\\b");
        assert_ne!(p(b"x\xe9"), p(b"x\xc3"));
        // Control characters (issue 31, N16): a newline, a carriage return, an escape
        // sequence and DEL are written out, so a name stays on one line and cannot colour
        // or move the terminal's cursor.
        assert_eq!(p(b"a\nb.jpg"), "a\\x0Ab.jpg");
        assert_eq!(p(b"a\r\x1b[31mb\x7f.jpg"), "a\\x0D\\x1B[31mb\\x7F.jpg");
        assert_eq!(p("tab\u{9}\u{85}.jpg".as_bytes()), "tab\\x09\\x85.jpg");
        assert_ne!(p(b"a\nb"), p(b"a\\x0Ab"));
    }
}

//! Errors as values: every failure on bad data is one of these, never a panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// What went wrong, phrased so that it can be printed after the name of the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// `config.json` (or a config built in code) is missing a field or has an unusable value.
    Config(String),
    /// The safetensors container itself is malformed (header, offsets, lengths).
    Safetensors(String),
    /// A tensor the model needs is not in the file.
    MissingTensor(String),
    /// A tensor has the wrong shape for the configured model.
    Shape {
        /// The tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we do not read.
    Dtype {
        /// The tensor.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// MaPLe prompt tensors that do not fit the model (n_ctx, width, depth).
    Prompts(String),
    /// A PyTorch checkpoint that is malformed (zip, pickle, storages).
    Checkpoint(String),
    /// A checkpoint that asks for something we never do (a global outside the allowlists).
    Refused(String),
    /// Input data (pixels, token ids, batch) that does not fit the model or the workspace.
    Input(String),
}

/// `Result` with [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

fn dims(d: &[usize]) -> String {
    let mut s = String::from("[");
    for (i, v) in d.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&alloc::format!("{v}"));
    }
    s.push(']');
    s
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "bad config: {m}"),
            Error::Safetensors(m) => write!(f, "not a valid safetensors file: {m}"),
            Error::MissingTensor(n) => write!(f, "missing tensor `{n}`"),
            Error::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {} but the model needs {}",
                dims(found),
                dims(expected)
            ),
            Error::Dtype { name, dtype } => write!(
                f,
                "tensor `{name}` is stored as {dtype}; only F32, F16 and BF16 are supported"
            ),
            Error::Prompts(m) => write!(f, "prompts do not fit the model: {m}"),
            Error::Input(m) => write!(f, "bad input: {m}"),
            Error::Checkpoint(m) => write!(f, "not a readable PyTorch checkpoint: {m}"),
            Error::Refused(m) => f.write_str(m),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

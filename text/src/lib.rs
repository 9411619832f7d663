//! CLIP's text side for maple, shared by the desktop library (`maple`) and the browser build
//! (`maple-web`): OpenAI's text cleaning ([`clean`]), the BPE tokenizer ([`ClipTokenizer`]),
//! label lists ([`LabelSet`]) and MaPLe's prompt rules ([`prompt`], [`tokenize_labels`]).
//!
//! Nothing here reads files: callers hand in text and bytes.
#![warn(missing_docs)]

pub mod clean;
mod clean_tables;
pub mod labels;
pub mod tokenizer;

pub use labels::{prompt, tokenize_labels, Label, LabelSet};
pub use tokenizer::{ClipTokenizer, BUILTIN_TOKENIZER_JSON};

use std::fmt;

/// A problem with labels, the template or the tokenizer, as one line for people: it names where
/// the text came from (a file, `--labels`, …) and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct TextError(pub String);

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TextError {}

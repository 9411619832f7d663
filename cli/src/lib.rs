//! maple-cli: everything around the core that touches files: model directories, prompt files,
//! images, label lists, the tokenizer, synthetic model files.

pub mod cache;
pub mod classify;
pub mod clean;
mod clean_tables;
pub mod convert;
pub mod hub;
pub mod imageio;
pub mod inputs;
pub mod labels;
pub mod loader;
pub mod output;
pub mod report;
pub mod synth;
pub mod tokenizer;

use std::fmt;
use std::path::Path;

/// A one-line error for people: it names the file (or label) and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError(pub String);

impl CliError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        CliError(format!("{}: {why}", path.display()))
    }

    pub fn core(path: &Path, e: maple_core::Error) -> Self {
        match e {
            maple_core::Error::Refused(m) => {
                CliError(format!("refusing to load {}: {m}", path.display()))
            }
            e => CliError(format!("{}: {e}", path.display())),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

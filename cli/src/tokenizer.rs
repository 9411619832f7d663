//! CLIP's tokenizer: OpenAI's text cleaning, then BPE through HF `tokenizers` with the
//! `tokenizer.json` built by `tools/tokenizer/build_tokenizer_json.py` (embedded in the binary).

use crate::clean::clean;
use crate::CliError;
use std::path::Path;

/// The `tokenizer.json` shipped with maple (CLIP's 49408-token BPE).
pub static BUILTIN_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer.json");

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
}

impl ClipTokenizer {
    pub fn builtin() -> Result<Self, CliError> {
        Self::from_bytes(BUILTIN_TOKENIZER_JSON, "the built-in tokenizer.json")
    }

    pub fn from_file(path: &Path) -> Result<Self, CliError> {
        let bytes = std::fs::read(path).map_err(|e| CliError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, CliError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| CliError(format!("{what}: not a usable tokenizer.json ({e})")))?;
        Ok(ClipTokenizer { inner })
    }

    /// `[SOT] + BPE(clean(text)) + [EOT]` — the ids OpenAI's `SimpleTokenizer` gives, unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CliError> {
        let enc = self
            .inner
            .encode(clean(text).as_str(), true)
            .map_err(|e| CliError(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

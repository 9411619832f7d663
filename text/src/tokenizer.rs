//! CLIP's tokenizer: OpenAI's text cleaning, then BPE through HF `tokenizers` with the
//! `tokenizer.json` built by `tools/tokenizer/build_tokenizer_json.py` (embedded in the binary).

use crate::clean::clean;
use crate::TextError;

/// The `tokenizer.json` shipped with maple (CLIP's 49408-token BPE).
pub static BUILTIN_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer.json");

/// CLIP's tokenizer: `[SOT] + BPE(clean(text)) + [EOT]`, as OpenAI's `SimpleTokenizer`.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
}

impl ClipTokenizer {
    /// The tokenizer built into maple (the one every CLIP ViT-B/16 checkpoint uses).
    pub fn builtin() -> Result<Self, TextError> {
        Self::from_bytes(BUILTIN_TOKENIZER_JSON, "the built-in tokenizer.json")
    }

    /// A `tokenizer.json` given as bytes; `what` names it in errors (a path, say).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, TextError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| TextError(format!("{what}: not a usable tokenizer.json ({e})")))?;
        Ok(ClipTokenizer { inner })
    }

    /// `[SOT] + BPE(clean(text)) + [EOT]` — the ids OpenAI's `SimpleTokenizer` gives, unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(clean(text).as_str(), true)
            .map_err(|e| TextError(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

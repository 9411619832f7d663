//! `maple-convert`: any supported weight file → safetensors with HF / MaPLe names.

use crate::loader::with_tensors;
use crate::outfile::OutputFile;
use crate::Error;
use maple_core::checkpoint::openai::OpenAiNames;
use maple_core::maple;
use maple_core::safetensors::{serialize, Dtype, OwnedTensor, TensorView};
use maple_core::TensorSource;
use std::path::Path;

/// What the input held.
#[derive(Debug, PartialEq)]
pub enum Kind {
    /// MaPLe's `prompt_learner.*` tensors (token_prefix/suffix and the frozen CLIP dropped).
    MaplePrompts,
    /// A CLIP backbone (OpenAI names converted to HF names).
    Clip,
}

fn convert_dtype(t: &TensorView, to: Option<Dtype>) -> (Dtype, Vec<u8>) {
    let Some(to) =
        to.filter(|&d| d != t.dtype && matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16))
    else {
        return (t.dtype, t.data.to_vec());
    };
    let vals = t.to_f32("").unwrap_or_default();
    let mut out = Vec::with_capacity(vals.len() * to.size());
    for v in vals {
        match to {
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    (to, out)
}

/// Converts `input` into `output` (written atomically; nothing is written on error). The
/// destination is checked before the input is read: one that cannot be written fails first.
pub fn convert(input: &Path, output: &Path, dtype: Option<Dtype>) -> Result<(Kind, usize), Error> {
    OutputFile::check(output)?;
    if crate::outfile::same_file(input, output) {
        return Err(Error::Invalid(format!(
            "{}: is the input file itself; give another output name (the input is read while \
             the output is written, and would be replaced)",
            crate::path_display(output)
        )));
    }
    let (kind, n, bytes) = convert_to_bytes(input, dtype)?;
    let mut out = OutputFile::create(output)?;
    out.write_bytes(&bytes)?;
    out.commit()?;
    Ok((kind, n))
}

/// [`convert`], returning the safetensors file's bytes (and what it holds, and how many
/// tensors) instead of writing them.
pub fn convert_to_bytes(
    input: &Path,
    dtype: Option<Dtype>,
) -> Result<(Kind, usize, Vec<u8>), Error> {
    let (kind, tensors, meta) = with_tensors(input, false, |raw: &dyn TensorSource| {
        // MaPLe prompts are looked for first: MaPLe checkpoints also hold a frozen CLIP copy.
        let adapted = OpenAiNames::detect(raw);
        let has = |n: &str| raw.tensor(n).is_some();
        let src: &dyn TensorSource = match &adapted {
            Some(a) if maple::key_prefix(&has).is_none() => a,
            _ => raw,
        };
        let names = src.names();
        let maple_prefix = maple::key_prefix(&|n| names.contains(&n));
        let mut out = Vec::new();
        let mut meta = Vec::new();
        let kind = match maple_prefix {
            Some(p) => {
                for n in &names {
                    let Some(rest) = n.strip_prefix(p) else {
                        continue;
                    };
                    if maple::is_learned(rest) {
                        let t = src
                            .tensor(n)
                            .ok_or_else(|| maple_core::Error::MissingTensor((*n).into()))?;
                        let (d, data) = convert_dtype(&t, dtype);
                        out.push(OwnedTensor {
                            name: format!("{}{rest}", maple::KEY_PREFIX),
                            dtype: d,
                            shape: t.shape.clone(),
                            data,
                        });
                    }
                }
                let n_ctx = src.tensor(&format!("{p}ctx")).map_or(0, |t| t.shape[0]);
                let depth = 1 + names
                    .iter()
                    .filter(|n| n.starts_with(&format!("{p}compound_prompts_text.")))
                    .count();
                meta.push(("n_ctx".to_string(), n_ctx.to_string()));
                meta.push(("prompt_depth".to_string(), depth.to_string()));
                Kind::MaplePrompts
            }
            None => {
                for n in &names {
                    let t = src
                        .tensor(n)
                        .ok_or_else(|| maple_core::Error::MissingTensor((*n).into()))?;
                    let (d, data) = convert_dtype(&t, dtype);
                    out.push(OwnedTensor {
                        name: (*n).to_string(),
                        dtype: d,
                        shape: t.shape.clone(),
                        data,
                    });
                }
                Kind::Clip
            }
        };
        Ok((kind, out, meta))
    })?;
    if tensors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no tensors to convert",
            input.display()
        )));
    }
    let meta: Vec<(&str, &str)> = meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("format", "pt")])
        .collect();
    Ok((kind, tensors.len(), serialize(&tensors, &meta)))
}

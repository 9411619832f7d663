//! `maple-convert`: any supported weight file → safetensors with HF / MaPLe names.

use crate::loader::with_tensors;
use crate::outfile::OutputFile;
use crate::Error;
use maple_core::checkpoint::openai::OpenAiNames;
use maple_core::maple;
use maple_core::safetensors::{serialize, Dtype, OwnedTensor, TensorView};
use maple_core::{Method, TensorSource};
use std::path::Path;

/// What the input held.
#[derive(Debug, PartialEq)]
pub enum Kind {
    /// A prompt method's learned tensors (docs/prompts.md §7), under the names its trainer
    /// saves them with (MaPLe's always with `prompt_learner.`); token buffers and any frozen
    /// CLIP copy dropped.
    Prompts(Method),
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
        // Prompts are looked for first: IVLP, VPT and MaPLe checkpoints also hold a frozen
        // CLIP copy.
        if let Some(method) = Method::detect(raw) {
            return prompt_tensors(raw, method, dtype);
        }
        match OpenAiNames::detect(raw) {
            Some(a) => clip_tensors(&a, dtype),
            None => clip_tensors(raw, dtype),
        }
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

type Converted = (Kind, Vec<OwnedTensor>, Vec<(String, String)>);

/// What `method` learned, from a checkpoint of it.
fn prompt_tensors(
    src: &dyn TensorSource,
    method: Method,
    dtype: Option<Dtype>,
) -> maple_core::Result<Converted> {
    let names = src.names();
    let module = maple_core::prompts::module_prefix(&names);
    let mut out = Vec::new();
    for n in &names {
        let bare = n.strip_prefix(module).unwrap_or(n);
        if !method.is_learned(bare) {
            continue;
        }
        let t = src
            .tensor(n)
            .ok_or_else(|| maple_core::Error::MissingTensor((*n).into()))?;
        let (d, data) = convert_dtype(&t, dtype);
        let name = match method {
            Method::Maple => format!(
                "{}{}",
                maple::KEY_PREFIX,
                bare.strip_prefix(maple::KEY_PREFIX).unwrap_or(bare)
            ),
            _ => bare.to_string(),
        };
        out.push(OwnedTensor {
            name,
            dtype: d,
            shape: t.shape.clone(),
            data,
        });
    }
    let mut meta = vec![("method".to_string(), method.name().to_string())];
    if method == Method::Maple {
        let ctx = format!("{}ctx", maple::KEY_PREFIX);
        let n_ctx = out.iter().find(|t| t.name == ctx).map_or(0, |t| t.shape[0]);
        let deep = format!("{}compound_prompts_text.", maple::KEY_PREFIX);
        let depth = 1 + out.iter().filter(|t| t.name.starts_with(&deep)).count();
        meta.push(("n_ctx".to_string(), n_ctx.to_string()));
        meta.push(("prompt_depth".to_string(), depth.to_string()));
    }
    Ok((Kind::Prompts(method), out, meta))
}

/// Every tensor of a CLIP checkpoint (OpenAI's names already adapted to HF's).
fn clip_tensors(src: &dyn TensorSource, dtype: Option<Dtype>) -> maple_core::Result<Converted> {
    let mut out = Vec::new();
    for n in src.names() {
        let t = src
            .tensor(n)
            .ok_or_else(|| maple_core::Error::MissingTensor(n.into()))?;
        let (d, data) = convert_dtype(&t, dtype);
        out.push(OwnedTensor {
            name: n.to_string(),
            dtype: d,
            shape: t.shape.clone(),
            data,
        });
    }
    Ok((Kind::Clip, out, Vec::new()))
}

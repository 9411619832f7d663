//! PyTorch checkpoints (`torch.save` zip archives: MaPLe's `model.pth.tar-N`, HF
//! `pytorch_model.bin`, OpenAI state dicts), read without running any code (docs/model.md §12.2).

pub mod openai;
pub mod pickle;
pub mod zip;

use crate::error::{Error, Result};
use crate::safetensors::{Dtype, TensorSource, TensorView};
use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use pickle::{unpickle, TensorRef, Value};

/// Whether bytes look like a `torch.save` zip archive (as opposed to safetensors).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

struct Tensor<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// The tensors of a checkpoint's state dict (`checkpoint["state_dict"]` for Dassl files, the
/// top-level dict otherwise), with every storage reference checked against the archive.
pub struct TorchCheckpoint<'a> {
    tensors: Vec<Tensor<'a>>,
    /// `epoch` of a Dassl checkpoint, if present.
    pub epoch: Option<i64>,
}

impl<'a> TorchCheckpoint<'a> {
    /// Opens a checkpoint held in memory (a `torch.save` zip); nothing is decoded until asked.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let entries = zip::read_zip(bytes)?;
        let pkl: Vec<&zip::Entry> = entries
            .iter()
            .filter(|e| e.name.ends_with("data.pkl"))
            .collect();
        let pkl = match pkl.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::Checkpoint(
                    "archive has no data.pkl (not a torch.save file)".into(),
                ))
            }
            _ => {
                return Err(Error::Checkpoint(
                    "archive has more than one data.pkl".into(),
                ))
            }
        };
        let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
        if let Some(bo) = entries
            .iter()
            .find(|e| e.name == format!("{prefix}byteorder"))
        {
            if bo.data != b"little" {
                return Err(Error::Checkpoint(
                    "big-endian checkpoints are not supported".into(),
                ));
            }
        }
        let root = unpickle(pkl.data)?;
        let epoch = match root.get("epoch") {
            Some(Value::Int(e)) => Some(*e),
            _ => None,
        };
        let dict = match root.get("state_dict") {
            Some(d @ Value::Dict(..)) => d,
            _ => &root,
        };
        let items = match dict {
            Value::Dict(items, _) => items,
            _ => {
                return Err(Error::Checkpoint(
                    "the pickle does not hold a state dict".into(),
                ))
            }
        };
        let mut tensors = Vec::new();
        for (k, v) in items {
            let (Some(name), Value::Tensor(t)) = (k.as_str(), v) else {
                continue;
            };
            let storage_name = format!("{prefix}data/{}", t.storage.key);
            let storage = entries
                .iter()
                .find(|e| e.name == storage_name)
                .ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "tensor `{name}`: storage `{}` is missing from the archive",
                        t.storage.key
                    ))
                })?;
            tensors.push(Tensor {
                name: String::from(name),
                dtype: t.storage.dtype,
                shape: t.size.clone(),
                data: view(name, t, storage.data)?,
            });
        }
        Ok(TorchCheckpoint { tensors, epoch })
    }
}

/// The tensor's bytes in row-major order: a borrowed slice when contiguous, else gathered.
fn view<'a>(name: &str, t: &TensorRef, storage: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    let es = t.storage.dtype.size();
    let bad = |m: &str| Error::Checkpoint(format!("tensor `{name}`: {m}"));
    let have = storage.len() / es;
    if have < t.storage.numel {
        return Err(bad(&format!(
            "its storage holds {} bytes but declares {} elements",
            storage.len(),
            t.storage.numel
        )));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("size overflows"))?;
    if numel == 0 {
        return Ok(Cow::Borrowed(&[]));
    }
    // Last element reached: offset + Σ (size_i − 1)·stride_i.
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad("offset overflows"))?;
    }
    if last >= t.storage.numel {
        return Err(bad(&format!(
            "offset {} with size {:?} and stride {:?} reaches past the end of its {}-element storage",
            t.offset, t.size, t.stride, t.storage.numel
        )));
    }
    let mut contiguous = true;
    let mut expect = 1;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    if contiguous {
        return Ok(Cow::Borrowed(
            &storage[t.offset * es..(t.offset + numel) * es],
        ));
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = alloc::vec![0usize; t.size.len()];
    for _ in 0..numel {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < t.size[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

impl TensorSource for TorchCheckpoint<'_> {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| TensorView {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: Cow::Borrowed(&t.data),
            })
    }
    fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }
}

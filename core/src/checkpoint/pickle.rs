//! A pickle interpreter that only builds data. It understands the opcodes of protocols 2–5 that
//! state dicts use and rebuilds tensors from `torch._utils` calls, but it never imports or calls
//! anything: every global is looked up in two allowlists (tensor rebuilding, known-inert classes
//! that become placeholders) and anything else is refused by name.
//!
//! Memo entries are snapshots (values, not shared references), so no value can contain itself;
//! nesting depth and the total number of values built are bounded.

use crate::error::{Error, Result};
use crate::safetensors::Dtype;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Deepest nesting of containers the interpreter accepts before refusing the file.
pub const MAX_DEPTH: u32 = 64;
const MAX_NODES: usize = 20_000_000;

/// What a global is allowed to be.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalKind {
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `collections.OrderedDict`.
    OrderedDict,
    /// A `torch.*Storage` class, with the dtype it holds.
    StorageType(Dtype),
    /// Known to be harmless to represent as a placeholder (optimizers, schedulers, defaultdict…).
    Inert,
}

/// A global the pickle named and the allowlist accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Module path, e.g. `torch._utils`.
    pub module: String,
    /// Name inside the module.
    pub name: String,
    /// What maple does with it.
    pub kind: GlobalKind,
}

/// A tensor storage: a `data/{key}` member of the zip.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: Dtype,
    /// Name of the zip member holding the bytes.
    pub key: String,
    /// Elements in the storage.
    pub numel: usize,
}

/// A tensor as a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Where the elements live.
    pub storage: StorageRef,
    /// First element, in elements from the storage start.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A value on the interpreter's stack (only what checkpoints use).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// Containers carry their nesting depth.
    List(Vec<Value>, u32),
    /// A tuple, with its nesting depth.
    Tuple(Vec<Value>, u32),
    /// A dict in insertion order, with its nesting depth.
    Dict(Vec<(Value, Value)>, u32),
    /// An allowlisted global.
    Global(Global),
    /// An instance of an inert class: a placeholder, never constructed.
    Object(String),
    /// A storage reference (from a persistent id).
    Storage(StorageRef),
    /// A rebuilt tensor.
    Tensor(TensorRef),
    /// The MARK opcode's stack marker.
    Mark,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::List(_, d) | Value::Tuple(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
    fn nodes(&self) -> usize {
        match self {
            Value::List(v, _) | Value::Tuple(v, _) => 1 + v.iter().map(Value::nodes).sum::<usize>(),
            Value::Dict(v, _) => 1 + v.iter().map(|(k, x)| k.nodes() + x.nodes()).sum::<usize>(),
            _ => 1,
        }
    }
    /// The string, if this is a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value under a string key, if this is a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items, _) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

fn refuse(module: &str, name: &str) -> Error {
    Error::Refused(format!("pickle references {module}.{name}"))
}

/// Python 2 module names that protocol-2 pickles use, read as Python 3 reads them
/// (`fix_imports`), so refusals name what would actually run.
fn py3_module(m: &str) -> &str {
    match m {
        "__builtin__" => "builtins",
        "commands" => "subprocess",
        "copy_reg" => "copyreg",
        _ => m,
    }
}

fn classify(module: &str, name: &str) -> Result<GlobalKind> {
    let module = py3_module(module);
    let storage = |d| Ok(GlobalKind::StorageType(d));
    Ok(match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => GlobalKind::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => GlobalKind::RebuildParameter,
        ("collections", "OrderedDict") => GlobalKind::OrderedDict,
        ("torch", "FloatStorage") => return storage(Dtype::F32),
        ("torch", "HalfStorage") => return storage(Dtype::F16),
        ("torch", "BFloat16Storage") => return storage(Dtype::BF16),
        ("torch", "DoubleStorage") => return storage(Dtype::Other("F64")),
        ("torch", "LongStorage") => return storage(Dtype::Other("I64")),
        ("torch", "IntStorage") => return storage(Dtype::Other("I32")),
        ("torch", "ShortStorage") => return storage(Dtype::Other("I16")),
        ("torch", "CharStorage") => return storage(Dtype::Other("I8")),
        ("torch", "ByteStorage") => return storage(Dtype::Other("U8")),
        ("torch", "BoolStorage") => return storage(Dtype::Other("BOOL")),
        // Known-inert: what Dassl checkpoints pickle besides tensors (optimizer and scheduler
        // objects, a defaultdict and its factory). They become placeholders.
        ("collections", "defaultdict")
        | ("builtins", "dict" | "set" | "list" | "object")
        | ("copyreg", "_reconstructor")
        | ("torch", "device") => GlobalKind::Inert,
        (m, _) if m == "torch.optim" || m.starts_with("torch.optim.") => GlobalKind::Inert,
        (m, _) if m == "dassl.optim.lr_scheduler" || m == "dassl.optim.optimizer" => {
            GlobalKind::Inert
        }
        _ => return Err(refuse(module, name)),
    })
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "pickle wants {n} bytes at offset {} but only {} remain",
                    self.p,
                    self.b.len() - self.p
                ))
            })?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }
    fn u64(&mut self) -> Result<usize> {
        let s = self.take(8)?;
        usize::try_from(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
            .map_err(|_| Error::Checkpoint("pickle length does not fit in memory".into()))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.b[self.p..];
        let n = rest
            .iter()
            .take(256)
            .position(|&c| c == b'\n')
            .ok_or_else(|| Error::Checkpoint("pickle text argument is not terminated".into()))?;
        self.p += n + 1;
        core::str::from_utf8(&rest[..n])
            .map_err(|_| Error::Checkpoint("pickle text is not UTF-8".into()))
    }
}

fn utf8(b: &[u8]) -> Result<String> {
    core::str::from_utf8(b)
        .map(ToString::to_string)
        .map_err(|_| Error::Checkpoint("pickle string is not UTF-8".into()))
}

fn malformed(what: &str) -> Error {
    Error::Checkpoint(format!("malformed pickle: {what}"))
}

/// Runs a pickle and returns the value it builds.
pub fn unpickle(bytes: &[u8]) -> Result<Value> {
    let mut r = Reader { b: bytes, p: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: Vec<Option<Value>> = Vec::new();
    let mut budget = MAX_NODES;
    let spend = |v: &Value, budget: &mut usize| -> Result<()> {
        *budget = budget
            .checked_sub(v.nodes())
            .ok_or_else(|| Error::Checkpoint("pickle builds too many values".into()))?;
        Ok(())
    };
    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| malformed("stack underflow"))?
        };
    }
    loop {
        let at = r.p;
        let op = r.u8()?;
        match op {
            0x80 => {
                let v = r.u8()?; // PROTO
                if v > 5 {
                    return Err(malformed("protocol newer than 5"));
                }
            }
            0x95 => {
                r.take(8)?; // FRAME: a hint only
            }
            b'.' => {
                let v = pop!();
                return Ok(v);
            }
            b'(' => {
                if marks.len() >= 4096 {
                    return Err(malformed("too many nested marks"));
                }
                marks.push(stack.len());
            }
            b'}' => stack.push(Value::Dict(Vec::new(), 1)),
            b']' => stack.push(Value::List(Vec::new(), 1)),
            b')' => stack.push(Value::Tuple(Vec::new(), 1)),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let s = r.take(4)?;
                stack.push(Value::Int(
                    i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64
                ));
            }
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    r.u8()? as usize
                } else {
                    r.u32()?
                };
                if n > 8 {
                    return Err(malformed("integer wider than 64 bits"));
                }
                let s = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &byte) in s.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'I' => {
                let l = r.line()?;
                stack.push(match l {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(l.parse().map_err(|_| malformed("bad INT"))?),
                });
            }
            b'G' => {
                let s = r.take(8)?;
                stack.push(Value::Float(f64::from_be_bytes(
                    s.try_into().unwrap_or([0; 8]),
                )));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()?,
                    0x8c => r.u8()? as usize,
                    _ => r.u64()?,
                };
                let s = r.take(n)?;
                stack.push(Value::Str(utf8(s)?));
            }
            b'T' | b'U' => {
                let n = if op == b'T' {
                    r.u32()?
                } else {
                    r.u8()? as usize
                };
                let s = r.take(n)?;
                stack.push(Value::Str(s.iter().map(|&c| c as char).collect()));
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => r.u32()?,
                    b'C' => r.u8()? as usize,
                    _ => r.u64()?,
                };
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b't' | 0x85 | 0x86 | 0x87 => {
                let items: Vec<Value> = match op {
                    b't' => {
                        let m = marks.pop().ok_or_else(|| malformed("TUPLE without MARK"))?;
                        if m > stack.len() {
                            return Err(malformed("mark past the stack"));
                        }
                        stack.split_off(m)
                    }
                    _ => {
                        let n = (op - 0x84) as usize;
                        if stack.len() < n {
                            return Err(malformed("stack underflow"));
                        }
                        stack.split_off(stack.len() - n)
                    }
                };
                let d = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
                if d > MAX_DEPTH {
                    return Err(malformed("values nested too deeply"));
                }
                stack.push(Value::Tuple(items, d));
            }
            b'a' | b'e' | b's' | b'u' | 0x90 => {
                let items: Vec<Value> = if op == b'a' || op == b's' {
                    let n = if op == b'a' { 1 } else { 2 };
                    if stack.len() < n + 1 {
                        return Err(malformed("stack underflow"));
                    }
                    stack.split_off(stack.len() - n)
                } else {
                    let m = marks.pop().ok_or_else(|| malformed("missing MARK"))?;
                    if m == 0 || m > stack.len() {
                        return Err(malformed("mark past the stack"));
                    }
                    stack.split_off(m)
                };
                let child = items.iter().map(Value::depth).max().unwrap_or(0);
                let top = stack
                    .last_mut()
                    .ok_or_else(|| malformed("stack underflow"))?;
                let bump = |d: &mut u32| -> Result<()> {
                    *d = (*d).max(child + 1);
                    if *d > MAX_DEPTH {
                        return Err(malformed("values nested too deeply"));
                    }
                    Ok(())
                };
                match top {
                    Value::List(v, d) if op == b'a' || op == b'e' => {
                        bump(d)?;
                        v.extend(items);
                    }
                    Value::Dict(v, d) if op == b's' || op == b'u' => {
                        if !items.len().is_multiple_of(2) {
                            return Err(malformed("odd number of dict items"));
                        }
                        bump(d)?;
                        let mut it = items.into_iter();
                        while let (Some(k), Some(x)) = (it.next(), it.next()) {
                            match v.iter_mut().find(|(kk, _)| *kk == k) {
                                Some(slot) => slot.1 = x,
                                None => v.push((k, x)),
                            }
                        }
                    }
                    // Items added to a placeholder (a defaultdict, a set) are dropped.
                    Value::Object(_) => {}
                    _ => {
                        return Err(malformed(
                            "append/setitem on a value that is not a container",
                        ))
                    }
                }
            }
            0x8f => stack.push(Value::Object("set".into())), // EMPTY_SET
            0x91 => {
                // FROZENSET
                let m = marks.pop().ok_or_else(|| malformed("missing MARK"))?;
                if m > stack.len() {
                    return Err(malformed("mark past the stack"));
                }
                stack.truncate(m);
                stack.push(Value::Object("frozenset".into()));
            }
            b'q' | b'r' | 0x94 | b'p' => {
                let idx = match op {
                    b'q' => r.u8()? as usize,
                    b'r' => r.u32()?,
                    0x94 => memo.len(),
                    _ => r.line()?.parse().map_err(|_| malformed("bad PUT"))?,
                };
                if idx > memo.len() + 1_000_000 {
                    return Err(malformed("memo index out of range"));
                }
                let v = stack
                    .last()
                    .ok_or_else(|| malformed("stack underflow"))?
                    .clone();
                spend(&v, &mut budget)?;
                if memo.len() <= idx {
                    memo.resize(idx + 1, None);
                }
                memo[idx] = Some(v);
            }
            b'h' | b'j' | b'g' => {
                let idx = match op {
                    b'h' => r.u8()? as usize,
                    b'j' => r.u32()?,
                    _ => r.line()?.parse().map_err(|_| malformed("bad GET"))?,
                };
                let v = memo
                    .get(idx)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| malformed("memo key is missing"))?
                    .clone();
                spend(&v, &mut budget)?;
                stack.push(v);
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                let kind = classify(&module, &name)?;
                stack.push(Value::Global(Global { module, name, kind }));
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        let kind = classify(&module, &name)?;
                        stack.push(Value::Global(Global { module, name, kind }));
                    }
                    _ => return Err(malformed("STACK_GLOBAL needs two strings")),
                }
            }
            b'R' | 0x81 | 0x92 => {
                if op == 0x92 {
                    pop!(); // kwargs of NEWOBJ_EX
                }
                let args = pop!();
                let callable = pop!();
                let v = call(callable, args, op == b'R')?;
                stack.push(v);
            }
            b'b' => {
                // BUILD: the state of a placeholder object is not applied.
                pop!();
                if stack.is_empty() {
                    return Err(malformed("BUILD on an empty stack"));
                }
            }
            b'Q' => {
                let pid = pop!();
                stack.push(persistent(pid)?);
            }
            b'0' => {
                pop!();
            }
            b'1' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| malformed("POP_MARK without MARK"))?;
                if m > stack.len() {
                    return Err(malformed("mark past the stack"));
                }
                stack.truncate(m);
            }
            b'2' => {
                let v = stack
                    .last()
                    .ok_or_else(|| malformed("stack underflow"))?
                    .clone();
                spend(&v, &mut budget)?;
                stack.push(v);
            }
            _ => {
                return Err(Error::Checkpoint(format!(
                    "unsupported pickle opcode 0x{op:02x} at byte {at}"
                )))
            }
        }
        if stack.len() > 1_000_000 {
            return Err(malformed("stack too large"));
        }
    }
}

fn int(v: &Value, what: &str) -> Result<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(malformed(what)),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items, _) | Value::List(items, _) => {
            items.iter().map(|x| int(x, what)).collect()
        }
        _ => Err(malformed(what)),
    }
}

/// REDUCE / NEWOBJ on a global: rebuild a tensor, make a dict, or a placeholder. Nothing runs.
fn call(callable: Value, args: Value, reduce: bool) -> Result<Value> {
    let g = match callable {
        Value::Global(g) => g,
        _ => return Err(malformed("call of something that is not a global")),
    };
    let a = match &args {
        Value::Tuple(a, _) => a.as_slice(),
        _ => return Err(malformed("call arguments are not a tuple")),
    };
    match g.kind {
        GlobalKind::RebuildTensorV2 if reduce => {
            if a.len() < 4 {
                return Err(malformed(
                    "_rebuild_tensor_v2 needs (storage, offset, size, stride, …)",
                ));
            }
            let storage = match &a[0] {
                Value::Storage(s) => s.clone(),
                _ => return Err(malformed("_rebuild_tensor_v2 without a storage")),
            };
            let size = ints(&a[2], "tensor size")?;
            let stride = ints(&a[3], "tensor stride")?;
            if size.len() != stride.len() || size.len() > 16 {
                return Err(malformed("tensor size and stride differ in length"));
            }
            Ok(Value::Tensor(TensorRef {
                storage,
                offset: int(&a[1], "tensor offset")?,
                size,
                stride,
            }))
        }
        GlobalKind::RebuildParameter if reduce => match a.first() {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            _ => Err(malformed("_rebuild_parameter without a tensor")),
        },
        GlobalKind::OrderedDict => {
            // OrderedDict() or OrderedDict([(k, v), …]).
            let mut items = Vec::new();
            if let Some(Value::List(pairs, _) | Value::Tuple(pairs, _)) = a.first() {
                for p in pairs {
                    match p {
                        Value::Tuple(kv, _) | Value::List(kv, _) if kv.len() == 2 => {
                            items.push((kv[0].clone(), kv[1].clone()))
                        }
                        _ => return Err(malformed("OrderedDict items are not pairs")),
                    }
                }
            }
            let d = 1 + args.depth();
            Ok(Value::Dict(items, d))
        }
        GlobalKind::Inert => Ok(Value::Object(format!("{}.{}", g.module, g.name))),
        _ => Err(Error::Refused(format!(
            "pickle calls {}.{} in a way state dicts never do",
            g.module, g.name
        ))),
    }
}

/// `('storage', torch.HalfStorage, key, location, numel)` → a storage reference.
fn persistent(pid: Value) -> Result<Value> {
    let t = match &pid {
        Value::Tuple(t, _) if t.len() >= 5 => t,
        _ => return Err(malformed("unsupported persistent id")),
    };
    if t[0].as_str() != Some("storage") {
        return Err(malformed("persistent id is not a storage"));
    }
    let dtype = match &t[1] {
        Value::Global(Global {
            kind: GlobalKind::StorageType(d),
            ..
        }) => *d,
        _ => return Err(malformed("storage without a storage type")),
    };
    let key = match &t[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => format!("{i}"),
        _ => return Err(malformed("storage key is not a string")),
    };
    Ok(Value::Storage(StorageRef {
        dtype,
        key,
        numel: int(&t[4], "storage size")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes written by CPython's `pickle.dumps(v, protocol=2 / 5)` for
    /// v = {'a': [1, 2.5, 'x', -3, 2**40, -2**40], 'b': (True, None, False),
    ///      'c': {'n': OrderedDict(k='v')}, 'u': 'é✓'} (+ 'e': b'\x00\x01' at protocol 5).
    const P2: &str = "80027d71002858010000006171015d7102284b0147400400000000000058010000007871034afdffffff8a060000000000018a060000000000ff655801000000627104884e8987710558010000006371067d710758010000006e710863636f6c6c656374696f6e730a4f726465726564446963740a71092952710a58010000006b710b580100000076710c7373580100000075710d5805000000c3a9e29c93710e752e";
    const P5: &str = "80059584000000000000007d94288c0161945d94284b014740040000000000008c0178944afdffffff8a060000000000018a060000000000ff658c016294884e8987948c0163947d948c016e948c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c016b948c01769473738c01659443020001948c0175948c05c3a9e29c9394752e";

    fn check(v: &Value) {
        let a = match v.get("a") {
            Some(Value::List(a, _)) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            a,
            &vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into()),
                Value::Int(-3),
                Value::Int(1 << 40),
                Value::Int(-(1 << 40))
            ]
        );
        match v.get("b") {
            Some(Value::Tuple(b, _)) => {
                assert_eq!(b, &vec![Value::Bool(true), Value::None, Value::Bool(false)])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.get("c").and_then(|c| c.get("n")).and_then(|n| n.get("k")),
            Some(&Value::Str("v".into()))
        );
        assert_eq!(v.get("u"), Some(&Value::Str("é✓".into())));
    }

    #[test]
    fn reads_cpython_protocol_2_and_5() {
        check(&unpickle(&hex(P2)).unwrap());
        let v = unpickle(&hex(P5)).unwrap();
        check(&v);
        assert_eq!(v.get("e"), Some(&Value::Bytes(vec![0, 1])));
    }

    #[test]
    fn refuses_and_bounds() {
        // cos\nsystem\n(S'x'\ntR. — protocol 0 os.system('x'): refused at the GLOBAL.
        let e = unpickle(b"cos\nsystem\n(X\x01\x00\x00\x00xtR.").unwrap_err();
        assert_eq!(e, Error::Refused("pickle references os.system".into()));
        let e = unpickle(b"c__builtin__\neval\n.").unwrap_err();
        assert_eq!(e, Error::Refused("pickle references builtins.eval".into()));
        // Every prefix of a valid pickle is an error, never a panic.
        let p = hex(P5);
        for n in 0..p.len() {
            assert!(unpickle(&p[..n]).is_err());
        }
        let mut deep = vec![0x80, 2];
        deep.extend(core::iter::repeat_n(b']', 1000));
        deep.extend(core::iter::repeat_n(b'a', 999));
        deep.push(b'.');
        assert!(unpickle(&deep).is_err());
    }
}

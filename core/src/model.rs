//! The two towers, MaPLe's prompt splice and the logits, over workspaces allocated once.
//!
//! Shapes (ViT-B/16, MaPLe n = 2): vision rows T = 1 + 196 + n = 199, width Dv = 768;
//! text rows ≤ 77, width Dt = 512; joint E = 512. `B` is the batch held by a workspace.

use crate::bf16::{gemm_bf16, Bf16Matrix, Bf16Scratch};
use crate::clip::{Clip, EncoderLayer, LayerNorm, Linear};
use crate::config::TowerConfig;
use crate::error::{Error, Result};
use crate::gemm::{gemm, Epilogue, PackedMatrix};
use crate::ops::{
    attention, attention_rows, attention_scratch_len, l2_normalize, layer_norm,
    layer_norm_in_place, layer_norm_row,
};
use crate::par::{split, Parallel, SyncPtr};
use crate::prompts::{Prompts, TowerPrompts};
use crate::q8::{gemm_q8, Q8Matrix, Q8Scratch};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// CLIP plus (optionally) a prompt method's prompts. Without prompts it is zero-shot CLIP
/// (docs/model.md §9).
pub struct Model {
    /// The frozen CLIP.
    pub clip: Clip,
    /// The learned prompts (docs/prompts.md); `None` is zero-shot CLIP.
    pub prompts: Option<Prompts>,
}

/// Activations of one transformer tower for up to `B` sequences of up to `T` rows (`R = B·T`).
struct Activations {
    x: Vec<f32>,    // [R, D]  residual stream
    h: Vec<f32>,    // [R, D]  LayerNorm output
    qkv: Vec<f32>,  // [R, 3D] fused q, k, v
    attn: Vec<f32>, // [R, D]  attention output, heads concatenated
    mlp: Vec<f32>,  // [R, F]  QuickGELU(fc1)
}

/// Per-call scratch of one tower's ops: attention's per-thread buffers and the rounded
/// activations of reduced-precision Linears.
pub(crate) struct Scratch {
    pub attn: Vec<f32>, // [threads · (T² + packed Kᵀ + packed V)] (training: its backward's too)
    low: Option<LowScratch>, // [R, max(D, F)] int8 or bf16 activations
}

impl Scratch {
    /// f32 ops only, with `attn` floats for attention.
    pub(crate) fn f32_only(attn: usize) -> Self {
        Scratch {
            attn: vec![0.0; attn],
            low: None,
        }
    }
}

/// Activations rounded for the image tower's reduced-precision Linears.
enum LowScratch {
    Int8(Q8Scratch),
    Bf16(Bf16Scratch),
}

/// What the image tower's Linears compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPrecision {
    /// f32 weights (or f16 storage widened to f32).
    F32,
    /// Int8 weights per column, u8 activations per row ([`Model::quantize_image_tower`]).
    Int8,
    /// Bf16 weights and activations, f32 accumulation ([`Model::bf16_image_tower`]).
    Bf16,
}

/// One tower's buffers: its activations and its ops' scratch, allocated once.
struct TowerBuffers {
    act: Activations,
    scratch: Scratch,
}

impl TowerBuffers {
    fn new(
        rows: usize,
        t: usize,
        tower: &TowerConfig,
        threads: usize,
        low: LinearPrecision,
    ) -> Self {
        let (d, f) = (tower.hidden_size, tower.intermediate_size);
        TowerBuffers {
            act: Activations {
                x: vec![0.0; rows * d],
                h: vec![0.0; rows * d],
                qkv: vec![0.0; rows * 3 * d],
                attn: vec![0.0; rows * d],
                mlp: vec![0.0; rows * f],
            },
            scratch: Scratch {
                attn: vec![0.0; threads * attention_scratch_len(t, tower.head_dim())],
                low: match low {
                    LinearPrecision::F32 => None,
                    LinearPrecision::Int8 => Some(LowScratch::Int8(Q8Scratch::new(rows, f.max(d)))),
                    LinearPrecision::Bf16 => {
                        Some(LowScratch::Bf16(Bf16Scratch::new(rows, f.max(d))))
                    }
                },
            },
        }
    }

    fn precision(&self) -> LinearPrecision {
        match &self.scratch.low {
            None => LinearPrecision::F32,
            Some(LowScratch::Int8(_)) => LinearPrecision::Int8,
            Some(LowScratch::Bf16(_)) => LinearPrecision::Bf16,
        }
    }

    /// The ops' context and the activations they work on, borrowed apart.
    fn split<'a>(&'a mut self, par: &'a Parallel) -> (Ctx<'a>, &'a mut Activations) {
        let cx = Ctx {
            par,
            scratch: &mut self.scratch,
        };
        (cx, &mut self.act)
    }
}

/// What every op of a forward pass takes besides its tensors: the thread pool and the scratch.
/// Each op is one call on it, so a block reads as its list of ops.
pub(crate) struct Ctx<'a> {
    pub par: &'a Parallel,
    pub scratch: &'a mut Scratch,
}

/// What a Linear does with `a·Wᵀ + b` (b is always the Linear's own bias).
#[derive(Clone, Copy)]
enum Then {
    /// `c = a·Wᵀ + b`.
    Store,
    /// `c = QuickGELU(a·Wᵀ + b)`.
    Gelu,
    /// `c += a·Wᵀ + b`.
    AddTo,
}

impl Ctx<'_> {
    /// `c[R, N] (=|+=) a[R, K]·Wᵀ + b`, through W's int8 or bf16 copy when it has one and the
    /// workspace was made for it. `R` is `a.len() / K`.
    fn linear(&mut self, a: &[f32], l: &Linear, c: &mut [f32], then: Then) {
        let (k, n, par) = (l.weight.k, l.weight.n, self.par);
        let rows = a.len() / k;
        let ep = match then {
            Then::Store => Epilogue::store(Some(&l.bias)),
            Then::Gelu => Epilogue::gelu(&l.bias),
            Then::AddTo => Epilogue::residual(&l.bias),
        };
        match (&l.q8, &l.bf16, &mut self.scratch.low) {
            (Some(w), _, Some(LowScratch::Int8(s))) => gemm_q8(par, a, k, rows, w, c, n, ep, s),
            (_, Some(w), Some(LowScratch::Bf16(s))) => gemm_bf16(par, a, k, rows, w, c, n, ep, s),
            _ => gemm(par, a, k, rows, &l.weight, c, n, ep),
        }
    }

    /// `out = LayerNorm(x)` row by row; `x` and `out` hold the same `[R, D]`.
    fn ln(&self, p: &LayerNorm, x: &[f32], out: &mut [f32]) {
        ln(self.par, p, x, out, p.weight.len());
    }

    /// `x = QuickGELU(x)` in place, rows of `width` split across the threads.
    fn gelu(&self, x: &mut [f32], width: usize) {
        let rows = x.len() / width;
        let xp = SyncPtr(x.as_mut_ptr());
        let isa = crate::simd::isa();
        self.par.run(&|t, nt| {
            let (lo, hi) = split(rows, t, nt);
            // SAFETY: thread t touches only rows lo..hi of `x`.
            let o = unsafe {
                core::slice::from_raw_parts_mut(xp.get().add(lo * width), (hi - lo) * width)
            };
            crate::simd::quick_gelu_slice(isa, o);
        });
    }

    /// Multi-head self-attention within each sequence: `qkv [R, 3D]` → `out [R, D]`.
    fn attention(&mut self, qkv: &[f32], out: &mut [f32], s: Shape) {
        let d = out.len() / (s.seqs * s.t);
        let scratch = &mut self.scratch.attn;
        attention(
            self.par, qkv, out, s.seqs, s.t, d, s.heads, s.causal, scratch,
        );
    }

    /// As [`Self::attention`] for query row `q` of each sequence only: `out [seqs, D]`.
    fn attention_row(&mut self, qkv: &[f32], out: &mut [f32], s: Shape, q: usize) {
        let d = out.len() / s.seqs;
        let scratch = &mut self.scratch.attn;
        attention_rows(
            self.par,
            qkv,
            out,
            s.seqs,
            s.t,
            d,
            s.heads,
            s.causal,
            q..q + 1,
            scratch,
        );
    }
}

/// Where a tower's deep prompts go: before layer `l` (1 ≤ l < depth) rows `at..at + n` of
/// every sequence are replaced by `deep[l − 1]` (`[n, D]`; docs/prompts.md §1).
#[derive(Clone, Copy)]
struct Splice<'p> {
    prompts: &'p TowerPrompts,
    at: usize,
}

impl Splice<'_> {
    fn apply(&self, layer: usize, x: &mut [f32], seqs: usize, t: usize, d: usize) {
        let Some(p) = self.prompts.deep_at(layer) else {
            return;
        };
        for s in 0..seqs {
            x[(s * t + self.at) * d..][..p.len()].copy_from_slice(p);
        }
    }
}

/// The shape of one tower call: `seqs` sequences of `t` rows, `heads` heads, causal or not.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub seqs: usize,
    pub t: usize,
    pub heads: usize,
    pub causal: bool,
}

/// Runs every layer of a tower over `a.x` (`[B·T, D]`), splicing prompts before each layer.
/// With `pooled = Some(q)` the caller reads only row `q` of each sequence afterwards, so the
/// last layer runs the rest of its rows no further than their keys and values
/// ([`last_block_at`]); the other rows of `a.x` then hold the last layer's input.
fn tower(
    cx: &mut Ctx,
    layers: &[EncoderLayer],
    a: &mut Activations,
    s: Shape,
    splice: Option<Splice>,
    pooled: Option<usize>,
) {
    for (l, layer) in layers.iter().enumerate() {
        let (d, f, r) = (
            layer.layer_norm1.weight.len(),
            layer.fc1.bias.len(),
            s.seqs * s.t,
        );
        if let Some(sp) = splice {
            sp.apply(l, &mut a.x, s.seqs, s.t, d);
        }
        if let (Some(q), true) = (pooled, l + 1 == layers.len() && s.t >= 2) {
            last_block_at(cx, layer, a, s, q);
            continue;
        }
        let bufs = BlockBufs {
            x: &mut a.x[..r * d],
            h: &mut a.h[..r * d],
            qkv: &mut a.qkv[..r * 3 * d],
            attn: &mut a.attn[..r * d],
            mlp: &mut a.mlp[..r * f],
        };
        block(cx, layer, bufs, s, None);
    }
}

/// [`block`] for row `q` of each sequence alone (`B = seqs` rows), the rest of the block's rows
/// needed only as keys and values: LayerNorm and q/k/v for every row, then attention, the output
/// projection, LayerNorm and the MLP for the B rows. Each of those is row by row, so row `q`'s
/// values are those of the whole block; the work is that of one row in `t` (at ViT-B/16's 197
/// rows, 3 of the layer's 12 row-GEMM units remain: the q/k/v projection).
fn last_block_at(cx: &mut Ctx, l: &EncoderLayer, a: &mut Activations, s: Shape, q: usize) {
    let (d, f, b, r) = (
        l.layer_norm1.weight.len(),
        l.fc1.bias.len(),
        s.seqs,
        s.seqs * s.t,
    );
    let (x, h) = (&mut a.x[..r * d], &mut a.h[..r * d]);
    cx.ln(&l.layer_norm1, x, h); //                       h = ln1(x)                  [R, D]
    cx.linear(h, &l.qkv_proj, &mut a.qkv[..r * 3 * d], Then::Store); // qkv         [R, 3D]
    let (xq, hq) = h[..2 * b * d].split_at_mut(b * d); // (h is free again)
    cx.attention_row(&a.qkv[..r * 3 * d], &mut a.attn[..b * d], s, q); // attn_q      [B, D]
    for (i, row) in xq.chunks_exact_mut(d).enumerate() {
        row.copy_from_slice(&x[(i * s.t + q) * d..][..d]); // xq = x[row q of each]  [B, D]
    }
    cx.linear(&a.attn[..b * d], &l.out_proj, xq, Then::AddTo); // xq += attn_q·Wᵀ + b
    cx.ln(&l.layer_norm2, xq, hq); //                     hq = ln2(xq)                [B, D]
    let mlp = &mut a.mlp[..b * f];
    cx.linear(hq, &l.fc1, mlp, Then::Gelu); //            mlp = QuickGELU(hq·Wᵀ + b)   [B, F]
    cx.linear(mlp, &l.fc2, xq, Then::AddTo); //           xq += mlp·Wᵀ + b             [B, D]
    for (i, row) in xq.chunks_exact(d).enumerate() {
        x[(i * s.t + q) * d..][..d].copy_from_slice(row); // x[row q of each] = xq
    }
}

/// One block's buffers, `R = seqs·t` rows each: the residual stream and the intermediates.
pub(crate) struct BlockBufs<'a> {
    pub x: &'a mut [f32],    // [R, D]  residual stream, updated in place
    pub h: &'a mut [f32],    // [R, D]  LayerNorm output
    pub qkv: &'a mut [f32],  // [R, 3D] fused q, k, v
    pub attn: &'a mut [f32], // [R, D]  attention output, heads concatenated
    pub mlp: &'a mut [f32],  // [R, F]  QuickGELU(fc1)
}

/// What a training forward keeps of a block for its backward (docs/training.md §2), beside the
/// fused qkv it passes as [`BlockBufs::qkv`].
pub(crate) struct Tape<'a> {
    pub x_in: &'a mut [f32],  // [R, D] the block's input
    pub x_mid: &'a mut [f32], // [R, D] the residual after attention
    pub u: &'a mut [f32],     // [R, F] fc1's output before QuickGELU
}

/// One pre-LN block (docs/model.md §4), in place on `b.x`: the one block inference and training
/// run. With a `tape` it also keeps what the backward needs (fc1 and QuickGELU then run apart,
/// not fused).
pub(crate) fn block(cx: &mut Ctx, l: &EncoderLayer, b: BlockBufs, s: Shape, tape: Option<Tape>) {
    let BlockBufs {
        x,
        h,
        qkv,
        attn,
        mlp,
    } = b;
    let mut tape = tape;
    if let Some(tp) = tape.as_mut() {
        tp.x_in.copy_from_slice(x); //               x_in = x                      [R, D]
    }
    cx.ln(&l.layer_norm1, x, h); //                 h = ln1(x)                    [R, D]
    cx.linear(h, &l.qkv_proj, qkv, Then::Store); //  qkv = h·Wᵀ + b                [R, 3D]
    cx.attention(qkv, attn, s); //                   attn = softmax(q·kᵀ/√dh)·v    [R, D]
    cx.linear(attn, &l.out_proj, x, Then::AddTo); // x += attn·Wᵀ + b              [R, D]
    match tape {
        None => {
            cx.ln(&l.layer_norm2, x, h); //         h = ln2(x)                    [R, D]
            cx.linear(h, &l.fc1, mlp, Then::Gelu); // mlp = QuickGELU(h·Wᵀ + b)     [R, F]
        }
        Some(tp) => {
            tp.x_mid.copy_from_slice(x); //         x_mid = x                     [R, D]
            cx.ln(&l.layer_norm2, x, h); //         h = ln2(x)                    [R, D]
            cx.linear(h, &l.fc1, tp.u, Then::Store); // u = h·Wᵀ + b              [R, F]
            mlp.copy_from_slice(tp.u); //           mlp = QuickGELU(u)            [R, F]
            cx.gelu(mlp, tp.u.len() / (s.seqs * s.t));
        }
    }
    cx.linear(mlp, &l.fc2, x, Then::AddTo); //       x += mlp·Wᵀ + b               [R, D]
}

/// `feats[b] = l2(ln(x[row(b)])·projᵀ)` for `count` pooled rows of `x` (`[·, D]` → `[count, E]`).
fn pool_project(
    par: &Parallel,
    x: &[f32],
    rows: impl Iterator<Item = usize>,
    p: &LayerNorm,
    proj: &PackedMatrix,
    pooled: &mut [f32],
    feats: &mut [f32],
) -> usize {
    let (d, e) = (proj.k, proj.n);
    let mut count = 0;
    for (row, out) in rows.zip(pooled.chunks_exact_mut(d)) {
        layer_norm_row(&x[row * d..][..d], out, &p.weight, &p.bias, p.eps);
        count += 1;
    }
    gemm(par, pooled, d, count, proj, feats, e, Epilogue::store(None));
    for f in feats[..count * e].chunks_exact_mut(e) {
        l2_normalize(f);
    }
    count
}

/// LayerNorm of every row, rows split across the threads.
pub(crate) fn ln(par: &Parallel, p: &LayerNorm, x: &[f32], out: &mut [f32], d: usize) {
    let rows = x.len() / d;
    let op = SyncPtr(out.as_mut_ptr());
    par.run(&|t, nt| {
        let (lo, hi) = split(rows, t, nt);
        // SAFETY: thread t writes only rows lo..hi of `out` (same length as `x`).
        let o = unsafe { core::slice::from_raw_parts_mut(op.get().add(lo * d), (hi - lo) * d) };
        layer_norm(&x[lo * d..hi * d], o, d, &p.weight, &p.bias, p.eps);
    });
}

/// Everything an image forward pass writes, sized from the config once.
pub struct VisionWorkspace {
    batch: usize,
    t: usize,
    threads: usize,
    patches: Vec<f32>, // [G², C·P·P] one image's im2col
    buf: TowerBuffers,
    pooled: Vec<f32>, // [B, Dv]
    feats: Vec<f32>,  // [B, E]
}

/// Everything a text forward pass writes.
pub struct TextWorkspace {
    batch: usize,
    threads: usize,
    buf: TowerBuffers,
    pooled: Vec<f32>, // [B, Dt]
    feats: Vec<f32>,  // [B, E]
    eot: Vec<usize>,
}

/// One tokenized prompt: `[SOT, …, EOT]` (no padding), at most `max_position_embeddings` long.
pub type TokenRow = Vec<u32>;

/// L2-normalised text features `[labels, E]`, computed once per label list.
#[derive(Debug, Clone)]
pub struct TextFeatures {
    /// Width of each row.
    pub dim: usize,
    /// `[len, dim]`, row-major.
    pub data: Vec<f32>,
}

impl TextFeatures {
    /// Rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl Model {
    /// A model from CLIP and (optionally) prompts.
    pub fn new(clip: Clip, prompts: Option<Prompts>) -> Self {
        Model { clip, prompts }
    }

    /// Replaces the image tower's Linear weights by int8 copies (per-column scales); from then
    /// on image workspaces (made after this call) run them through [`gemm_q8`]. Each f32 weight
    /// is freed once its copy exists, so memory does not grow. The text tower stays f32. A GPU
    /// upload needs the f32 weights: upload before quantizing, not after.
    pub fn quantize_image_tower(&mut self) {
        for l in &mut self.clip.vision_model.layers {
            for lin in [&mut l.qkv_proj, &mut l.out_proj, &mut l.fc1, &mut l.fc2] {
                if lin.q8.is_none() {
                    lin.q8 = Some(Q8Matrix::from_packed(&lin.weight));
                    lin.weight.release();
                }
            }
        }
    }

    /// Replaces the image tower's Linear weights by bf16 copies; from then on image workspaces
    /// (made after this call) run them through [`gemm_bf16`], rounding activations to bf16 on
    /// the way. Each f32 weight is freed once its copy exists. The text tower stays f32. A
    /// measured experiment (`maple-bench --bf16`), not offered by `maple-classify`.
    pub fn bf16_image_tower(&mut self) {
        for l in &mut self.clip.vision_model.layers {
            for lin in [&mut l.qkv_proj, &mut l.out_proj, &mut l.fc1, &mut l.fc2] {
                if lin.bf16.is_none() && lin.q8.is_none() {
                    lin.bf16 = Some(Bf16Matrix::from_packed(&lin.weight));
                    lin.weight.release();
                }
            }
        }
    }

    /// Whether the image tower runs int8 Linears.
    pub fn is_int8(&self) -> bool {
        self.image_precision() == LinearPrecision::Int8
    }

    /// What the image tower's Linears compute in.
    pub fn image_precision(&self) -> LinearPrecision {
        let lins = self
            .clip
            .vision_model
            .layers
            .iter()
            .flat_map(|l| [&l.qkv_proj, &l.out_proj, &l.fc1, &l.fc2]);
        for w in lins {
            if w.q8.is_some() {
                return LinearPrecision::Int8;
            }
            if w.bf16.is_some() {
                return LinearPrecision::Bf16;
            }
        }
        LinearPrecision::F32
    }

    /// Whether the text features depend on the image (CoCoOp): then labels are encoded per
    /// image ([`conditioned_logits`](Self::conditioned_logits)), never once for all images.
    pub fn text_depends_on_image(&self) -> bool {
        self.prompts
            .as_ref()
            .is_some_and(Prompts::image_conditioned)
    }

    /// Text prompt rows (positions 1..=n of every label's sequence).
    pub fn text_n(&self) -> usize {
        self.prompts.as_ref().map_or(0, Prompts::text_n)
    }

    fn text_prompts(&self) -> Option<&TowerPrompts> {
        self.prompts.as_ref().and_then(|p| p.text.as_ref())
    }

    fn vision_prompts(&self) -> Option<&TowerPrompts> {
        self.prompts.as_ref().and_then(|p| p.vision.as_ref())
    }

    /// Vision sequence length: CLS + patches + prompt tokens.
    pub fn vision_tokens(&self) -> usize {
        self.clip.config.vision.num_positions() + self.prompts.as_ref().map_or(0, Prompts::vision_n)
    }

    /// Buffers for image batches of up to `batch`, allocated once.
    pub fn vision_workspace(&self, batch: usize, par: &Parallel) -> VisionWorkspace {
        // CPU feature detection allocates once on first use (std reads an environment
        // variable): do it here, not inside the first forward pass.
        crate::simd::isa();
        let v = &self.clip.config.vision;
        let t = self.vision_tokens();
        let batch = batch.max(1);
        VisionWorkspace {
            batch,
            t,
            threads: par.threads(),
            patches: vec![0.0; v.grid() * v.grid() * v.patch_dim()],
            buf: TowerBuffers::new(
                batch * t,
                t,
                &v.tower,
                par.threads(),
                self.image_precision(),
            ),
            pooled: vec![0.0; batch * v.tower.hidden_size],
            feats: vec![0.0; batch * self.clip.config.projection_dim],
        }
    }

    /// Buffers for label batches of up to `batch`, allocated once.
    pub fn text_workspace(&self, batch: usize, par: &Parallel) -> TextWorkspace {
        // CPU feature detection allocates once on first use (std reads an environment
        // variable): do it here, not inside the first forward pass.
        crate::simd::isa();
        let tc = &self.clip.config.text;
        let l = tc.max_position_embeddings;
        let batch = batch.max(1);
        TextWorkspace {
            batch,
            threads: par.threads(),
            buf: TowerBuffers::new(batch * l, l, &tc.tower, par.threads(), LinearPrecision::F32),
            // Room for batch·L sequences: CoCoOp's passes hold as many short ones as the
            // rows allow.
            pooled: vec![0.0; batch * l * tc.tower.hidden_size],
            feats: vec![0.0; batch * l * self.clip.config.projection_dim],
            eot: Vec::with_capacity(batch * l),
        }
    }

    /// Image features for `count` preprocessed images (`pixels`: count × [3, S, S]), L2-normalised,
    /// as `[count, E]` inside the workspace. Allocates nothing.
    pub fn encode_images<'w>(
        &self,
        par: &Parallel,
        ws: &'w mut VisionWorkspace,
        pixels: &[f32],
        count: usize,
    ) -> Result<&'w [f32]> {
        self.check_images(par, ws, pixels, count)?;
        let vm = &self.clip.vision_model;
        let t = ws.t;
        let shape = Shape {
            seqs: count,
            t,
            heads: self.clip.config.vision.tower.num_attention_heads,
            causal: false,
        };
        let splice = self.vision_prompts().map(|p| Splice {
            prompts: p,
            at: self.clip.config.vision.num_positions(),
        });
        self.embed_images(par, ws, pixels, count); //    x = ln_pre([CLS; patches·W] + pos; ctx)  [B·T, Dv]
        let (mut cx, a) = ws.buf.split(par);
        tower(&mut cx, &vm.layers, a, shape, splice, Some(0)); // x = blocks(x), deep prompts spliced [B·T, Dv]
        let cls = (0..count).map(|b| b * t); //          row 0 (CLS) of each image, all the pooling reads
        let (pl, proj) = (&vm.post_layernorm, &self.clip.visual_projection);
        let n = pool_project(par, &a.x, cls, pl, proj, &mut ws.pooled, &mut ws.feats);
        Ok(&ws.feats[..n * proj.n]) //                   l2(ln_post(x_cls)·proj)          [B, E]
    }

    /// The checks `encode_images` makes before touching the workspace.
    fn check_images(
        &self,
        par: &Parallel,
        ws: &VisionWorkspace,
        pixels: &[f32],
        count: usize,
    ) -> Result<()> {
        let s = self.clip.config.vision.image_size;
        if count == 0 || count > ws.batch {
            return Err(Error::Input(format!(
                "{count} images for a workspace of {}",
                ws.batch
            )));
        }
        if ws.t != self.vision_tokens() || ws.threads != par.threads() {
            return Err(Error::Input(
                "workspace was built for another model or thread count".into(),
            ));
        }
        if ws.buf.precision() != self.image_precision() {
            return Err(Error::Input(
                "workspace was built before the image tower was quantized".into(),
            ));
        }
        if pixels.len() != count * 3 * s * s {
            return Err(Error::Input(format!(
                "expected {count} × 3×{s}×{s} pixels, got {} values",
                pixels.len()
            )));
        }
        Ok(())
    }

    /// Input rows of `count` images into the workspace's residual stream (`[B·T, Dv]`).
    fn embed_images(&self, par: &Parallel, ws: &mut VisionWorkspace, pixels: &[f32], count: usize) {
        let dv = self.clip.config.vision.tower.hidden_size;
        let img_len = pixels.len() / count;
        let rows = ws.t * dv;
        let x = ws.buf.act.x.chunks_exact_mut(rows);
        for (img, x) in pixels.chunks_exact(img_len).zip(x) {
            self.embed_image(par, &mut ws.patches, img, x);
        }
    }

    /// One image's input rows `x [T, Dv]` (docs/model.md §2–§5): patch embedding of `img` (`[3, S, S]`,
    /// normalised) into rows 1..=G², the class token in row 0, positions added, the image
    /// prompts appended without positions, then `ln_pre` over every row. `patches` is the
    /// `[G², C·P·P]` im2col buffer.
    pub(crate) fn embed_image(
        &self,
        par: &Parallel,
        patches: &mut [f32],
        img: &[f32],
        x: &mut [f32],
    ) {
        let v = &self.clip.config.vision;
        let dv = v.tower.hidden_size;
        let (s, p, g) = (v.image_size, v.patch_size, v.grid());
        let np = v.num_positions();
        let t = self.vision_tokens();
        let vm = &self.clip.vision_model;
        let pd = v.patch_dim();
        // im2col: patch (gy, gx) → row gy·G + gx, columns in (c, ky, kx) order = conv weight order.
        for gy in 0..g {
            for gx in 0..g {
                let row = &mut patches[(gy * g + gx) * pd..][..pd];
                for c in 0..3 {
                    for ky in 0..p {
                        let src = &img[c * s * s + (gy * p + ky) * s + gx * p..][..p];
                        row[(c * p + ky) * p..][..p].copy_from_slice(src);
                    }
                }
            }
        }
        // Patch embedding straight into rows 1..=G² of this image.
        gemm(
            par,
            patches,
            pd,
            g * g,
            &vm.patch_embedding,
            &mut x[dv..],
            dv,
            Epilogue::store(None),
        );
        x[..dv].copy_from_slice(&vm.class_embedding);
        for (xr, pr) in x[..np * dv].iter_mut().zip(&vm.position_embedding) {
            *xr += pr;
        }
        // Image prompts (MaPLe's projected ctx, IVLP/VPT's VPT) appended after CLS + patches,
        // no positional embedding.
        if let Some(pr) = self.vision_prompts() {
            x[np * dv..t * dv].copy_from_slice(&pr.input);
        }
        // ln_pre over every token (prompts included), in place.
        let pl = &vm.pre_layrnorm;
        for row in x[..t * dv].chunks_exact_mut(dv) {
            layer_norm_in_place(row, &pl.weight, &pl.bias, pl.eps);
        }
    }

    /// One label's input rows `x [t, Dt]`: token embeddings (zeros after the row's end, which
    /// causal attention never lets an earlier row read), the text prompt over positions 1..=n,
    /// positions added.
    pub(crate) fn embed_text(&self, row: &[u32], t: usize, x: &mut [f32]) {
        self.embed_text_with(row, t, x, self.text_prompts().map(|p| p.input.as_slice()));
    }

    /// [`embed_text`](Self::embed_text) with `ctx` (`[n, Dt]`) as the input prompt.
    pub(crate) fn embed_text_with(
        &self,
        row: &[u32],
        t: usize,
        x: &mut [f32],
        ctx: Option<&[f32]>,
    ) {
        let tc = &self.clip.config.text;
        let dt = tc.tower.hidden_size;
        let tm = &self.clip.text_model;
        for (pos, xr) in x[..t * dt].chunks_exact_mut(dt).enumerate() {
            match row.get(pos) {
                Some(&id) => tm.token_embedding.row_into(id as usize, xr),
                None => xr.fill(0.0),
            }
        }
        if let Some(ctx) = ctx {
            x[dt..dt + ctx.len()].copy_from_slice(ctx);
        }
        for (xr, pr) in x[..t * dt].iter_mut().zip(&tm.position_embedding[..t * dt]) {
            *xr += pr;
        }
    }

    /// Checks one token row: length, ids, and that the prompt slots do not cover its EOT.
    pub(crate) fn check_row(&self, row: &[u32]) -> Result<usize> {
        let tc = &self.clip.config.text;
        if row.len() < 2 || row.len() > tc.max_position_embeddings {
            return Err(Error::Input(format!(
                "a token row has {} ids; it must hold 2..={}",
                row.len(),
                tc.max_position_embeddings
            )));
        }
        if let Some(&bad) = row.iter().find(|&&id| id as usize >= tc.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                tc.vocab_size
            )));
        }
        // EOT = first position of the largest id (docs/model.md §7).
        let mut eot = 0;
        for (i, &id) in row.iter().enumerate() {
            if id > row[eot] {
                eot = i;
            }
        }
        if eot <= self.text_n() {
            return Err(Error::Input(format!(
                "the end-of-text token sits at position {eot}, inside the {} prompt slots",
                self.text_n()
            )));
        }
        Ok(eot)
    }

    /// Text features of `rows` into `out` (`[rows.len(), E]`), L2-normalised. Rows are run in
    /// batches of similar length, each only up to its longest EOT (exact: docs/model.md §7).
    /// Allocates nothing once the workspace exists.
    pub fn encode_texts_into(
        &self,
        par: &Parallel,
        ws: &mut TextWorkspace,
        rows: &[TokenRow],
        out: &mut [f32],
    ) -> Result<()> {
        let cfg = &self.clip.config;
        let e = cfg.projection_dim;
        if !self.clip.has_text() {
            return Err(Error::Input(
                "the text tower was not loaded (Clip::load_parts without text)".into(),
            ));
        }
        if out.len() != rows.len() * e {
            return Err(Error::Input(
                "output buffer does not match the label count".into(),
            ));
        }
        if ws.threads != par.threads() {
            return Err(Error::Input(
                "workspace was built for another thread count".into(),
            ));
        }
        for r in rows {
            self.check_row(r)?;
        }
        for start in (0..rows.len()).step_by(ws.batch) {
            let end = (start + ws.batch).min(rows.len());
            ws.eot.clear();
            for r in &rows[start..end] {
                ws.eot.push(self.check_row(r)?);
            }
            // Causal attention: rows after the last EOT of the batch cannot change any EOT row.
            let t = ws.eot.iter().max().map_or(1, |m| m + 1);
            let batch = &rows[start..end];
            self.text_batch(par, ws, end - start, t, &|i| (batch[i].as_slice(), None));
            out[start * e..end * e].copy_from_slice(&ws.feats[..(end - start) * e]);
        }
        Ok(())
    }

    /// One batch of `count` text sequences, each run up to `t` (the batch's longest EOT + 1),
    /// into `ws.feats`; `seq(i)` gives sequence i's token row and, when it has its own, its
    /// input prompt (`[n, Dt]`; else the model's). `ws.eot` holds each sequence's EOT.
    fn text_batch<'s>(
        &self,
        par: &Parallel,
        ws: &mut TextWorkspace,
        count: usize,
        t: usize,
        seq: &dyn Fn(usize) -> (&'s [u32], Option<&'s [f32]>),
    ) {
        let tm = &self.clip.text_model;
        let dt = self.clip.config.text.tower.hidden_size;
        let shape = Shape {
            seqs: count,
            t,
            heads: self.clip.config.text.tower.num_attention_heads,
            causal: true,
        };
        let splice = self.text_prompts().map(|p| Splice { prompts: p, at: 1 });
        let own = self.text_prompts().map(|p| p.input.as_slice());
        let x = ws.buf.act.x.chunks_exact_mut(t * dt);
        for (i, x) in (0..count).zip(x) {
            let (row, ctx) = seq(i);
            self.embed_text_with(row, t, x, ctx.or(own)); // x = [SOT; ctx; tokens] + pos [t, Dt]
        }
        let (mut cx, a) = ws.buf.split(par);
        tower(&mut cx, &tm.layers, a, shape, splice, None); // x = causal blocks(x), prompts spliced [B·t, Dt]
        let eot = ws.eot.iter().enumerate().map(|(b, &e)| b * t + e); // each label's EOT row
        let (fl, proj) = (&tm.final_layer_norm, &self.clip.text_projection);
        // feats = l2(ln_final(x_eot)·proj)                                                  [B, E]
        pool_project(par, &a.x, eot, fl, proj, &mut ws.pooled, &mut ws.feats);
    }

    /// CoCoOp's logits (docs/prompts.md §3). Image `b`'s features `f_b` (`feats`, `[count, E]`,
    /// L2-normalised) give its own context `ctx + π(f_b)`; every label is encoded under it and
    /// `out[b, c] = exp(logit_scale)·⟨f_b, t_bc⟩` (`out`: `[count, labels]`). The count × labels
    /// sequences run through the text tower together: longest labels first, as many per pass
    /// as the workspace's rows hold, each pass up to its longest EOT.
    pub fn conditioned_logits(
        &self,
        par: &Parallel,
        ws: &mut TextWorkspace,
        feats: &[f32],
        count: usize,
        rows: &[TokenRow],
        out: &mut [f32],
    ) -> Result<()> {
        let cfg = &self.clip.config;
        let (e, dt) = (cfg.projection_dim, cfg.text.tower.hidden_size);
        let (Some(meta), Some(text)) = (
            self.prompts.as_ref().and_then(|p| p.meta_net.as_ref()),
            self.text_prompts(),
        ) else {
            return Err(Error::Input(
                "image-conditioned logits need CoCoOp's prompts".into(),
            ));
        };
        if !self.clip.has_text() {
            return Err(Error::Input("the text tower was not loaded".into()));
        }
        if feats.len() != count * e || out.len() != count * rows.len() || meta.input() != e {
            return Err(Error::Input("feature sizes do not match".into()));
        }
        if ws.threads != par.threads() {
            return Err(Error::Input(
                "workspace was built for another thread count".into(),
            ));
        }
        let eots = rows
            .iter()
            .map(|r| self.check_row(r))
            .collect::<Result<Vec<usize>>>()?;
        // ctx_b = ctx + π(f_b), π added to every row                              [count, n·Dt]
        let nd = text.n * dt;
        let mut ctx = vec![0.0; count * nd];
        let (mut h, mut pi) = (vec![0.0; meta.hidden], vec![0.0; dt]);
        for (f, c) in feats.chunks_exact(e).zip(ctx.chunks_exact_mut(nd)) {
            meta.bias(f, &mut h, &mut pi);
            for (cr, base) in c.chunks_exact_mut(dt).zip(text.input.chunks_exact(dt)) {
                for ((o, &x), &p) in cr.iter_mut().zip(base).zip(&pi) {
                    *o = x + p;
                }
            }
        }
        // Pairs (label, image), longest labels first.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&c| core::cmp::Reverse(eots[c]));
        let pairs: Vec<(usize, usize)> = order
            .iter()
            .flat_map(|&c| (0..count).map(move |b| (c, b)))
            .collect();
        let (row_cap, seq_cap) = (ws.buf.act.x.len() / dt, ws.pooled.len() / dt);
        let scale = libm::expf(self.clip.logit_scale);
        let mut start = 0;
        while start < pairs.len() {
            let t = eots[pairs[start].0] + 1; // the longest of this pass
            let k = (row_cap / t).min(seq_cap).min(pairs.len() - start).max(1);
            let pass = &pairs[start..start + k];
            ws.eot.clear();
            ws.eot.extend(pass.iter().map(|&(c, _)| eots[c]));
            let ctx = &ctx;
            self.text_batch(par, ws, k, t, &|i| {
                let (c, b) = pass[i];
                (rows[c].as_slice(), Some(&ctx[b * nd..(b + 1) * nd]))
            });
            for (&(c, b), tf) in pass.iter().zip(ws.feats.chunks_exact(e)) {
                let f = &feats[b * e..(b + 1) * e];
                let dot: f32 = f.iter().zip(tf).map(|(x, y)| x * y).sum();
                out[b * rows.len() + c] = scale * dot;
            }
            start += k;
        }
        Ok(())
    }

    /// Text features for a label list (allocates its own workspace; call once per list).
    pub fn encode_texts(&self, par: &Parallel, rows: &[TokenRow]) -> Result<TextFeatures> {
        let e = self.clip.config.projection_dim;
        // Longest rows first, so each batch runs to a similar EOT.
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.sort_by_key(|&i| core::cmp::Reverse(rows[i].len()));
        let sorted: Vec<TokenRow> = idx.iter().map(|&i| rows[i].clone()).collect();
        let mut ws = self.text_workspace(32.min(rows.len().max(1)), par);
        let mut tmp = vec![0.0; rows.len() * e];
        self.encode_texts_into(par, &mut ws, &sorted, &mut tmp)?;
        let mut data = vec![0.0; rows.len() * e];
        for (k, &i) in idx.iter().enumerate() {
            data[i * e..(i + 1) * e].copy_from_slice(&tmp[k * e..(k + 1) * e]);
        }
        Ok(TextFeatures { dim: e, data })
    }

    /// `logits[c] = exp(logit_scale) · ⟨img, txt_c⟩` (docs/model.md §8); both sides already unit-norm.
    pub fn logits(
        &self,
        image_feature: &[f32],
        text: &TextFeatures,
        out: &mut [f32],
    ) -> Result<()> {
        if image_feature.len() != text.dim || out.len() != text.len() {
            return Err(Error::Input("feature sizes do not match".into()));
        }
        let scale = libm::expf(self.clip.logit_scale);
        for (o, t) in out.iter_mut().zip(text.data.chunks_exact(text.dim)) {
            let dot: f32 = image_feature.iter().zip(t).map(|(a, b)| a * b).sum();
            *o = scale * dot;
        }
        Ok(())
    }
}

//! The two towers, MaPLe's prompt splice and the logits, over workspaces allocated once.
//!
//! Shapes (ViT-B/16, MaPLe n = 2): vision rows T = 1 + 196 + n = 199, width Dv = 768;
//! text rows ≤ 77, width Dt = 512; joint E = 512. `B` is the batch held by a workspace.

use crate::bf16::{gemm_bf16, Bf16Matrix, Bf16Scratch};
use crate::clip::{Clip, EncoderLayer, LayerNorm, Linear};
use crate::config::TowerConfig;
use crate::error::{Error, Result};
use crate::gemm::{gemm, Epilogue};
use crate::maple::MaplePrompts;
use crate::ops::{
    attention, attention_scratch_len, l2_normalize, layer_norm, layer_norm_in_place, layer_norm_row,
};
use crate::par::{split, Parallel, SyncPtr};
use crate::q8::{gemm_q8, Q8Matrix, Q8Scratch};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// CLIP plus (optionally) MaPLe prompts. Without prompts it is zero-shot CLIP (spec §9).
pub struct Model {
    /// The frozen CLIP.
    pub clip: Clip,
    /// MaPLe's prompts; `None` is zero-shot CLIP.
    pub prompts: Option<MaplePrompts>,
}

/// Activations of one transformer tower for up to `batch` sequences of up to `t` rows.
struct TowerBuffers {
    x: Vec<f32>,            // [B·T, D] residual stream
    h: Vec<f32>,            // [B·T, D] LayerNorm output
    qkv: Vec<f32>,          // [B·T, 3D]
    attn: Vec<f32>,         // [B·T, D]
    mlp: Vec<f32>,          // [B·T, F]
    scratch: Vec<f32>,      // [threads · (T² + packed Kᵀ + packed V)] attention
    q8: Option<LowScratch>, // [B·T, F] int8 or bf16 activations, for reduced-precision Linears
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
            x: vec![0.0; rows * d],
            h: vec![0.0; rows * d],
            qkv: vec![0.0; rows * 3 * d],
            attn: vec![0.0; rows * d],
            mlp: vec![0.0; rows * f],
            scratch: vec![0.0; threads * attention_scratch_len(t, tower.head_dim())],
            q8: match low {
                LinearPrecision::F32 => None,
                LinearPrecision::Int8 => Some(LowScratch::Int8(Q8Scratch::new(rows, f.max(d)))),
                LinearPrecision::Bf16 => Some(LowScratch::Bf16(Bf16Scratch::new(rows, f.max(d)))),
            },
        }
    }
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

/// `c = a·Wᵀ (+ epilogue)` through the int8 or bf16 copy of W when it has one.
#[allow(clippy::too_many_arguments)]
fn linear(
    par: &Parallel,
    a: &[f32],
    lda: usize,
    rows: usize,
    l: &Linear,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    q8: &mut Option<LowScratch>,
) {
    match (&l.q8, &l.bf16, q8) {
        (Some(w), _, Some(LowScratch::Int8(s))) => gemm_q8(par, a, lda, rows, w, c, ldc, ep, s),
        (_, Some(w), Some(LowScratch::Bf16(s))) => gemm_bf16(par, a, lda, rows, w, c, ldc, ep, s),
        _ => gemm(par, a, lda, rows, &l.weight, c, ldc, ep),
    }
}

/// Runs one pre-LN block (spec §4) on `rows` rows laid out as `seqs` sequences of `t`.
fn block(
    par: &Parallel,
    l: &EncoderLayer,
    b: &mut TowerBuffers,
    seqs: usize,
    t: usize,
    heads: usize,
    causal: bool,
) {
    let d = l.layer_norm1.weight.len();
    let f = l.fc1.bias.len();
    let rows = seqs * t;
    let TowerBuffers {
        x,
        h,
        qkv,
        attn,
        mlp,
        scratch,
        q8,
    } = b;
    let (x, h) = (&mut x[..rows * d], &mut h[..rows * d]);
    ln(par, &l.layer_norm1, x, h, d);
    let qb = &l.qkv_proj.bias;
    linear(
        par,
        h,
        d,
        rows,
        &l.qkv_proj,
        qkv,
        3 * d,
        Epilogue::store(Some(qb)),
        q8,
    );
    attention(par, qkv, attn, seqs, t, d, heads, causal, scratch);
    let ob = &l.out_proj.bias;
    linear(
        par,
        attn,
        d,
        rows,
        &l.out_proj,
        x,
        d,
        Epilogue::residual(ob),
        q8,
    );
    ln(par, &l.layer_norm2, x, h, d);
    linear(
        par,
        h,
        d,
        rows,
        &l.fc1,
        mlp,
        f,
        Epilogue::gelu(&l.fc1.bias),
        q8,
    );
    linear(
        par,
        mlp,
        f,
        rows,
        &l.fc2,
        x,
        d,
        Epilogue::residual(&l.fc2.bias),
        q8,
    );
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

impl Model {
    /// A model from CLIP and (optionally) MaPLe prompts.
    pub fn new(clip: Clip, prompts: Option<MaplePrompts>) -> Self {
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

    fn n_ctx(&self) -> usize {
        self.prompts.as_ref().map_or(0, |p| p.n_ctx)
    }

    /// Vision sequence length: CLS + patches + prompt tokens.
    pub fn vision_tokens(&self) -> usize {
        self.clip.config.vision.num_positions() + self.n_ctx()
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
            pooled: vec![0.0; batch * tc.tower.hidden_size],
            feats: vec![0.0; batch * self.clip.config.projection_dim],
            eot: Vec::with_capacity(batch),
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
        let cfg = &self.clip.config;
        let v = &cfg.vision;
        let (dv, e) = (v.tower.hidden_size, cfg.projection_dim);
        let s = v.image_size;
        let img_len = 3 * s * s;
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
        let low = match &ws.buf.q8 {
            None => LinearPrecision::F32,
            Some(LowScratch::Int8(_)) => LinearPrecision::Int8,
            Some(LowScratch::Bf16(_)) => LinearPrecision::Bf16,
        };
        if low != self.image_precision() {
            return Err(Error::Input(
                "workspace was built before the image tower was quantized".into(),
            ));
        }
        if pixels.len() != count * img_len {
            return Err(Error::Input(format!(
                "expected {count} × 3×{s}×{s} pixels, got {} values",
                pixels.len()
            )));
        }
        let t = ws.t;
        let np = v.num_positions();
        let vm = &self.clip.vision_model;
        for b in 0..count {
            let img = &pixels[b * img_len..(b + 1) * img_len];
            let x = &mut ws.buf.x[b * t * dv..(b + 1) * t * dv];
            self.embed_image(par, &mut ws.patches, img, x);
        }
        for (l, layer) in vm.layers.iter().enumerate() {
            if let Some(pr) = &self.prompts {
                if l >= 1 && l < pr.depth {
                    for b in 0..count {
                        let x = &mut ws.buf.x[b * t * dv..(b + 1) * t * dv];
                        x[np * dv..t * dv].copy_from_slice(&pr.vis_deep[l - 1]);
                    }
                }
            }
            block(
                par,
                layer,
                &mut ws.buf,
                count,
                t,
                v.tower.num_attention_heads,
                false,
            );
        }
        for b in 0..count {
            let x = &ws.buf.x[b * t * dv..][..dv];
            let pl = &vm.post_layernorm;
            layer_norm_row(
                x,
                &mut ws.pooled[b * dv..(b + 1) * dv],
                &pl.weight,
                &pl.bias,
                pl.eps,
            );
        }
        gemm(
            par,
            &ws.pooled,
            dv,
            count,
            &self.clip.visual_projection,
            &mut ws.feats,
            e,
            Epilogue::store(None),
        );
        for f in ws.feats[..count * e].chunks_exact_mut(e) {
            l2_normalize(f);
        }
        Ok(&ws.feats[..count * e])
    }

    /// One image's input rows `x [T, Dv]` (spec §2–§5): patch embedding of `img` (`[3, S, S]`,
    /// normalised) into rows 1..=G², the class token in row 0, positions added, MaPLe's shared
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
        // MaPLe: shared prompts appended after CLS + patches, no positional embedding.
        if let Some(pr) = &self.prompts {
            x[np * dv..t * dv].copy_from_slice(&pr.shared_ctx);
        }
        // ln_pre over every token (prompts included), in place.
        let pl = &vm.pre_layrnorm;
        for row in x[..t * dv].chunks_exact_mut(dv) {
            layer_norm_in_place(row, &pl.weight, &pl.bias, pl.eps);
        }
    }

    /// One label's input rows `x [t, Dt]`: token embeddings (zeros after the row's end, which
    /// causal attention never lets an earlier row read), `ctx` over positions 1..=n, positions
    /// added.
    pub(crate) fn embed_text(&self, row: &[u32], t: usize, x: &mut [f32]) {
        let tc = &self.clip.config.text;
        let dt = tc.tower.hidden_size;
        let tm = &self.clip.text_model;
        let n = self.n_ctx();
        for (pos, xr) in x[..t * dt].chunks_exact_mut(dt).enumerate() {
            match row.get(pos) {
                Some(&id) => tm.token_embedding.row_into(id as usize, xr),
                None => xr.fill(0.0),
            }
        }
        if let Some(pr) = &self.prompts {
            x[dt..(1 + n) * dt].copy_from_slice(&pr.ctx);
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
        // EOT = first position of the largest id (spec §7).
        let mut eot = 0;
        for (i, &id) in row.iter().enumerate() {
            if id > row[eot] {
                eot = i;
            }
        }
        if eot <= self.n_ctx() {
            return Err(Error::Input(format!(
                "the end-of-text token sits at position {eot}, inside the {} prompt slots",
                self.n_ctx()
            )));
        }
        Ok(eot)
    }

    /// Text features of `rows` into `out` (`[rows.len(), E]`), L2-normalised. Rows are run in
    /// batches of similar length, each only up to its longest EOT (exact: spec §7).
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
            self.text_batch(par, ws, &rows[start..end], t);
            out[start * e..end * e].copy_from_slice(&ws.feats[..(end - start) * e]);
        }
        Ok(())
    }

    fn text_batch(&self, par: &Parallel, ws: &mut TextWorkspace, rows: &[TokenRow], t: usize) {
        let cfg = &self.clip.config;
        let tc = &cfg.text;
        let (dt, e) = (tc.tower.hidden_size, cfg.projection_dim);
        let tm = &self.clip.text_model;
        let n = self.n_ctx();
        let bsz = rows.len();
        for (b, row) in rows.iter().enumerate() {
            self.embed_text(row, t, &mut ws.buf.x[b * t * dt..(b + 1) * t * dt]);
        }
        for (l, layer) in tm.layers.iter().enumerate() {
            if let Some(pr) = &self.prompts {
                if l >= 1 && l < pr.depth {
                    for b in 0..bsz {
                        let x = &mut ws.buf.x[b * t * dt..(b + 1) * t * dt];
                        x[dt..(1 + n) * dt].copy_from_slice(&pr.text_deep[l - 1]);
                    }
                }
            }
            block(
                par,
                layer,
                &mut ws.buf,
                bsz,
                t,
                tc.tower.num_attention_heads,
                true,
            );
        }
        for (b, &eot) in ws.eot.iter().enumerate() {
            let fl = &tm.final_layer_norm;
            let x = &ws.buf.x[(b * t + eot) * dt..][..dt];
            layer_norm_row(
                x,
                &mut ws.pooled[b * dt..(b + 1) * dt],
                &fl.weight,
                &fl.bias,
                fl.eps,
            );
        }
        gemm(
            par,
            &ws.pooled,
            dt,
            bsz,
            &self.clip.text_projection,
            &mut ws.feats,
            e,
            Epilogue::store(None),
        );
        for f in ws.feats[..bsz * e].chunks_exact_mut(e) {
            l2_normalize(f);
        }
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

    /// `logits[c] = exp(logit_scale) · ⟨img, txt_c⟩` (spec §8); both sides already unit-norm.
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

//! The two towers as dispatch lists, mirroring `maple_core::model` (docs/model.md §5–§8): one line per
//! op, shapes beside them. B = images or labels in the batch, T = tokens per sequence,
//! D = width, F = MLP width, E = projection width, n = prompt tokens.

use crate::plan::{Plan, Recorder};
use crate::weights::{GLayer, GPrompts, GTower, Weights};
use crate::{Gpu, Result};

/// Activations of one tower, allocated once per plan.
struct Acts {
    x: wgpu::Buffer,    // [B·T, D] residual stream
    h: wgpu::Buffer,    // [B·T, D] LayerNorm output
    qkv: wgpu::Buffer,  // [B·T, 3D]
    attn: wgpu::Buffer, // [B·T, D]
    mlp: wgpu::Buffer,  // [B·T, F]
}

impl Acts {
    fn new(r: &Recorder, rows: u32, d: u32, f: u32) -> Self {
        let (rows, d, f) = (rows as usize, d as usize, f as usize);
        Acts {
            x: r.buf("x", rows * d),
            h: r.buf("h", rows * d),
            qkv: r.buf("qkv", rows * 3 * d),
            attn: r.buf("attn", rows * d),
            mlp: r.buf("mlp", rows * f),
        }
    }
}

/// A tower's deep prompts: `[n, D]` per layer 1..depth, spliced at row `start`.
struct Deep<'a> {
    prompts: &'a GPrompts,
    start: u32,
}

impl Recorder<'_> {
    /// One pre-LN transformer block on `a.x` (in place).
    fn block(
        &mut self,
        l: &GLayer,
        tw: &GTower,
        a: &Acts,
        seqs: u32,
        t: u32,
        causal: bool,
    ) -> Result<()> {
        let (rows, d) = (seqs * t, tw.d);
        self.ln(&a.x, rows, d, 0, 1, &l.ln1, &a.h); //                 h = ln1(x)
        self.matmul(&a.h, d, rows, &l.qkv, &a.qkv, 3 * d, false, false); // qkv = h·Wqkvᵀ + b
        self.attention(&a.qkv, &a.attn, seqs, t, d, tw.heads, causal)?; // attn = MHA(qkv)
        self.matmul(&a.attn, d, rows, &l.out, &a.x, d, false, true); //  x += attn·Woᵀ + b
        self.ln(&a.x, rows, d, 0, 1, &l.ln2, &a.h); //                 h = ln2(x)
        self.matmul(&a.h, d, rows, &l.fc1, &a.mlp, tw.f, true, false); // mlp = gelu(h·W1ᵀ + b)
        self.matmul(&a.mlp, tw.f, rows, &l.fc2, &a.x, d, false, true); // x += mlp·W2ᵀ + b
        Ok(())
    }

    /// Every block of a tower; before block l in 1..depth the deep prompt l−1 replaces the
    /// prompt rows (docs/model.md §6).
    fn tower(
        &mut self,
        tw: &GTower,
        deep: Option<Deep>,
        a: &Acts,
        seqs: u32,
        t: u32,
        causal: bool,
    ) -> Result<()> {
        for (l, layer) in tw.layers.iter().enumerate() {
            if let Some(dp) = &deep {
                if let Some(p) = l.checked_sub(1).and_then(|i| dp.prompts.deep.get(i)) {
                    self.splice(p, &a.x, seqs, t, dp.start, dp.prompts.n, tw.d);
                }
            }
            self.block(layer, tw, a, seqs, t, causal)?;
        }
        Ok(())
    }
}

/// The image tower for `batch` images: pixels `[B, 3, S, S]` → L2-normalised features `[B, E]`.
pub(crate) fn vision(gpu: &Gpu, w: &Weights, batch: u32) -> Result<Plan> {
    let v = &w.cfg.vision;
    let (s, p, g) = (v.image_size as u32, v.patch_size as u32, v.grid() as u32);
    let pd = 3 * p * p;
    let np = g * g + 1; // CLS + patches
    let n = w.vis_prompts.as_ref().map_or(0, |p| p.n);
    let t = np + n; // + the image prompts at the end
    let (d, e, b) = (w.vision.d, w.cfg.projection_dim as u32, batch);
    let mut r = Recorder::new(gpu, &w.dummy, w.precision);
    let pixels = r.buf("pixels", (b * 3 * s * s) as usize);
    let patches = r.buf("patches", (b * g * g * pd) as usize);
    let pemb = r.buf("patch_embeddings", (b * g * g * d) as usize);
    let a = Acts::new(&r, b * t, d, w.vision.f);
    let pooled = r.buf("pooled", (b * d) as usize);
    let feats = r.buf("features", (b * e) as usize);

    r.im2col(&pixels, &patches, b, s, p, g); //                  [B·G², 3P²]
    r.matmul(&patches, pd, b * g * g, &w.patch, &pemb, d, false, false); // [B·G², D]
    r.assemble(&pemb, &w.cls_pos, &a.h, b, t, g * g, d); //        h[:, :np] = CLS|patches + pos
    if let Some(pp) = &w.vis_prompts {
        r.splice(&pp.input, &a.h, b, t, np, n, d); //                h[:, np..] = image prompts
    }
    r.ln(&a.h, b * t, d, 0, 1, &w.pre_ln, &a.x); //                x = ln_pre(h)
    let deep = w.vis_prompts.as_ref().map(|p| Deep {
        prompts: p,
        start: np,
    });
    r.tower(&w.vision, deep, &a, b, t, false)?;
    r.ln(&a.x, b, d, 0, t, &w.post_ln, &pooled); //                ln_post(x[:, 0])  [B, D]
    r.matmul(&pooled, d, b, &w.vproj, &feats, e, false, false); //  [B, E]
    r.l2norm(&feats, b, e);
    r.finish(pixels, None, feats, (b * e) as usize)
}

/// The text tower for `batch` label prompts of `t` tokens: ids `[B, T]` and the EOT row of
/// each → L2-normalised features `[B, E]`.
pub(crate) fn text(gpu: &Gpu, w: &Weights, batch: u32, t: u32) -> Result<Plan> {
    let (d, e, b) = (w.text.d, w.cfg.projection_dim as u32, batch);
    let n = w.text_prompts.as_ref().map_or(0, |p| p.n);
    let mut r = Recorder::new(gpu, &w.dummy, w.precision);
    let ids = r.buf("ids", (b * t) as usize);
    let eot = r.buf("eot_rows", b as usize);
    let a = Acts::new(&r, b * t, d, w.text.f);
    let eot_x = r.buf("eot_x", (b * d) as usize);
    let pooled = r.buf("pooled", (b * d) as usize);
    let feats = r.buf("features", (b * e) as usize);

    r.gather(&w.tok_emb, &ids, &a.x, b * t, d); //                 x = token_embedding[ids]
    if let Some(pp) = &w.text_prompts {
        r.splice(&pp.input, &a.x, b, t, 1, n, d); //                x[:, 1..=n] = ctx
    }
    r.add_pos(&w.tpos, &a.x, b, t, t, d); //                       x += pos[:T]
    let deep = w.text_prompts.as_ref().map(|p| Deep {
        prompts: p,
        start: 1,
    });
    r.tower(&w.text, deep, &a, b, t, true)?;
    r.gather(&a.x, &eot, &eot_x, b, d); //                         x[EOT]  [B, D]
    r.ln(&eot_x, b, d, 0, 1, &w.final_ln, &pooled);
    r.matmul(&pooled, d, b, &w.tproj, &feats, e, false, false); //  [B, E]
    r.l2norm(&feats, b, e);
    r.finish(ids, Some(eot), feats, (b * e) as usize)
}

//! A forward pass recorded once per batch size: activation buffers, bind groups and the
//! dispatch list. Running it writes the inputs, submits one command buffer, reads one buffer.

use crate::weights::{GLayer, GLinear, GLn, GTower, GpuModel, Precision};
use crate::{Gpu, GpuError, Result};
use wgpu::util::DeviceExt;

#[derive(Clone, Copy)]
enum K {
    Matmul,
    MatmulF16,
    Attention,
    LayerNorm,
    Im2col,
    Assemble,
    Gather,
    AddPos,
    Splice,
    L2norm,
}

impl K {
    fn pipeline(self, kn: &crate::Kernels) -> &wgpu::ComputePipeline {
        match self {
            K::Matmul => &kn.matmul,
            K::MatmulF16 => kn.matmul_f16.as_ref().unwrap_or(&kn.matmul),
            K::Attention => &kn.attention,
            K::LayerNorm => &kn.layernorm,
            K::Im2col => &kn.im2col,
            K::Assemble => &kn.assemble,
            K::Gather => &kn.gather,
            K::AddPos => &kn.add_pos,
            K::Splice => &kn.splice,
            K::L2norm => &kn.l2norm,
        }
    }
}

enum Op {
    Dispatch(K, wgpu::BindGroup, [u32; 3]),
    Copy(wgpu::Buffer, wgpu::Buffer, u64),
}

/// Everything one batch size needs, built once: activation buffers, bind groups, the dispatch list.
pub struct Plan {
    ops: Vec<Op>,
    /// Pixels (vision) or token ids (text).
    input: wgpu::Buffer,
    /// EOT row indices (text).
    eot: Option<wgpu::Buffer>,
    readback: wgpu::Buffer,
    out_len: usize,
}

pub(crate) struct TextInput<'a> {
    pub ids: &'a [u32],
    pub eot_rows: &'a [u32],
}

const F: u64 = 4;

/// Workgroup counts for `items` invocations of `size`-wide workgroups, as (x ≤ 65535, y).
fn groups(items: u32, size: u32) -> [u32; 3] {
    let g = items.div_ceil(size).max(1);
    [g.min(65535), g.div_ceil(65535), 1]
}

pub(crate) struct Builder<'a> {
    gpu: &'a Gpu,
    dummy: &'a wgpu::Buffer,
    precision: Precision,
    ops: Vec<Op>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(gpu: &'a Gpu, dummy: &'a wgpu::Buffer, precision: Precision) -> Self {
        Builder {
            gpu,
            dummy,
            precision,
            ops: Vec::new(),
        }
    }

    fn dev(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    pub(crate) fn buf(&self, label: &str, floats: usize) -> wgpu::Buffer {
        self.dev().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (floats.max(4) as u64) * F,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    fn params(&self, words: &[u32]) -> wgpu::Buffer {
        let mut w = words.to_vec();
        w.resize(12, 0);
        self.dev()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(&w),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    fn dispatch(&mut self, k: K, entries: &[(u32, &wgpu::Buffer)], g: [u32; 3]) {
        let pipe = k.pipeline(&self.gpu.kernels);
        let e: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: *b,
                resource: buf.as_entire_binding(),
            })
            .collect();
        let bg = self.dev().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &e,
        });
        self.ops.push(Op::Dispatch(k, bg, g));
    }

    /// c[c_off + r·ldc + j] (+)= alpha · a[a_off + r·lda ..] · W[j]ᵀ (+ bias) (QuickGELU)
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &mut self,
        a: &wgpu::Buffer,
        lda: u32,
        m: u32,
        w: &GLinear,
        c: &wgpu::Buffer,
        ldc: u32,
        gelu: bool,
        acc: bool,
    ) {
        let flags = u32::from(w.b.is_some()) | if gelu { 2 } else { 0 } | if acc { 4 } else { 0 };
        let p = self.params(&[m, w.n, w.k, lda, ldc, 0, 0, flags, 1.0f32.to_bits()]);
        let bias = w.b.as_ref().unwrap_or(self.dummy);
        let k = if self.precision == Precision::F16 {
            K::MatmulF16
        } else {
            K::Matmul
        };
        self.dispatch(
            k,
            &[(0, &p), (1, a), (2, &w.w), (3, bias), (4, c)],
            [w.n.div_ceil(32), m.div_ceil(32), 1],
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ln(
        &mut self,
        x: &wgpu::Buffer,
        rows: u32,
        d: u32,
        first: u32,
        stride: u32,
        l: &GLn,
        out: &wgpu::Buffer,
    ) {
        let p = self.params(&[rows, d, first, stride, l.eps.to_bits()]);
        self.dispatch(
            K::LayerNorm,
            &[(0, &p), (1, x), (2, &l.w), (3, &l.b), (4, out)],
            groups(rows, 64),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn splice(
        &mut self,
        prompt: &wgpu::Buffer,
        x: &wgpu::Buffer,
        seqs: u32,
        t: u32,
        start: u32,
        n: u32,
        d: u32,
    ) {
        let p = self.params(&[seqs, t, start, n, d]);
        self.dispatch(
            K::Splice,
            &[(0, &p), (1, prompt), (2, x)],
            groups(seqs * n * d, 256),
        );
    }

    /// The blocks of one tower over `seqs` sequences of `t` rows; prompts spliced at `start`.
    #[allow(clippy::too_many_arguments)]
    fn tower(
        &mut self,
        tw: &GTower,
        deep: Option<(&[wgpu::Buffer], usize, u32)>,
        start: u32,
        bufs: &Acts,
        seqs: u32,
        t: u32,
        causal: bool,
    ) {
        let rows = seqs * t;
        let d = tw.d;
        for (l, layer) in tw.layers.iter().enumerate() {
            if let Some((deep, depth, n)) = deep {
                if l >= 1 && l < depth {
                    self.splice(&deep[l - 1], &bufs.x, seqs, t, start, n, d);
                }
            }
            self.block(layer, tw, bufs, seqs, t, rows, causal);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &mut self,
        qkv: &wgpu::Buffer,
        out: &wgpu::Buffer,
        seqs: u32,
        t: u32,
        d: u32,
        heads: u32,
        causal: bool,
    ) {
        let scale = 1.0 / ((d / heads) as f32).sqrt();
        let p = self.params(&[seqs, t, d, heads, u32::from(causal), scale.to_bits()]);
        self.dispatch(
            K::Attention,
            &[(0, &p), (1, qkv), (2, out)],
            groups(seqs * heads * t, 64),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        l: &GLayer,
        tw: &GTower,
        b: &Acts,
        seqs: u32,
        t: u32,
        rows: u32,
        causal: bool,
    ) {
        let d = tw.d;
        self.ln(&b.x, rows, d, 0, 1, &l.ln1, &b.h);
        self.matmul(&b.h, d, rows, &l.qkv, &b.qkv, 3 * d, false, false);
        self.attention(&b.qkv, &b.attn, seqs, t, d, tw.heads, causal);
        self.matmul(&b.attn, d, rows, &l.out, &b.x, d, false, true);
        self.ln(&b.x, rows, d, 0, 1, &l.ln2, &b.h);
        self.matmul(&b.h, d, rows, &l.fc1, &b.mlp, tw.f, true, false);
        self.matmul(&b.mlp, tw.f, rows, &l.fc2, &b.x, d, false, true);
    }
}

/// Activations of one tower.
struct Acts {
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    mlp: wgpu::Buffer,
}

impl Acts {
    fn new(b: &Builder, rows: usize, d: usize, f: usize) -> Self {
        Acts {
            x: b.buf("x", rows * d),
            h: b.buf("h", rows * d),
            qkv: b.buf("qkv", rows * 3 * d),
            attn: b.buf("attn", rows * d),
            mlp: b.buf("mlp", rows * f),
        }
    }
}

impl Plan {
    pub(crate) fn vision(m: &GpuModel, batch: usize) -> Result<Plan> {
        let v = &m.cfg.vision;
        let (s, p, g) = (v.image_size as u32, v.patch_size as u32, v.grid() as u32);
        let pd = 3 * p * p;
        let np = g * g + 1;
        let n = m.prompts.as_ref().map_or(0, |p| p.n);
        let t = np + n;
        let (d, e) = (m.vision.d, m.cfg.projection_dim as u32);
        let bsz = batch as u32;
        let mut b = Builder::new(&m.gpu, &m.dummy, m.precision);
        let pixels = b.buf("pixels", batch * 3 * (s * s) as usize);
        let patches = b.buf("patches", (bsz * g * g * pd) as usize);
        let pemb = b.buf("patch_embeddings", (bsz * g * g * d) as usize);
        let acts = Acts::new(&b, (bsz * t) as usize, d as usize, m.vision.f as usize);
        let pooled = b.buf("pooled", (bsz * d) as usize);
        let feats = b.buf("features", (bsz * e) as usize);

        let pr = b.params(&[bsz, s, p, g]);
        b.dispatch(
            K::Im2col,
            &[(0, &pr), (1, &pixels), (4, &patches)],
            groups(bsz * g * g * pd, 256),
        );
        b.matmul(&patches, pd, bsz * g * g, &m.patch, &pemb, d, false, false);
        let pr = b.params(&[bsz, t, g * g, d]);
        b.dispatch(
            K::Assemble,
            &[(0, &pr), (1, &pemb), (2, &m.cls_pos), (4, &acts.x)],
            groups(bsz * np * d, 256),
        );
        if let Some(pp) = &m.prompts {
            b.splice(&pp.shared, &acts.x, bsz, t, np, n, d);
        }
        b.ln(&acts.x, bsz * t, d, 0, 1, &m.pre_ln, &acts.h);
        b.ops.push(Op::Copy(
            acts.h.clone(),
            acts.x.clone(),
            (bsz * t * d) as u64 * F,
        ));
        let deep = m
            .prompts
            .as_ref()
            .map(|p| (p.vis_deep.as_slice(), p.depth, p.n));
        b.tower(&m.vision, deep, np, &acts, bsz, t, false);
        b.ln(&acts.x, bsz, d, 0, t, &m.post_ln, &pooled);
        b.matmul(&pooled, d, bsz, &m.vproj, &feats, e, false, false);
        let pr = b.params(&[bsz, e]);
        b.dispatch(K::L2norm, &[(0, &pr), (1, &feats)], groups(bsz, 64));
        Plan::finish(b, pixels, None, feats, (bsz * e) as usize)
    }

    pub(crate) fn text(m: &GpuModel, batch: usize, t: usize) -> Result<Plan> {
        let (d, e) = (m.text.d, m.cfg.projection_dim as u32);
        let (bsz, t) = (batch as u32, t as u32);
        let n = m.prompts.as_ref().map_or(0, |p| p.n);
        let mut b = Builder::new(&m.gpu, &m.dummy, m.precision);
        let ids = b.buf("ids", (bsz * t) as usize);
        let eot = b.buf("eot_rows", batch);
        let acts = Acts::new(&b, (bsz * t) as usize, d as usize, m.text.f as usize);
        let eot_x = b.buf("eot_x", (bsz * d) as usize);
        let pooled = b.buf("pooled", (bsz * d) as usize);
        let feats = b.buf("features", (bsz * e) as usize);

        let pr = b.params(&[bsz * t, 0, 0, d]);
        b.dispatch(
            K::Gather,
            &[(0, &pr), (1, &m.tok_emb), (3, &ids), (4, &acts.x)],
            groups(bsz * t * d, 256),
        );
        if let Some(pp) = &m.prompts {
            b.splice(&pp.ctx, &acts.x, bsz, t, 1, n, d);
        }
        let pr = b.params(&[bsz, t, t, d]);
        b.dispatch(
            K::AddPos,
            &[(0, &pr), (2, &m.tpos), (4, &acts.x)],
            groups(bsz * t * d, 256),
        );
        let deep = m
            .prompts
            .as_ref()
            .map(|p| (p.text_deep.as_slice(), p.depth, p.n));
        b.tower(&m.text, deep, 1, &acts, bsz, t, true);
        let pr = b.params(&[bsz, 0, 0, d]);
        b.dispatch(
            K::Gather,
            &[(0, &pr), (1, &acts.x), (3, &eot), (4, &eot_x)],
            groups(bsz * d, 256),
        );
        b.ln(&eot_x, bsz, d, 0, 1, &m.final_ln, &pooled);
        b.matmul(&pooled, d, bsz, &m.tproj, &feats, e, false, false);
        let pr = b.params(&[bsz, e]);
        b.dispatch(K::L2norm, &[(0, &pr), (1, &feats)], groups(bsz, 64));
        Plan::finish(b, ids, Some(eot), feats, (bsz * e) as usize)
    }

    pub(crate) fn finish(
        mut b: Builder,
        input: wgpu::Buffer,
        eot: Option<wgpu::Buffer>,
        out: wgpu::Buffer,
        out_len: usize,
    ) -> Result<Plan> {
        let readback = b.dev().create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: out_len as u64 * F,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        b.ops
            .push(Op::Copy(out, readback.clone(), out_len as u64 * F));
        b.gpu.check()?;
        Ok(Plan {
            ops: b.ops,
            input,
            eot,
            readback,
            out_len,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn run(
        &self,
        gpu: &Gpu,
        pixels: Option<&[u8]>,
        text: Option<TextInput>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.run_async(gpu, pixels, text))
    }

    pub(crate) async fn run_async(
        &self,
        gpu: &Gpu,
        pixels: Option<&[u8]>,
        text: Option<TextInput<'_>>,
    ) -> Result<Vec<f32>> {
        if let Some(px) = pixels {
            gpu.queue.write_buffer(&self.input, 0, px);
        }
        if let Some(t) = text {
            gpu.queue
                .write_buffer(&self.input, 0, bytemuck::cast_slice(t.ids));
            if let Some(e) = &self.eot {
                gpu.queue
                    .write_buffer(e, 0, bytemuck::cast_slice(t.eot_rows));
            }
        }
        let kn = &gpu.kernels;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("maple forward"),
            });
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy(src, dst, size) => {
                    enc.copy_buffer_to_buffer(src, 0, dst, 0, *size);
                    i += 1;
                }
                Op::Dispatch(..) => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    });
                    while let Some(Op::Dispatch(k, bg, g)) = self.ops.get(i) {
                        let pipe = k.pipeline(kn);
                        pass.set_pipeline(pipe);
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups(g[0], g[1], g[2]);
                        i += 1;
                    }
                }
            }
        }
        gpu.queue.submit([enc.finish()]);
        let slice = self.readback.slice(..);
        let done = crate::oneshot::Oneshot::default();
        let tx = done.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        // Natively the map completes inside poll; in a browser the event loop completes it.
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError(format!("GPU wait failed: {e}")))?;
        let mapped = done.await;
        gpu.check()?;
        mapped.map_err(|e| GpuError(format!("readback failed: {e}")))?;
        let out: Vec<f32> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError(format!("readback failed: {e}")))?;
            view.chunks_exact(4)
                .take(self.out_len)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        self.readback.unmap();
        Ok(out)
    }
}

//! A forward pass recorded once per batch size: activation buffers, bind groups and the
//! dispatch list ([`Recorder`]). Running it ([`Plan::run_async`]) writes the inputs, submits one
//! command buffer and reads one buffer back; [`Plan::profile`] runs it with a GPU timestamp
//! before and after every dispatch and sums the times per kernel.

use crate::oneshot::Oneshot;
use crate::weights::Precision;
use crate::{Gpu, GpuError, Result};
use wgpu::util::DeviceExt;

/// One recorded dispatch: what it runs, on what, and the work it does (for the profile, which
/// the browser build does not have).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) struct Dispatch {
    /// Kernel family and variant, e.g. `matmul tiled 64×64` (the profile's row).
    pub name: String,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// Floating-point operations (a multiply-add is 2).
    pub flops: f64,
    /// Bytes the kernel must read and write at least (each input and output once).
    pub bytes: f64,
}

enum Op {
    Dispatch(Dispatch),
    Copy(wgpu::Buffer, wgpu::Buffer, u64),
}

/// Bytes per f32.
pub(crate) const F: u64 = 4;

/// Workgroup counts for `items` items of `size` per workgroup, as (x ≤ 65535, y).
pub(crate) fn groups(items: u32, size: u32) -> [u32; 3] {
    let g = items.div_ceil(size).max(1);
    [g.min(65535), g.div_ceil(65535), 1]
}

/// Records a dispatch list; the kernels' host code (`kernels/*.rs`) adds to it.
pub(crate) struct Recorder<'a> {
    pub gpu: &'a Gpu,
    /// Bound in place of an absent optional input.
    pub dummy: &'a wgpu::Buffer,
    pub precision: Precision,
    ops: Vec<Op>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(gpu: &'a Gpu, dummy: &'a wgpu::Buffer, precision: Precision) -> Self {
        Recorder {
            gpu,
            dummy,
            precision,
            ops: Vec::new(),
        }
    }

    pub(crate) fn dev(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    /// An activation buffer of `floats` f32 values.
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

    /// A uniform buffer holding a kernel's parameter struct.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> wgpu::Buffer {
        self.dev()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Binds `entries` (binding number, buffer) to `pipeline`'s group 0 and records the dispatch.
    pub(crate) fn dispatch(
        &mut self,
        name: String,
        pipeline: wgpu::ComputePipeline,
        entries: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
        flops: f64,
        bytes: f64,
    ) {
        let e: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: *b,
                resource: buf.as_entire_binding(),
            })
            .collect();
        let bind_group = self.dev().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &e,
        });
        self.ops.push(Op::Dispatch(Dispatch {
            name,
            pipeline,
            bind_group,
            groups,
            flops,
            bytes,
        }));
    }

    /// Ends the list with a copy of `out` into a mappable buffer.
    pub(crate) fn finish(
        mut self,
        input: wgpu::Buffer,
        eot: Option<wgpu::Buffer>,
        out: wgpu::Buffer,
        out_len: usize,
    ) -> Result<Plan> {
        let readback = self.dev().create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: out_len as u64 * F,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.ops
            .push(Op::Copy(out, readback.clone(), out_len as u64 * F));
        self.gpu.check()?;
        Ok(Plan {
            ops: self.ops,
            input,
            eot,
            readback,
            out_len,
        })
    }
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

/// GPU time of one kernel (family and variant) summed over a forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// Kernel family and variant, e.g. `matmul tiled 64×64`.
    pub name: String,
    /// Dispatches of it in the forward pass.
    pub dispatches: usize,
    /// Seconds between the timestamps around its dispatches, summed.
    pub seconds: f64,
    /// Floating-point operations it did (a multiply-add is 2).
    pub flops: f64,
    /// Bytes it had to move at least (inputs and outputs once each).
    pub bytes: f64,
}

/// Per-kernel GPU times of one forward pass ([`Plan::profile`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// One row per kernel, in the order first dispatched.
    pub kernels: Vec<KernelTime>,
    /// Dispatches in the forward pass.
    pub dispatches: usize,
}

impl Profile {
    /// GPU seconds of all dispatches (pass boundaries included, idle gaps not).
    pub fn seconds(&self) -> f64 {
        self.kernels.iter().map(|k| k.seconds).sum()
    }
}

impl Plan {
    /// Dispatches per forward pass.
    pub fn dispatches(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch(_)))
            .count()
    }

    fn write_inputs(&self, gpu: &Gpu, pixels: Option<&[u8]>, text: Option<TextInput>) {
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
    }

    /// Records the ops into `enc`: consecutive dispatches share one compute pass, or with
    /// `timestamps` each gets its own pass with a timestamp at its start and end.
    fn encode(&self, enc: &mut wgpu::CommandEncoder, timestamps: Option<&wgpu::QuerySet>) {
        let mut i = 0;
        let mut d = 0u32;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy(src, dst, size) => {
                    enc.copy_buffer_to_buffer(src, 0, dst, 0, *size);
                    i += 1;
                }
                Op::Dispatch(_) => {
                    let tw = timestamps.map(|q| wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: Some(2 * d),
                        end_of_pass_write_index: Some(2 * d + 1),
                    });
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: tw,
                    });
                    while let Some(Op::Dispatch(x)) = self.ops.get(i) {
                        pass.set_pipeline(&x.pipeline);
                        pass.set_bind_group(0, &x.bind_group, &[]);
                        pass.dispatch_workgroups(x.groups[0], x.groups[1], x.groups[2]);
                        i += 1;
                        d += 1;
                        if timestamps.is_some() {
                            break;
                        }
                    }
                }
            }
        }
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
        self.write_inputs(gpu, pixels, text);
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("maple forward"),
            });
        self.encode(&mut enc, None);
        gpu.queue.submit([enc.finish()]);
        let out = read_f32(gpu, &self.readback, self.out_len).await?;
        Ok(out)
    }

    /// Runs the forward pass once more on the inputs last written, with a GPU timestamp around
    /// every dispatch, and sums the times per kernel (needs [`Gpu::timestamps`]). Each
    /// dispatch gets a compute pass of its own, so the sum is a little above a plain run's time.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, gpu: &Gpu) -> Result<Profile> {
        if !gpu.timestamps {
            return Err(GpuError(format!(
                "{} offers no timestamp queries (TIMESTAMP_QUERY): cannot profile",
                gpu.describe()
            )));
        }
        let n = self.dispatches();
        let count = (2 * n).max(2) as u32;
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(GpuError(format!(
                "{n} dispatches: more than one query set holds"
            )));
        }
        let qs = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("maple profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let host = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("maple forward (profiled)"),
            });
        self.encode(&mut enc, Some(&qs));
        enc.resolve_query_set(&qs, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &host, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        pollster::block_on(read_f32(gpu, &self.readback, self.out_len))?;
        let words = pollster::block_on(read_u32(gpu, &host, 2 * count as usize))?;
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut p = Profile {
            kernels: Vec::new(),
            dispatches: n,
        };
        let ticks = |i: usize| words[2 * i] as u64 | (words[2 * i + 1] as u64) << 32;
        let mut d = 0;
        for op in &self.ops {
            let Op::Dispatch(x) = op else { continue };
            let secs = ticks(2 * d + 1).saturating_sub(ticks(2 * d)) as f64 * period;
            d += 1;
            let row = match p.kernels.iter_mut().position(|k| k.name == x.name) {
                Some(i) => &mut p.kernels[i],
                None => {
                    p.kernels.push(KernelTime {
                        name: x.name.clone(),
                        dispatches: 0,
                        seconds: 0.0,
                        flops: 0.0,
                        bytes: 0.0,
                    });
                    p.kernels.last_mut().expect("just pushed")
                }
            };
            row.dispatches += 1;
            row.seconds += secs;
            row.flops += x.flops;
            row.bytes += x.bytes;
        }
        Ok(p)
    }
}

/// Maps `buf`, waits, and copies out its first `len` words.
async fn read_words(gpu: &Gpu, buf: &wgpu::Buffer, len: usize) -> Result<Vec<[u8; 4]>> {
    let slice = buf.slice(..);
    let done = Oneshot::default();
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
    let out = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| GpuError(format!("readback failed: {e}")))?;
        view.chunks_exact(4)
            .take(len)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect()
    };
    buf.unmap();
    Ok(out)
}

async fn read_f32(gpu: &Gpu, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let w = read_words(gpu, buf, len).await?;
    Ok(w.into_iter().map(f32::from_le_bytes).collect())
}

#[cfg(not(target_arch = "wasm32"))]
async fn read_u32(gpu: &Gpu, buf: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
    let w = read_words(gpu, buf, len).await?;
    Ok(w.into_iter().map(u32::from_le_bytes).collect())
}

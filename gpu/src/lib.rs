//! maple-gpu: the towers on any GPU wgpu reaches (Vulkan, Metal, DX12, WebGPU), from the WGSL
//! kernels in `shaders/`. Host code only uploads, binds and dispatches:
//! weights are uploaded once (one buffer per tensor), pipelines are created once, and for each
//! batch size a [`Plan`] (activation buffers, bind groups, dispatch list) is built once, so a
//! forward pass is one command buffer and one readback. Every wgpu error is captured (never a
//! panic) and returned as [`GpuError`], so callers can fall back to the CPU.

#![warn(missing_docs)]

mod oneshot;
mod plan;
pub mod testing;
mod weights;

pub use plan::Plan;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Anything wgpu reported (adapter, device, validation, out of memory, lost device), as one line.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuError(pub String);

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for GpuError {}

/// `Result` with [`GpuError`].
pub type Result<T> = std::result::Result<T, GpuError>;

/// Which adapters are acceptable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AdapterChoice {
    /// Hardware GPUs only (integrated, discrete, virtual).
    Hardware,
    /// Any adapter, software ones (lavapipe, SwiftShader, WARP) included.
    Any,
}

pub(crate) const MATMUL: &str = include_str!("../shaders/matmul.wgsl");
pub(crate) const ATTENTION: &str = include_str!("../shaders/attention.wgsl");
pub(crate) const LAYERNORM: &str = include_str!("../shaders/layernorm.wgsl");
pub(crate) const EMBED: &str = include_str!("../shaders/embed.wgsl");
pub(crate) const SPLICE: &str = include_str!("../shaders/splice.wgsl");
pub(crate) const L2NORM: &str = include_str!("../shaders/l2norm.wgsl");

/// Every compute pipeline, created once per device.
pub(crate) struct Kernels {
    pub matmul: wgpu::ComputePipeline,
    pub matmul_f16: Option<wgpu::ComputePipeline>,
    pub attention: wgpu::ComputePipeline,
    pub layernorm: wgpu::ComputePipeline,
    pub im2col: wgpu::ComputePipeline,
    pub assemble: wgpu::ComputePipeline,
    pub gather: wgpu::ComputePipeline,
    pub add_pos: wgpu::ComputePipeline,
    pub splice: wgpu::ComputePipeline,
    pub l2norm: wgpu::ComputePipeline,
}

/// An open device with its kernels.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// Whether f16 weight storage is available (`SHADER_F16`).
    pub shader_f16: bool,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Gpu {
    /// Opens the first suitable adapter, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(choice: AdapterChoice) -> Result<Self> {
        pollster::block_on(Self::open_async(choice))
    }

    /// Opens the first suitable adapter (`WGPU_BACKEND` and friends are honoured natively).
    pub async fn open_async(choice: AdapterChoice) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // GL is a secondary backend: probing it prints EGL noise on headless machines and its
        // software adapter compiles shaders slowly. Use it only when WGPU_BACKEND asks for it.
        if cfg!(not(target_arch = "wasm32")) && std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|_| {
                GpuError("no GPU adapter found (no Vulkan, Metal or DX12 driver answered)".into())
            })?;
        let info = adapter.get_info();
        if choice == AdapterChoice::Hardware && info.device_type == wgpu::DeviceType::Cpu {
            return Err(GpuError(format!(
                "only a software adapter is available: {}",
                info.name
            )));
        }
        let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let required_features = if shader_f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        // Only what the kernels need: WebGPU's defaults (≤ 128 MiB per binding, 256 invocations).
        let required_limits = wgpu::Limits::default();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("maple"),
                required_features,
                required_limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError(format!("cannot open {} ({e})", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |_, msg| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost: {msg}"));
            }
        });
        let kernels = Kernels::new(&device, shader_f16);
        let gpu = Gpu {
            device,
            queue,
            kernels,
            info,
            shader_f16,
            errors,
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// One line for people: adapter name and backend.
    pub fn describe(&self) -> String {
        // Browsers do not expose adapter names.
        let name = if self.info.name.is_empty() {
            "WebGPU adapter"
        } else {
            &self.info.name
        };
        format!(
            "{name} ({:?}, {:?})",
            self.info.backend, self.info.device_type
        )
    }

    /// Returns (and clears) the first error wgpu reported since the last check.
    pub(crate) fn check(&self) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| GpuError("error log poisoned".into()))?;
        let first = v.drain(..).next();
        match first {
            Some(e) => Err(GpuError(format!(
                "GPU error: {}",
                e.split_whitespace().collect::<Vec<_>>().join(" ")
            ))),
            None => Ok(()),
        }
    }
}

impl Kernels {
    fn new(device: &wgpu::Device, f16: bool) -> Self {
        let module = |label: &str, src: String| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
            })
        };
        let pipe = |m: &wgpu::ShaderModule, entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let mm = module("matmul", format!("alias WT = f32;\n{MATMUL}"));
        let mm16 = f16.then(|| {
            module(
                "matmul_f16",
                format!("enable f16;\nalias WT = f16;\n{MATMUL}"),
            )
        });
        let embed = module("embed", EMBED.to_string());
        Kernels {
            matmul: pipe(&mm, "main"),
            matmul_f16: mm16.as_ref().map(|m| pipe(m, "main")),
            attention: pipe(&module("attention", ATTENTION.to_string()), "main"),
            layernorm: pipe(&module("layernorm", LAYERNORM.to_string()), "main"),
            im2col: pipe(&embed, "im2col"),
            assemble: pipe(&embed, "assemble"),
            gather: pipe(&embed, "gather"),
            add_pos: pipe(&embed, "add_pos"),
            splice: pipe(&module("splice", SPLICE.to_string()), "main"),
            l2norm: pipe(&module("l2norm", L2NORM.to_string()), "main"),
        }
    }
}

pub use weights::{GpuModel, Precision};

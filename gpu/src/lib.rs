//! maple-gpu: the towers on any GPU wgpu reaches (Vulkan, Metal, DX12, WebGPU), from the WGSL
//! kernels in `shaders/`. Host code only uploads, binds and dispatches:
//! weights are uploaded once (one buffer per tensor), pipelines are created once per variant,
//! and for each batch size a [`Plan`] (activation buffers, bind groups, dispatch list) is
//! recorded once, so a forward pass is one command buffer and one readback. Every wgpu error is
//! captured (never a panic) and returned as [`GpuError`], so callers can fall back to the CPU.
//!
//! Modules, leaves first: `weights` (tensors on the device), `plan` (recording and running a
//! dispatch list, GPU timestamps), `kernels/*` (one file per WGSL family: its parameter struct
//! and the host code that binds and dispatches it), `forward` (the two towers, mirroring
//! `maple_core::model`), `model` ([`GpuModel`]: upload + cached plans).

#![warn(missing_docs)]

mod forward;
mod kernels;
mod model;
mod oneshot;
mod plan;
pub mod testing;
mod weights;

pub use kernels::{shader_variants, KernelSet, ShaderVariant};
pub use model::GpuModel;
pub use plan::{KernelTime, Plan, Profile};
pub use weights::Precision;

use std::collections::HashMap;
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

/// The environment variable that overrides the kernel set chosen for the adapter.
pub const KERNELS_ENV: &str = "MAPLE_GPU_KERNELS";

/// An open device, its pipelines (created on first use, once per variant) and the kernel set.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// Whether f16 weight storage is available (`SHADER_F16`).
    pub shader_f16: bool,
    /// Whether compute passes can write GPU timestamps (`TIMESTAMP_QUERY`): [`Plan::profile`].
    pub timestamps: bool,
    /// The subgroup size, where cooperative 16×16×16 f16 matrices with f32 accumulation were
    /// asked for (`MAPLE_GPU_KERNELS=coopmat`) and granted; `None` otherwise.
    pub coop_subgroup: Option<u32>,
    kernels: KernelSet,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.describe())
            .field("kernels", &self.kernels)
            .finish()
    }
}

impl Gpu {
    /// Opens the first suitable adapter, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(choice: AdapterChoice) -> Result<Self> {
        pollster::block_on(Self::open_async(choice))
    }

    /// Opens the first suitable adapter (`WGPU_BACKEND` and friends are honoured natively).
    /// The kernel set is the adapter's default ([`KernelSet::for_adapter`]) unless
    /// `MAPLE_GPU_KERNELS` names one (an unknown name is an error that lists the valid ones).
    pub async fn open_async(choice: AdapterChoice) -> Result<Self> {
        let from_env = KernelSet::from_env()?;
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
            return Err(GpuError(if info.name.is_empty() {
                "only a software adapter is available (browsers name none)".to_string()
            } else {
                format!("only a software adapter is available: {}", info.name)
            }));
        }
        let offered = adapter.features();
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
        // Cooperative matrices are experimental in wgpu: asked for only by name.
        let coop_subgroup = if from_env == Some(KernelSet::CoopMatrix) {
            let sg = coop_matrix_subgroup(&adapter, &info)
                .map_err(|why| GpuError(format!("{KERNELS_ENV}=coopmat: {} {why}", info.name)))?;
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            Some(sg)
        } else {
            None
        };
        let required_features = offered & wanted;
        let experimental_features = if coop_subgroup.is_some() {
            // SAFETY: wgpu asks the caller to accept that its experimental features may have
            // bugs; only the cooperative-matrix matmul uses one, and only when asked for by name.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        // Only what the kernels need: WebGPU's defaults (≤ 128 MiB per binding, 256
        // invocations, 16 KiB of workgroup memory), so the browser build runs the same kernels.
        let required_limits = wgpu::Limits::default();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("maple"),
                required_features,
                required_limits,
                experimental_features,
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
        let kernels = from_env.unwrap_or_else(|| KernelSet::for_adapter(&info));
        let timer = queue_has_timer(&queue);
        let gpu = Gpu {
            device,
            queue,
            shader_f16: required_features.contains(wgpu::Features::SHADER_F16),
            timestamps: required_features.contains(wgpu::Features::TIMESTAMP_QUERY) && timer,
            coop_subgroup,
            info,
            kernels,
            pipelines: Mutex::default(),
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

    /// The kernel set forward passes record with.
    pub fn kernels(&self) -> KernelSet {
        self.kernels
    }

    /// Records later plans with `k` (plans already recorded keep theirs; see
    /// [`GpuModel::set_kernels`]).
    pub fn set_kernels(&mut self, k: KernelSet) {
        self.kernels = k;
    }

    /// The compute pipeline `entry` of the WGSL `source()` (built on first use under `key`).
    pub(crate) fn pipeline(
        &self,
        key: &str,
        entry: &str,
        source: impl FnOnce() -> String,
    ) -> wgpu::ComputePipeline {
        let mut cache = match self.pipelines.lock() {
            Ok(c) => c,
            Err(e) => e.into_inner(),
        };
        let full = format!("{key}:{entry}");
        if let Some(p) = cache.get(&full) {
            return p.clone();
        }
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(source().into()),
            });
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&full),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        cache.insert(full, p.clone());
        p
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

/// The subgroup size for the cooperative-matrix matmul, or why the adapter cannot run it: it
/// needs `EXPERIMENTAL_COOPERATIVE_MATRIX` with 16×16×16 f16 × f16 + f32 matrices, f16 shaders,
/// and one subgroup size (a workgroup is one subgroup).
fn coop_matrix_subgroup(
    adapter: &wgpu::Adapter,
    info: &wgpu::AdapterInfo,
) -> std::result::Result<u32, String> {
    let f = adapter.features();
    if !f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return Err("offers no cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX)".into());
    }
    if !f.contains(wgpu::Features::SHADER_F16) {
        return Err("has no SHADER_F16".into());
    }
    let fits = adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    });
    if !fits {
        return Err("offers no 16×16×16 f16 cooperative matrices with f32 accumulation".into());
    }
    if info.subgroup_min_size != info.subgroup_max_size || info.subgroup_min_size == 0 {
        return Err(format!(
            "has subgroups of {} to {} invocations; the kernel needs one size",
            info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    Ok(info.subgroup_min_size)
}

/// Vulkan reports a timestamp period of 0 when the queue has no timer.
fn queue_has_timer(q: &wgpu::Queue) -> bool {
    q.get_timestamp_period() > 0.0
}

//! The kernels' host code, one file per WGSL family in `shaders/`: each file holds the family's
//! parameter struct (`#[repr(C)]`, laid out as the WGSL `Params`), the WGSL source of each of its
//! variants, and a [`Recorder`](crate::plan::Recorder) method that picks the variant, binds and
//! dispatches it.

pub(crate) mod attention;
pub(crate) mod embed;
pub(crate) mod l2norm;
pub(crate) mod layernorm;
pub(crate) mod matmul;
pub(crate) mod splice;

/// Which kernel variants a forward pass records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSet {
    /// One invocation per output tile or row, no workgroup memory, no barriers: the fastest on
    /// CPU-emulated adapters (lavapipe, SwiftShader), where a barrier costs a thread switch.
    Simple,
    /// Workgroup-memory tiles: matmul in BM×BN tiles sized per shape, attention in one pass
    /// with online softmax over K/V tiles, LayerNorm with a workgroup per row. For real GPUs.
    Tiled,
    /// `Tiled`, with the f16-weight matmuls (`--precision f16`) on cooperative 16×16×16
    /// matrices (tensor cores; f32 accumulation) where the adapter offers them through wgpu's
    /// experimental `EXPERIMENTAL_COOPERATIVE_MATRIX`. Only when asked for by name
    /// (`MAPLE_GPU_KERNELS=coopmat`): never a default until measured on a real GPU.
    CoopMatrix,
}

impl KernelSet {
    /// Every set, in the order tests run them.
    pub const ALL: [KernelSet; 3] = [KernelSet::Simple, KernelSet::Tiled, KernelSet::CoopMatrix];

    /// The name `MAPLE_GPU_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Simple => "simple",
            KernelSet::Tiled => "tiled",
            KernelSet::CoopMatrix => "coopmat",
        }
    }

    /// The set `MAPLE_GPU_KERNELS` names, if it is set; an unknown name is an error that
    /// lists the valid ones (also for a CPU-only run that wants to say so before falling back).
    pub fn from_env() -> Result<Option<Self>, crate::GpuError> {
        match std::env::var(crate::KERNELS_ENV) {
            Ok(v) => Self::from_name(&v).map(Some).ok_or_else(|| {
                crate::GpuError(format!(
                    "{}={v:?} is not a kernel set; use one of: {}",
                    crate::KERNELS_ENV,
                    Self::ALL.map(|k| k.name()).join(", ")
                ))
            }),
            Err(_) => Ok(None),
        }
    }

    /// The set called `name` (as [`KernelSet::name`] spells it, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The default for an adapter: `Simple` on software adapters, `Tiled` on everything else.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Self {
        if info.device_type == wgpu::DeviceType::Cpu {
            KernelSet::Simple
        } else {
            KernelSet::Tiled
        }
    }
}

/// One WGSL module the host can build, as the device compiles it (constants prepended).
#[derive(Clone, Debug)]
pub struct ShaderVariant {
    /// Family and variant, e.g. `matmul tiled 64×64 f16`.
    pub name: String,
    /// The complete WGSL source.
    pub source: String,
    /// Its entry points.
    pub entries: Vec<&'static str>,
    /// Whether it needs `SHADER_F16`.
    pub f16: bool,
    /// Whether it needs cooperative matrices (`wgpu_cooperative_matrix`): Vulkan only here,
    /// since naga writes them for SPIR-V (MSL has only 8×8 simdgroup matrices; HLSL none).
    pub coop_matrix: bool,
}

/// Every WGSL module the host can build for a CLIP ViT-B/16-like model (head dimensions 32, 64
/// and 128), f16 variants included: what the naga cross-compilation test translates for each
/// backend.
pub fn shader_variants() -> Vec<ShaderVariant> {
    let mut v = Vec::new();
    for f16 in [false, true] {
        for tile in matmul::TILES {
            v.push(ShaderVariant {
                name: format!("matmul {}{}", tile.name(), if f16 { " f16" } else { "" }),
                source: matmul::source(&tile, f16),
                entries: vec!["main", "tiled"],
                f16,
                coop_matrix: false,
            });
        }
    }
    for sg in [32, 64] {
        v.push(ShaderVariant {
            name: format!("matmul coopmat sg{sg}"),
            source: matmul::coop_source(sg),
            entries: vec!["main"],
            f16: true,
            coop_matrix: true,
        });
    }
    for hd in [32, 64, 128] {
        v.push(ShaderVariant {
            name: format!("attention hd {hd}"),
            source: attention::source(hd),
            entries: vec!["main", "tiled"],
            f16: false,
            coop_matrix: false,
        });
    }
    let plain = |name: &str, source: &str, entries: Vec<&'static str>| ShaderVariant {
        name: name.into(),
        source: source.into(),
        entries,
        f16: false,
        coop_matrix: false,
    };
    v.push(plain("layernorm", layernorm::SOURCE, vec!["main", "rows"]));
    v.push(plain(
        "embed",
        embed::SOURCE,
        vec!["im2col", "assemble", "gather", "add_pos"],
    ));
    v.push(plain("splice", splice::SOURCE, vec!["main"]));
    v.push(plain("l2norm", l2norm::SOURCE, vec!["main"]));
    v
}

//! Every WGSL module the host can build, through naga to each backend's language: SPIR-V
//! (Vulkan; then validated by `spirv-val` from SPIRV-Tools ≥ 2024, which knows cooperative
//! matrices), MSL (Metal) and HLSL (DX12), with the options wgpu uses on those backends. A shader
//! that lavapipe accepts but Metal or DX12 would reject fails here, on Linux.
//!
//! One known difference is set aside: naga 30 puts an `ArrayStride` decoration on arrays in
//! workgroup memory, which SPIRV-Tools 2025 rejects (VUID-StandaloneSpirv-None-10684, a rule
//! newer than the drivers, which accept it: lavapipe runs these modules). The test removes those
//! decorations, and only those, before validating.

use maple_gpu::shader_variants;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use std::process::Command;

fn module(name: &str, src: &str, f16: bool, coop: bool) -> (naga::Module, naga::valid::ModuleInfo) {
    let m = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: WGSL does not parse:\n{}", e.emit_to_string(src)));
    let mut caps = Capabilities::default();
    if f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if coop {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&m)
        .unwrap_or_else(|e| panic!("{name}: naga validation:\n{}", e.emit_to_string(src)));
    (m, info)
}

#[test]
fn every_shader_variant_translates_to_spirv_msl_and_hlsl() {
    let variants = shader_variants();
    assert!(variants.len() >= 10, "{} variants", variants.len());
    let dir = std::env::temp_dir().join(format!("maple-spirv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spirv_words = 0;
    for v in &variants {
        let (m, info) = module(&v.name, &v.source, v.f16, v.coop_matrix);
        for &e in &v.entries {
            assert!(
                m.entry_points.iter().any(|ep| ep.name == e),
                "{}: no entry point {e}",
                v.name
            );
        }
        // SPIR-V 1.3 (Vulkan 1.1), every entry point in one module, then spirv-val.
        let spv_opts = naga::back::spv::Options {
            lang_version: (1, 3),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&m, &info, &spv_opts, None)
            .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", v.name));
        spirv_words += words.len();
        let path = dir.join(format!("{}.spv", v.name.replace([' ', '×'], "_")));
        let stripped = strip_workgroup_array_strides(&words);
        std::fs::write(&path, bytemuck_words(&stripped)).unwrap();
        let out = Command::new(spirv_val())
            .arg("--target-env")
            .arg("vulkan1.1")
            .arg(&path)
            .output()
            .expect("spirv-val (SPIRV-Tools ≥ 2024 for cooperative matrices; tools/test.sh installs it and sets SPIRV_VAL)");
        assert!(
            out.status.success(),
            "{}: spirv-val rejects the SPIR-V:\n{}",
            v.name,
            String::from_utf8_lossy(&out.stderr)
        );
        if v.coop_matrix {
            // naga writes 16×16 cooperative matrices for SPIR-V only (Metal's simdgroup
            // matrices are 8×8; HLSL has none): wgpu offers the feature on Vulkan here.
            eprintln!(
                "{}: SPIR-V {} words (spirv-val ok); Vulkan only",
                v.name,
                words.len()
            );
            continue;
        }
        // MSL 2.4 (what wgpu asks of Apple GPUs it supports), each entry point.
        let msl_opts = naga::back::msl::Options {
            lang_version: (2, 4),
            ..Default::default()
        };
        let (msl, _) = naga::back::msl::write_string(
            &m,
            &info,
            &msl_opts,
            &naga::back::msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: MSL: {e}", v.name));
        assert!(msl.contains("kernel void"), "{}: no MSL kernel", v.name);
        // HLSL shader model 6.2 for f16 (wgpu's DX12 needs DXC there), 5.1 otherwise.
        let hlsl_opts = naga::back::hlsl::Options {
            shader_model: if v.f16 {
                naga::back::hlsl::ShaderModel::V6_2
            } else {
                naga::back::hlsl::ShaderModel::V5_1
            },
            ..Default::default()
        };
        let mut hlsl = String::new();
        naga::back::hlsl::Writer::new(
            &mut hlsl,
            &hlsl_opts,
            &naga::back::hlsl::PipelineOptions::default(),
        )
        .write(&m, &info, None)
        .unwrap_or_else(|e| panic!("{}: HLSL: {e}", v.name));
        assert!(hlsl.contains("[numthreads("), "{}: no HLSL kernel", v.name);
        eprintln!(
            "{}: SPIR-V {} words (spirv-val ok), MSL {} bytes, HLSL {} bytes",
            v.name,
            words.len(),
            msl.len(),
            hlsl.len()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("{} variants, {spirv_words} SPIR-V words", variants.len());
}

/// `words` without the `ArrayStride` decorations of array types that only workgroup-memory
/// pointers point to (see the module's header).
fn strip_workgroup_array_strides(words: &[u32]) -> Vec<u32> {
    const OP_TYPE_ARRAY: u32 = 28;
    const OP_TYPE_POINTER: u32 = 32;
    const OP_DECORATE: u32 = 71;
    const WORKGROUP: u32 = 4;
    const ARRAY_STRIDE: u32 = 6;
    let insts = || {
        let mut i = 5; // after the header
        std::iter::from_fn(move || {
            let n = (*words.get(i)? >> 16) as usize;
            let inst = &words[i..i + n.max(1)];
            i += n.max(1);
            Some(inst)
        })
    };
    let arrays: Vec<u32> = insts()
        .filter(|w| w[0] & 0xffff == OP_TYPE_ARRAY)
        .map(|w| w[1])
        .collect();
    let pointee = |class_is_wg: bool| -> Vec<u32> {
        insts()
            .filter(|w| w[0] & 0xffff == OP_TYPE_POINTER && (w[2] == WORKGROUP) == class_is_wg)
            .map(|w| w[3])
            .collect()
    };
    let (wg, other) = (pointee(true), pointee(false));
    let only_wg: Vec<u32> = arrays
        .into_iter()
        .filter(|a| wg.contains(a) && !other.contains(a))
        .collect();
    let mut out = words[..5].to_vec();
    for w in insts() {
        let drop = w[0] & 0xffff == OP_DECORATE && w[2] == ARRAY_STRIDE && only_wg.contains(&w[1]);
        if !drop {
            out.extend_from_slice(w);
        }
    }
    out
}

/// `SPIRV_VAL` if set, else `spirv-val` on the PATH.
fn spirv_val() -> std::ffi::OsString {
    std::env::var_os("SPIRV_VAL").unwrap_or_else(|| "spirv-val".into())
}

fn bytemuck_words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

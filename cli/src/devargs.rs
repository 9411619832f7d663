//! `--device` and `--precision` as maple-classify and maple-eval take them.

use clap::ValueEnum;
use maple::{Device, Precision};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum DeviceArg {
    /// A hardware GPU if there is one, else the CPU (a notice on stderr says which).
    Auto,
    /// Any GPU adapter, software ones (lavapipe, SwiftShader) included; an error if none.
    Gpu,
    /// The CPU.
    Cpu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum PrecisionArg {
    F32,
    /// f16 weight storage on GPUs with shader-f16 (f32 math); logits within ~1e-2.
    F16,
    /// int8 image-tower Linears on the CPU, about three times as fast; logits within ~0.1 of f32.
    Int8,
    /// bf16 image-tower Linears on CPUs with AVX-512 BF16 or Arm BF16, about 1.3× as fast;
    /// logits within ~0.05 of f32.
    Bf16,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Cpu => Device::Cpu,
        }
    }
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

// LayerNorm over rows of width d (biased variance, eps from the config), one invocation per row.
// Source row r is `src_first + r · src_stride` (stride 1: every row; stride T: the CLS row of
// each sequence), written to row r of `out`.

struct Params {
    rows: u32, d: u32, src_first: u32, src_stride: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) {
        return;
    }
    let src = (p.src_first + r * p.src_stride) * p.d;
    var mean = 0.0;
    for (var i = 0u; i < p.d; i++) {
        mean += x[src + i];
    }
    mean /= f32(p.d);
    var var_ = 0.0;
    for (var i = 0u; i < p.d; i++) {
        let c = x[src + i] - mean;
        var_ += c * c;
    }
    let inv = 1.0 / sqrt(var_ / f32(p.d) + p.eps);
    let dst = r * p.d;
    for (var i = 0u; i < p.d; i++) {
        out[dst + i] = (x[src + i] - mean) * inv * weight[i] + bias[i];
    }
}

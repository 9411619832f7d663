// LayerNorm over rows of width d (biased variance, eps from the config).
// Source row r is `src_first + r · src_stride` (stride 1: every row; stride T: the CLS row of
// each sequence), written to row r of `out`.
//
// Two entry points:
// - `main`: one invocation per row, three serial passes (mean, variance, write). Fastest on
//   CPU-emulated adapters.
// - `rows`: one workgroup of WG invocations per row: each sums a strided slice, the workgroup
//   reduces through workgroup memory (mean, then the centred sum of squares: the same two-pass
//   variance as the CPU), then each writes its slice.

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

const WG: u32 = 128u;
var<workgroup> partial: array<f32, WG>;

// Sum of every invocation's `v`, returned to all of them.
fn workgroup_sum(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step /= 2u) {
        if (li < step) {
            partial[li] += partial[li + step];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wg.x + wg.y * 65535u;
    if (r >= p.rows) {
        return;   // the whole workgroup: r is uniform
    }
    let src = (p.src_first + r * p.src_stride) * p.d;
    var s = 0.0;
    for (var i = li; i < p.d; i += WG) {
        s += x[src + i];
    }
    let mean = workgroup_sum(li, s) / f32(p.d);
    var q = 0.0;
    for (var i = li; i < p.d; i += WG) {
        let c = x[src + i] - mean;
        q += c * c;
    }
    let inv = 1.0 / sqrt(workgroup_sum(li, q) / f32(p.d) + p.eps);
    let dst = r * p.d;
    for (var i = li; i < p.d; i += WG) {
        out[dst + i] = (x[src + i] - mean) * inv * weight[i] + bias[i];
    }
}

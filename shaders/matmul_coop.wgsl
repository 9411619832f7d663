// C[m, n] (+)= alpha · Σ_k A[m, k] · W[n, k] + bias[n], then optional QuickGELU — on tensor
// cores: cooperative 16×16×16 matrices (wgpu's experimental `wgpu_cooperative_matrix`), f16
// inputs, f32 accumulation. W is the f16 Linear weight [n, k]; A (f32 activations) is rounded to
// f16 as it is staged. The host prepends `enable f16; enable wgpu_cooperative_matrix;` and
// `const SG: u32 = …;` (the adapter's subgroup size: one subgroup per workgroup, since the
// matrices belong to a subgroup), and uses this kernel only where k and n are multiples of 16.
//
// A workgroup computes a 32×32 block of C as 2×2 accumulators. Per step of 16 along k it stages
// A's 32×16 slice (zero past row m) in workgroup memory as f16, loads W's two 16×16 slices
// straight from the weight buffer (W [n, k] row-major is B = Wᵀ column-major), and does four
// multiply-adds. The accumulators go through workgroup memory to the shared epilogue, which
// checks bounds, so m needs no padding.

struct Params {
    m: u32, n: u32, k: u32,
    lda: u32,     // row stride of A (elements)
    ldc: u32,     // row stride of C
    a_off: u32,   // first element of A
    c_off: u32,   // first element of C
    flags: u32,   // 1 = add bias, 2 = QuickGELU, 4 = accumulate into C (residual)
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 16u;

var<workgroup> a_tile: array<f16, 512>;     // [BM, BK] row-major
var<workgroup> c_tile: array<f32, 1024>;    // [BM, BN] row-major

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    var c00: coop_mat16x16<f32, C>;
    var c01: coop_mat16x16<f32, C>;
    var c10: coop_mat16x16<f32, C>;
    var c11: coop_mat16x16<f32, C>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = li; e < BM * BK; e += SG) {
            let r = e / BK;
            var v = 0.0;
            if (m0 + r < p.m) {
                v = a[p.a_off + (m0 + r) * p.lda + k0 + e % BK];
            }
            a_tile[e] = f16(v);
        }
        workgroupBarrier();
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[0], BK);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[16u * BK], BK);
        // Columns n0.. and n0 + 16.. of B = rows of W; a block past n reads the last full one.
        let n1 = min(n0 + 16u, p.n - 16u);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&w[n0 * p.k + k0], p.k);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&w[n1 * p.k + k0], p.k);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
        workgroupBarrier();
    }
    coopStoreT(c00, &c_tile[0], BN);
    coopStoreT(c01, &c_tile[16], BN);
    coopStoreT(c10, &c_tile[16u * BN], BN);
    coopStoreT(c11, &c_tile[16u * BN + 16u], BN);
    workgroupBarrier();
    for (var e = li; e < BM * BN; e += SG) {
        let r = m0 + e / BN;
        let col = n0 + e % BN;
        if (r < p.m && col < p.n) {
            var v = p.alpha * c_tile[e];
            if ((p.flags & 1u) != 0u) {
                v += bias[col];
            }
            if ((p.flags & 2u) != 0u) {
                v = quick_gelu(v);
            }
            let o = p.c_off + r * p.ldc + col;
            if ((p.flags & 4u) != 0u) {
                v += c[o];
            }
            c[o] = v;
        }
    }
}

// C[m, n] (+)= alpha · Σ_k A[m, k] · W[n, k] + bias[n], then optional QuickGELU.
// W is a PyTorch Linear weight [n, k] (y = x·Wᵀ), stored as WT (f32, or f16 with `enable f16`).
// The host prepends `alias WT = …;` and the tile constants BM, BN, BK, TM, TN (u32).
//
// Two entry points:
// - `main`: register-blocked, no workgroup memory. Each invocation computes a 4×4 tile of C from
//   4 rows of A and 4 rows of W, 4 values of k at a time. Fastest on CPU-emulated adapters
//   (lavapipe, SwiftShader), where barriers are expensive; load-bound on real GPUs.
// - `tiled`: a workgroup computes a BM×BN tile of C. Per step of BK along k it stages an
//   A tile [BM, BK] and a W tile [BN, BK] in workgroup memory (global reads: consecutive
//   invocations read consecutive k of one row, so they coalesce), stored k-major so that each
//   invocation then reads TM values of A and TN of W per k and does TM·TN FMAs in registers.
//   Invocation (x, y) owns rows y + i·WY and columns x + j·WX of the tile: neighbours read
//   neighbouring words of workgroup memory and write neighbouring columns of C.

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
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

// The epilogue shared by both entry points: scale, bias, QuickGELU, residual, store.
fn store(r: u32, col: u32, acc: f32) {
    var v = p.alpha * acc;
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

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    // Clamp reads to valid rows/columns; out-of-range results are never stored.
    var ra: array<u32, 4>;
    var rw: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        ra[i] = p.a_off + min(row0 + i, p.m - 1u) * p.lda;
        rw[i] = min(col0 + i, p.n - 1u) * p.k;
    }
    var acc: array<vec4<f32>, 4>;
    var k = 0u;
    for (; k + 4u <= p.k; k += 4u) {
        var wv: array<vec4<f32>, 4>;
        for (var j = 0u; j < 4u; j++) {
            let b = rw[j] + k;
            wv[j] = vec4<f32>(f32(w[b]), f32(w[b + 1u]), f32(w[b + 2u]), f32(w[b + 3u]));
        }
        for (var i = 0u; i < 4u; i++) {
            let b = ra[i] + k;
            let av = vec4<f32>(a[b], a[b + 1u], a[b + 2u], a[b + 3u]);
            acc[i] += vec4<f32>(dot(av, wv[0]), dot(av, wv[1]), dot(av, wv[2]), dot(av, wv[3]));
        }
    }
    for (; k < p.k; k++) {
        for (var i = 0u; i < 4u; i++) {
            let av = a[ra[i] + k];
            acc[i] += av * vec4<f32>(f32(w[rw[0] + k]), f32(w[rw[1] + k]), f32(w[rw[2] + k]), f32(w[rw[3] + k]));
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + i;
        if (r >= p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col >= p.n) {
                break;
            }
            store(r, col, acc[i][j]);
        }
    }
}

const WX: u32 = BN / TN;       // invocations along n
const WY: u32 = BM / TM;       // invocations along m
const THREADS: u32 = WX * WY;
const SA: u32 = BM + 4u;       // row pitch of the k-major tiles (padded against bank conflicts)
const SW: u32 = BN + 4u;

var<workgroup> a_tile: array<f32, BK * SA>;   // a_tile[kk · SA + r] = A[m0 + r, k0 + kk]
var<workgroup> w_tile: array<f32, BK * SW>;   // w_tile[kk · SW + j] = W[n0 + j, k0 + kk]

@compute @workgroup_size(WX, WY)
fn tiled(@builtin(workgroup_id) wg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    var acc: array<array<f32, TN>, TM>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = li; e < BM * BK; e += THREADS) {
            let r = e / BK;
            let kk = e % BK;
            var v = 0.0;
            if (m0 + r < p.m && k0 + kk < p.k) {
                v = a[p.a_off + (m0 + r) * p.lda + k0 + kk];
            }
            a_tile[kk * SA + r] = v;
        }
        for (var e = li; e < BN * BK; e += THREADS) {
            let j = e / BK;
            let kk = e % BK;
            var v = 0.0;
            if (n0 + j < p.n && k0 + kk < p.k) {
                v = f32(w[(n0 + j) * p.k + k0 + kk]);
            }
            w_tile[kk * SW + j] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, TM>;
            var wv: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                av[i] = a_tile[kk * SA + lid.y + i * WY];
            }
            for (var j = 0u; j < TN; j++) {
                wv[j] = w_tile[kk * SW + lid.x + j * WX];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let r = m0 + lid.y + i * WY;
        if (r >= p.m) {
            break;
        }
        for (var j = 0u; j < TN; j++) {
            let col = n0 + lid.x + j * WX;
            if (col < p.n) {
                store(r, col, acc[i][j]);
            }
        }
    }
}

// C[m, n] (+)= alpha · Σ_k A[m, k] · W[n, k] + bias[n], then optional QuickGELU.
// W is a PyTorch Linear weight [n, k] (y = x·Wᵀ), stored as WT (f32, or f16 with `enable f16`);
// the host prepends `alias WT = …;`. Register-blocked: each invocation computes a 4×4 tile of C,
// reading 4 rows of A and 4 rows of W per step of 4 along k (no shared memory: it is the
// fastest layout on CPU-emulated devices and fine on GPUs for these sizes).

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
            var v = p.alpha * acc[i][j];
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

// Multi-head attention on a fused qkv buffer [seqs·t, 3d] (q | k | v per row) → out [seqs·t, d].
// causal = 1: query i sees keys 0..=i (text tower). The host prepends `const HD: u32 = …;`
// (the head dimension d / heads) for `tiled`.
//
// Two entry points:
// - `main`: one invocation per (sequence, head, query row): a max pass over the scores, then an
//   exp-sum pass accumulating softmax·V; q·k is computed in both passes and nothing is shared.
//   Fastest on CPU-emulated adapters.
// - `tiled`: one workgroup per (sequence, head, block of BQ query rows), one invocation per
//   query, q and the output row in registers. Keys and values stream through workgroup memory
//   BKV rows at a time; each invocation keeps a running max and sum (online softmax) and
//   rescales its accumulator when the max grows, so q·k is computed once and every K/V value
//   is read from global memory once per block of BQ queries.

struct Params {
    seqs: u32, t: u32, d: u32, heads: u32,
    causal: u32, scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const MAX_HEAD_DIM: u32 = 128u;

fn score(q: u32, kr: u32, hd: u32) -> f32 {
    var s = 0.0;
    var c = 0u;
    for (; c + 4u <= hd; c += 4u) {
        s += dot(vec4<f32>(qkv[q + c], qkv[q + c + 1u], qkv[q + c + 2u], qkv[q + c + 3u]),
                 vec4<f32>(qkv[kr + c], qkv[kr + c + 1u], qkv[kr + c + 2u], qkv[kr + c + 3u]));
    }
    for (; c < hd; c++) {
        s += qkv[q + c] * qkv[kr + c];
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * 65535u * 64u;
    if (idx >= p.seqs * p.heads * p.t) {
        return;
    }
    let i = idx % p.t;
    let h = (idx / p.t) % p.heads;
    let s = idx / (p.t * p.heads);
    let hd = p.d / p.heads;
    let row = 3u * p.d;
    let base = s * p.t * row;
    let q = base + i * row + h * hd;
    var lim = p.t;
    if (p.causal != 0u) {
        lim = i + 1u;
    }
    var mx = -3.4e38;
    for (var j = 0u; j < lim; j++) {
        mx = max(mx, score(q, base + j * row + p.d + h * hd, hd) * p.scale);
    }
    var acc: array<f32, MAX_HEAD_DIM>;
    var sum = 0.0;
    for (var j = 0u; j < lim; j++) {
        let e = exp(score(q, base + j * row + p.d + h * hd, hd) * p.scale - mx);
        sum += e;
        let v = base + j * row + 2u * p.d + h * hd;
        for (var c = 0u; c < hd; c++) {
            acc[c] += e * qkv[v + c];
        }
    }
    let o = (s * p.t + i) * p.d + h * hd;
    for (var c = 0u; c < hd; c++) {
        out[o + c] = acc[c] / sum;
    }
}

const BQ: u32 = 64u;    // queries per workgroup, one per invocation
const BKV: u32 = 16u;   // keys (and values) per step through workgroup memory

var<workgroup> k_tile: array<f32, BKV * HD>;
var<workgroup> v_tile: array<f32, BKV * HD>;

@compute @workgroup_size(BQ)
fn tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let blocks = (p.t + BQ - 1u) / BQ;
    let idx = wg.x + wg.y * 65535u;
    if (idx >= p.seqs * p.heads * blocks) {
        return;   // the whole workgroup: idx is uniform
    }
    let qb = idx % blocks;
    let h = (idx / blocks) % p.heads;
    let s = idx / (blocks * p.heads);
    let i = qb * BQ + li;           // this invocation's query (past t: computes, never stores)
    let row = 3u * p.d;
    let base = s * p.t * row;
    var q: array<f32, HD>;
    if (i < p.t) {
        for (var c = 0u; c < HD; c++) {
            q[c] = qkv[base + i * row + h * HD + c];
        }
    }
    var acc: array<f32, HD>;
    var mx = -3.4e38;
    var sum = 0.0;
    // Keys any query of the block can see.
    var kend = p.t;
    if (p.causal != 0u) {
        kend = min(p.t, (qb + 1u) * BQ);
    }
    for (var j0 = 0u; j0 < kend; j0 += BKV) {
        for (var e = li; e < BKV * HD; e += BQ) {
            let j = j0 + e / HD;
            let c = e % HD;
            var kv = 0.0;
            var vv = 0.0;
            if (j < p.t) {
                kv = qkv[base + j * row + p.d + h * HD + c];
                vv = qkv[base + j * row + 2u * p.d + h * HD + c];
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        var sc: array<f32, BKV>;
        var m_new = mx;
        for (var jj = 0u; jj < BKV; jj++) {
            let j = j0 + jj;
            var v = -3.4e38;   // masked: past t, or after i in a causal tower
            if (j < p.t && (p.causal == 0u || j <= i)) {
                var dot_ = 0.0;
                for (var c = 0u; c < HD; c++) {
                    dot_ = fma(q[c], k_tile[jj * HD + c], dot_);
                }
                v = dot_ * p.scale;
                m_new = max(m_new, v);
            }
            sc[jj] = v;
        }
        let rescale = exp(mx - m_new);
        sum *= rescale;
        for (var c = 0u; c < HD; c++) {
            acc[c] *= rescale;
        }
        for (var jj = 0u; jj < BKV; jj++) {
            if (sc[jj] > -3.0e38) {
                let e = exp(sc[jj] - m_new);
                sum += e;
                for (var c = 0u; c < HD; c++) {
                    acc[c] = fma(e, v_tile[jj * HD + c], acc[c]);
                }
            }
        }
        mx = m_new;
        workgroupBarrier();
    }
    if (i < p.t) {
        let o = (s * p.t + i) * p.d + h * HD;
        for (var c = 0u; c < HD; c++) {
            out[o + c] = acc[c] / sum;
        }
    }
}

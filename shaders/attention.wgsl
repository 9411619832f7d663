// Multi-head attention on a fused qkv buffer [seqs·t, 3d] (q | k | v per row) → out [seqs·t, d].
// One invocation per (sequence, head, query row): scores against every visible key, a max
// pass then an exp-sum pass that accumulates softmax·V (one row's softmax at a time).
// causal = 1: query i sees keys 0..=i (text tower).

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

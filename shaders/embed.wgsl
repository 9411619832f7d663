// Building the token sequences.
// im2col:   pixels [B, 3, S, S] → patches [B·G², 3·P·P] (columns in conv-weight order c, ky, kx).
// assemble: vision rows of each sequence: [CLS + pos0, patch_p + pos_{1+p}]; prompt rows are
//           left for `splice`.
// gather:   out[r] = table[idx[r]] (token embeddings; EOT rows for pooling).
// add_pos:  x[s·T + r] += pos[r] for r < rows_per_seq.

struct Params {
    a: u32, b: u32, c: u32, d: u32,   // meaning per entry point, see each function
    e: u32, f: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

fn flat(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * 65535u * 256u;
}

// a = images B, b = size S, c = patch P, d = grid G
@compute @workgroup_size(256)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pd = 3u * p.c * p.c;
    let total = p.a * p.d * p.d * pd;
    let i = flat(gid);
    if (i >= total) {
        return;
    }
    let col = i % pd;
    let pi = (i / pd) % (p.d * p.d);
    let img = i / (pd * p.d * p.d);
    let ch = col / (p.c * p.c);
    let ky = (col / p.c) % p.c;
    let kx = col % p.c;
    let y = (pi / p.d) * p.c + ky;
    let x = (pi % p.d) * p.c + kx;
    dst[i] = src[((img * 3u + ch) * p.b + y) * p.b + x];
}

// src = patch embeddings [B·G², D], aux = class_embedding [D] ++ position_embedding [1+G², D];
// a = B, b = T (sequence length), c = G², d = D
@compute @workgroup_size(256)
fn assemble(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = flat(gid);
    let np = p.c + 1u;
    if (i >= p.a * np * p.d) {
        return;
    }
    let col = i % p.d;
    let r = (i / p.d) % np;
    let s = i / (p.d * np);
    var v = aux[p.d + r * p.d + col];
    if (r == 0u) {
        v += aux[col];
    } else {
        v += src[(s * p.c + r - 1u) * p.d + col];
    }
    dst[(s * p.b + r) * p.d + col] = v;
}

// out[r, :] = src[idx[r], :]; a = rows, d = D
@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = flat(gid);
    if (i >= p.a * p.d) {
        return;
    }
    let r = i / p.d;
    dst[i] = src[idx[r] * p.d + i % p.d];
}

// dst[s·T + r, :] += aux[r, :] for r < rows_per_seq; a = seqs, b = T, c = rows_per_seq, d = D
@compute @workgroup_size(256)
fn add_pos(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = flat(gid);
    if (i >= p.a * p.c * p.d) {
        return;
    }
    let col = i % p.d;
    let r = (i / p.d) % p.c;
    let s = i / (p.d * p.c);
    let o = (s * p.b + r) * p.d + col;
    dst[o] = dst[o] + aux[r * p.d + col];
}

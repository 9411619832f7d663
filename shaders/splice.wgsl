// MaPLe's prompt splice: overwrite n prompt rows of every sequence with a fixed [n, D] matrix
// (raw values: no LayerNorm, no positional embedding). Vision: the last n rows (start = T − n);
// text: rows 1..=n (start = 1). Used for the input prompts and for every deep layer.

struct Params {
    seqs: u32, t: u32, start: u32, n: u32, d: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> prompt: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 256u;
    if (i >= p.seqs * p.n * p.d) {
        return;
    }
    let col = i % p.d;
    let r = (i / p.d) % p.n;
    let s = i / (p.d * p.n);
    x[(s * p.t + p.start + r) * p.d + col] = prompt[r * p.d + col];
}

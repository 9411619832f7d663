// Scales each row of width d to unit L2 norm, in place (features before the logits).

struct Params {
    rows: u32, d: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < p.d; i++) {
        s += x[r * p.d + i] * x[r * p.d + i];
    }
    let n = sqrt(s);
    if (n > 0.0) {
        for (var i = 0u; i < p.d; i++) {
            x[r * p.d + i] = x[r * p.d + i] / n;
        }
    }
}

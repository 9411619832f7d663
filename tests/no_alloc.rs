//! After the workspaces are built, a forward pass (image or text, sequential or on the thread
//! pool) and a training step perform no heap allocation. Counted by a global allocator; one test in this binary so
//! nothing else allocates meanwhile.

mod common;
use maple::engine::train::{PromptParams, Sgd, TrainWorkspace};
use maple::engine::Parallel;
use maple::loader::load_model;
use maple::text::ClipTokenizer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn forward_passes_allocate_nothing() {
    let dir = common::tiny_dir();
    let model = load_model(&dir, Some(&dir.join("maple_prompts.safetensors"))).unwrap();
    let tok = ClipTokenizer::builtin().unwrap();
    let rows: Vec<Vec<u32>> = [
        "a photo of a cat.",
        "a photo of a red car.",
        "a photo of a very long named thing.",
    ]
    .iter()
    .map(|t| tok.encode(t).unwrap())
    .collect();
    let s = model.clip.config.vision.image_size;
    let pixels: Vec<f32> = (0..2 * 3 * s * s)
        .map(|i| ((i % 97) as f32 - 48.0) / 30.0)
        .collect();
    let e = model.clip.config.projection_dim;
    let mut text_out = vec![0.0f32; rows.len() * e];

    for threads in [1, 2] {
        let par = Parallel::with_threads(threads);
        let mut vws = model.vision_workspace(2, &par);
        let mut tws = model.text_workspace(2, &par);
        let before = ALLOCS.load(Ordering::SeqCst);
        let feats = model.encode_images(&par, &mut vws, &pixels, 2).unwrap();
        assert_eq!(feats.len(), 2 * e);
        model
            .encode_texts_into(&par, &mut tws, &rows, &mut text_out)
            .unwrap();
        let after = ALLOCS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{} threads: {} allocations in a forward pass",
            par.threads(),
            after - before
        );
        // The features are real: unit norm.
        let n: f32 = text_out[..e].iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);

        // A training step (forward, backward, SGD) allocates nothing once its workspace,
        // gradient and momentum buffers exist.
        let mut m = load_model(&dir, None).unwrap();
        let cfg = m.clip.config;
        let pf = dir.join("maple_prompts.safetensors");
        let mut params =
            maple::loader::with_tensors(&pf, false, |src| PromptParams::load(&cfg, src)).unwrap();
        m.prompts = Some(params.prompts());
        let mut ws = TrainWorkspace::new(&m, &rows, 2, &par).unwrap();
        let mut grads = params.zeros_like();
        let mut opt = Sgd::new(0.9, 5e-4);
        m.loss_and_grad(&par, &mut ws, &params, &pixels, &[0, 2], &mut grads)
            .unwrap();
        opt.step(&mut params, &grads, 0.01); // makes the momentum buffers
        let before = ALLOCS.load(Ordering::SeqCst);
        let st = m
            .loss_and_grad(&par, &mut ws, &params, &pixels, &[0, 2], &mut grads)
            .unwrap();
        opt.step(&mut params, &grads, 0.01);
        let after = ALLOCS.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            0,
            "{threads} threads: allocations in a training step"
        );
        assert!(st.loss.is_finite() && st.loss > 0.0);
    }
}

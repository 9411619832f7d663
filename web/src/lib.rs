//! maple-web: load a CLIP model + MaPLe prompts from bytes, set labels, classify RGBA pixels —
//! in a browser, on WebGPU, with the same core, kernels and tokenizer as the desktop build.
//!
//! This is the low-level binding; the npm package's `index.js` (web/js/) wraps it with model
//! loading by URL, the browser cache, progress events and image conversion.
//!
//! JS: `const m = await Maple.load(configJson, weights, prompts?, device?, precision?);
//! await m.set_labels(text);
//! const logits = await m.classify(rgba, width, height);`
//!
//! `device` is "auto" (the default: a hardware GPU adapter, else the CPU, as the CLI chooses),
//! "gpu" (any adapter, software ones included) or "cpu" (the engine's SIMD128 kernels in wasm,
//! one thread). `precision` is "f32" (the default) or "int8": the image tower's Linears in int8
//! (per-column weight scales, per-row activations, as `maple-classify --precision int8`), on the
//! CPU only, so "auto" then picks the CPU and "gpu" is refused.

use maple_core::preprocess::{preprocess, rgb_from_rgba};
use maple_core::{
    Clip, ClipConfig, FetchedTensors, Model, Parallel, Prompts, SafeTensors, SafeTensorsIndex,
    TextFeatures, TextWorkspace, TokenRow, VisionWorkspace,
};
use maple_gpu::{AdapterChoice, Gpu, GpuModel, Precision};
use maple_text::labels::check_template;
use maple_text::{tokenize_labels, ClipTokenizer, LabelSet};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

const TEMPLATE: &str = "a photo of a";

/// What runs the towers.
#[allow(clippy::large_enum_variant)] // one value per model
enum Backend {
    Gpu(GpuModel),
    /// The CPU, with the image workspace once the first image has come.
    Cpu(Option<VisionWorkspace>),
}

struct Inner {
    model: Model,
    /// The label template: the prompts file's, else its method's (docs/prompts.md §1).
    template: String,
    backend: Backend,
    /// One thread: the page's (a wasm thread pool needs a cross-origin-isolated page).
    par: Parallel,
    tok: ClipTokenizer,
    labels: Vec<String>,
    text: Option<TextFeatures>,
    /// The labels' token rows.
    rows: Vec<TokenRow>,
    /// CoCoOp's text workspace: its text features depend on each image (docs/prompts.md §3),
    /// so they are computed per image, on the CPU.
    conditioned: Option<TextWorkspace>,
    adapter: String,
    /// Why the CPU runs the model ("" on the GPU).
    reason: String,
}

impl Inner {
    /// Whether the text features depend on the image (CoCoOp).
    fn is_conditioned(&self) -> bool {
        self.model.text_depends_on_image()
    }

    async fn encode_texts(&mut self, rows: &[TokenRow]) -> Result<TextFeatures, JsValue> {
        match &mut self.backend {
            Backend::Gpu(g) => g.encode_texts_async(rows).await.map_err(js),
            Backend::Cpu(_) => self.model.encode_texts(&self.par, rows).map_err(js),
        }
    }
}

/// A model on the page's GPU or its CPU.
#[wasm_bindgen]
pub struct Maple {
    inner: Rc<RefCell<Inner>>,
}

fn js(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

#[wasm_bindgen]
impl Maple {
    /// Builds the model from a HF `config.json` text, `model.safetensors` bytes and optional
    /// MaPLe prompt bytes (safetensors), then uploads it to the GPU `device` chooses (see the
    /// module docs) or keeps it on the CPU.
    pub async fn load(
        config_json: String,
        weights: js_sys::Uint8Array,
        prompts: Option<Vec<u8>>,
        device: Option<String>,
        precision: Option<String>,
        threads: Option<u32>,
    ) -> Result<Maple, JsValue> {
        let int8 = match precision.as_deref().unwrap_or("f32") {
            "f32" => false,
            "int8" => true,
            p => return Err(js(format!("precision \"{p}\": use \"f32\" or \"int8\""))),
        };
        let cfg =
            ClipConfig::from_hf_json(&config_json).map_err(|e| js(format!("config.json: {e}")))?;
        let st = js_tensors(&weights).map_err(|e| js(format!("model: {e}")))?;
        let clip = Clip::load(&cfg, &st).map_err(|e| js(format!("model: {e}")))?;
        drop(st);
        let (prompts, template) = match prompts {
            Some(p) => {
                let st = SafeTensors::parse(&p).map_err(|e| js(format!("prompts: {e}")))?;
                let pr = Prompts::load(&cfg, &st).map_err(|e| js(format!("prompts: {e}")))?;
                let template = st
                    .metadata("template")
                    .map_or_else(|| pr.default_template(), str::to_string);
                (Some(pr), template)
            }
            None => (None, TEMPLATE.to_string()),
        };
        let mut model = Model::new(clip, prompts);
        let device = device.as_deref().unwrap_or("auto");
        if int8 && device == "gpu" {
            return Err(js(
                "precision \"int8\" runs on the CPU: use device \"cpu\" or \"auto\"",
            ));
        }
        let choice = match device {
            "auto" if int8 => None,
            "auto" => Some(AdapterChoice::Hardware),
            "gpu" => Some(AdapterChoice::Any),
            "cpu" => None,
            d => {
                return Err(js(format!(
                    "device \"{d}\": use \"auto\", \"gpu\" or \"cpu\""
                )))
            }
        };
        let opened = match choice {
            Some(c) => Some(Gpu::open_async(c).await),
            None => None,
        };
        let (backend, adapter, reason) = match opened {
            Some(Ok(gpu)) => {
                let adapter = gpu.describe();
                let g = GpuModel::upload(gpu, &model, Precision::F32).map_err(js)?;
                (Backend::Gpu(g), adapter, String::new())
            }
            Some(Err(e)) if device == "gpu" => return Err(js(e)),
            Some(Err(e)) => (Backend::Cpu(None), String::new(), e.to_string()),
            None => (
                Backend::Cpu(None),
                String::new(),
                if int8 && device == "auto" {
                    "precision \"int8\" runs on the CPU".into()
                } else {
                    "device \"cpu\" asked for".into()
                },
            ),
        };
        if int8 {
            model.quantize_image_tower();
        }
        let par = cpu_pool(&backend, threads.unwrap_or(1).max(1) as usize);
        let adapter = match backend {
            Backend::Cpu(_) => cpu_name(par.threads()),
            Backend::Gpu(_) => adapter,
        };
        let tok = ClipTokenizer::builtin().map_err(js)?;
        check_template(&tok, &template, model.text_n(), "prompts").map_err(js)?;
        Ok(Maple {
            inner: Rc::new(RefCell::new(Inner {
                model,
                template,
                backend,
                par,
                tok,
                labels: Vec::new(),
                text: None,
                rows: Vec::new(),
                conditioned: None,
                adapter,
                reason,
            })),
        })
    }

    /// "f32" or "int8": the image tower's Linears.
    pub fn precision(&self) -> String {
        if self.inner.borrow().model.is_int8() {
            "int8".into()
        } else {
            "f32".into()
        }
    }

    /// Threads the CPU path runs on, the page's included (1 on the GPU, and in builds without
    /// threads).
    pub fn threads(&self) -> u32 {
        let i = self.inner.borrow();
        match i.backend {
            Backend::Cpu(_) => i.par.threads() as u32,
            Backend::Gpu(_) => 1,
        }
    }

    /// What each Web Worker passes to [`maple_worker`] (0 without workers).
    pub fn worker_handle(&self) -> usize {
        #[cfg(target_feature = "atomics")]
        {
            self.inner.borrow().par.web_handle()
        }
        #[cfg(not(target_feature = "atomics"))]
        {
            0
        }
    }

    /// "gpu" or "cpu": what runs the model.
    pub fn device(&self) -> String {
        match self.inner.borrow().backend {
            Backend::Gpu(_) => "gpu".into(),
            Backend::Cpu(_) => "cpu".into(),
        }
    }

    /// Why the CPU runs the model (no hardware adapter, none at all, asked for); "" on a GPU.
    pub fn device_reason(&self) -> String {
        self.inner.borrow().reason.clone()
    }

    /// The GPU adapter in use, or the CPU path.
    pub fn adapter(&self) -> String {
        self.inner.borrow().adapter.clone()
    }

    /// The current labels, in order.
    pub fn labels(&self) -> Vec<String> {
        self.inner.borrow().labels.clone()
    }

    /// Sets the labels from the text of a labels file (one per line, blank lines and `#` lines
    /// skipped) and computes their text features once.
    pub fn set_labels(&self, text: String) -> js_sys::Promise {
        self.set_label_set(LabelSet::parse(&text, "labels"))
    }

    /// Sets the labels from a list (`["cat", "dog"]`), as the Rust library's `set_labels` does.
    pub fn set_label_list(&self, names: Vec<String>) -> js_sys::Promise {
        self.set_label_set(LabelSet::from_names(&names, "labels"))
    }

    // The borrow is held across the GPU await on purpose: an overlapping call from JS gets a
    // "busy" error from `try_borrow_mut` instead of interleaving with this one.
    #[allow(clippy::await_holding_refcell_ref)]
    fn set_label_set(&self, labels: Result<LabelSet, maple_text::TextError>) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut i = inner.try_borrow_mut().map_err(|_| js("busy"))?;
            let labels = labels.map_err(js)?;
            let max_len = i.model.clip.config.text.max_position_embeddings;
            let rows: Vec<TokenRow> =
                tokenize_labels(&i.tok, &i.template, &labels, max_len).map_err(js)?;
            let text = if i.is_conditioned() {
                // CoCoOp: nothing to encode before an image exists.
                let dim = i.model.clip.config.projection_dim;
                TextFeatures {
                    dim,
                    data: Vec::new(),
                }
            } else {
                i.encode_texts(&rows).await?
            };
            i.text = Some(text);
            i.rows = rows;
            i.labels = labels.labels.into_iter().map(|l| l.text).collect();
            Ok(JsValue::from(i.labels.len() as u32))
        })
    }

    /// Logits (label order) for an RGBA image; alpha is dropped, as Pillow's convert("RGB") does.
    #[allow(clippy::await_holding_refcell_ref)] // see `set_labels`
    pub fn classify(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut i = inner.try_borrow_mut().map_err(|_| js("busy"))?;
            let f = image_feature(&mut i, &rgba, width, height).await?;
            let text = i.text.as_ref().ok_or_else(|| js("set labels first"))?;
            let mut logits = vec![0.0f32; i.rows.len()];
            if i.is_conditioned() {
                // CoCoOp: every label under this image's own context, on the CPU.
                let Inner {
                    model,
                    par,
                    rows,
                    conditioned,
                    ..
                } = &mut *i;
                let ws = conditioned.get_or_insert_with(|| model.text_workspace(8, par));
                model
                    .conditioned_logits(par, ws, &f, 1, rows, &mut logits)
                    .map_err(js)?;
            } else {
                i.model.logits(&f, text, &mut logits).map_err(js)?;
            }
            Ok(js_sys::Float32Array::from(logits.as_slice()).into())
        })
    }

    /// An RGBA image's feature row (`embedding_dim` values, L2-normalised): what `classify`
    /// compares with the labels' rows.
    #[allow(clippy::await_holding_refcell_ref)] // see `set_labels`
    pub fn embed_image(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut i = inner.try_borrow_mut().map_err(|_| js("busy"))?;
            let f = image_feature(&mut i, &rgba, width, height).await?;
            Ok(js_sys::Float32Array::from(f.as_slice()).into())
        })
    }

    /// The feature row of an image already preprocessed: `pixels` is the image tower's input,
    /// `3 × size × size` values (channels first, CLIP-normalised, as a PyTorch `pixel_values`
    /// tensor of one image holds them).
    #[allow(clippy::await_holding_refcell_ref)] // see `set_labels`
    pub fn embed_pixels(&self, pixels: Vec<f32>) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut i = inner.try_borrow_mut().map_err(|_| js("busy"))?;
            let s = i.model.clip.config.vision.image_size;
            if pixels.len() != 3 * s * s {
                return Err(js(format!(
                    "pixels: a 3×{s}×{s} image needs {} values, got {}",
                    3 * s * s,
                    pixels.len()
                )));
            }
            let f = pixels_feature(&mut i, &pixels).await?;
            Ok(js_sys::Float32Array::from(f.as_slice()).into())
        })
    }

    /// Text features of `texts`, each put in the template as a label of that name would be:
    /// `texts.len() × embedding_dim` values, row after row, each row L2-normalised. The labels
    /// stay as they are.
    #[allow(clippy::await_holding_refcell_ref)] // see `set_labels`
    pub fn embed_texts(&self, texts: Vec<String>) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut i = inner.try_borrow_mut().map_err(|_| js("busy"))?;
            if i.is_conditioned() {
                return Err(js(
                    "CoCoOp's text features depend on the image: there is no text embedding without one",
                ));
            }
            let set = LabelSet::from_names(&texts, "texts").map_err(js)?;
            let max_len = i.model.clip.config.text.max_position_embeddings;
            let rows: Vec<TokenRow> =
                tokenize_labels(&i.tok, &i.template, &set, max_len).map_err(js)?;
            let text = i.encode_texts(&rows).await?;
            Ok(js_sys::Float32Array::from(text.data.as_slice()).into())
        })
    }

    /// The length of a feature row (512 for ViT-B/16).
    pub fn embedding_dim(&self) -> u32 {
        self.inner.borrow().model.clip.config.projection_dim as u32
    }

    /// A logit is this times the dot product of an image row and a text row.
    pub fn logit_scale(&self) -> f32 {
        self.inner.borrow().model.clip.logit_scale.exp()
    }
}

/// One RGBA image's feature row on the GPU.
async fn image_feature(
    i: &mut Inner,
    rgba: &[u8],
    width: u32,
    height: u32,
) -> Result<Vec<f32>, JsValue> {
    let (w, h) = (width as usize, height as usize);
    if rgba.len() != w * h * 4 {
        return Err(js(format!(
            "{width}×{height} RGBA needs {} bytes, got {}",
            w * h * 4,
            rgba.len()
        )));
    }
    let s = i.model.clip.config.vision.image_size;
    let px = preprocess(&rgb_from_rgba(rgba), w, h, s).map_err(js)?;
    pixels_feature(i, &px).await
}

/// The feature row of one preprocessed image (`3 × size × size` values).
async fn pixels_feature(i: &mut Inner, px: &[f32]) -> Result<Vec<f32>, JsValue> {
    match &mut i.backend {
        Backend::Gpu(g) => g.encode_images_async(px, 1).await.map_err(js),
        Backend::Cpu(ws) => {
            let ws = ws.get_or_insert_with(|| i.model.vision_workspace(1, &i.par));
            let f = i.model.encode_images(&i.par, ws, px, 1).map_err(js)?;
            Ok(f.to_vec())
        }
    }
}

/// The model file's tensors, read one at a time from its bytes in JavaScript's memory: only the
/// header and one tensor at a time are copied into wasm memory (which never shrinks), so loading
/// an f32 file peaks at about the packed model, not the file plus the model.
fn js_tensors(
    bytes: &js_sys::Uint8Array,
) -> maple_core::Result<FetchedTensors<impl Fn(usize, usize) -> Vec<u8> + '_>> {
    let len = bytes.length() as usize;
    let head = SafeTensorsIndex::head_len(&bytes.subarray(0, len.min(8) as u32).to_vec(), len)?;
    let index = SafeTensorsIndex::parse(&bytes.subarray(0, head as u32).to_vec(), len)?;
    // Offsets fit: the index checked them against `len`, a u32.
    Ok(FetchedTensors::new(index, move |start, end| {
        bytes.subarray(start as u32, end as u32).to_vec()
    }))
}

/// The CPU path's threads: the page's alone, or (in the threaded build, on a cross-origin
/// isolated page) with `threads − 1` Web Workers that `index.js` starts.
fn cpu_pool(backend: &Backend, threads: usize) -> Parallel {
    match backend {
        #[cfg(target_feature = "atomics")]
        Backend::Cpu(_) => Parallel::for_web_workers(threads),
        _ => {
            let _ = threads;
            Parallel::sequential()
        }
    }
}

/// A Web Worker's whole life in the threaded build: runs its share of every parallel job of the
/// model whose [`Maple::worker_handle`] is `handle`, as thread `tid` (1 and up), and returns when
/// that model is freed. Returns at once for a handle that is no live model's, a `tid` that is out
/// of range or taken, and in builds without threads.
#[wasm_bindgen]
pub fn maple_worker(handle: usize, tid: usize) {
    #[cfg(target_feature = "atomics")]
    maple_core::par::web::worker_loop(handle, tid);
    #[cfg(not(target_feature = "atomics"))]
    let _ = (handle, tid);
}

/// How the CPU path names itself where a GPU adapter's name would go.
fn cpu_name(threads: usize) -> String {
    let t = if threads == 1 { "thread" } else { "threads" };
    format!("CPU ({}, {threads} {t})", maple_core::simd::isa().name())
}

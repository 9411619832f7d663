// maple-web: MaPLe on CLIP ViT-B/16 in the browser, on WebGPU.
//
//   import { loadModel } from "maple-web";
//   const model = await loadModel("https://huggingface.co/openai/clip-vit-base-patch16/resolve/main/");
//   await model.setLabels(["cat", "dog"]);
//   const result = await model.classify(blobOrImageBitmapOrImageData);
//   result.top(3) // [{ label, index, logit, prob }, ...]
//
// Model files are fetched once and kept in the browser's Cache Storage; a reload reads them
// from there. The math (tokenizer, preprocessing, kernels) is the Rust crate's, compiled to wasm.
import init, { Maple } from "./maple_web.js";

/** The Cache Storage bucket model files go into unless `cache` names another. */
export const DEFAULT_CACHE = "maple-models-v1";

let wasmReady = null;

/**
 * Loads the wasm module once. `wasm` overrides which file (see `loadModel`'s options); with
 * `threads` > 1 on a cross-origin-isolated page (SharedArrayBuffer) whose engine has relaxed
 * SIMD, and no `wasm` given, the threaded build (`threads/`) is loaded instead. Resolves to
 * `{ Maple, exports, module, glue, threaded }`.
 */
export function initWasm(wasm, threads = 1) {
  wasmReady ??= (async () => {
    if (wasm === undefined && threads > 1 && threadsPossible()) {
      const glueUrl = new URL("./threads/maple_web.js", import.meta.url).href;
      const glue = await import(glueUrl);
      const bytes = await (await fetch(new URL("./threads/maple_web_bg.wasm", import.meta.url))).arrayBuffer();
      const module = await WebAssembly.compile(bytes);
      const exports = await glue.default({ module_or_path: module });
      return { Maple: glue.Maple, exports, module, glue: glueUrl, threaded: true };
    }
    const exports = await init({ module_or_path: wasm ?? defaultWasm() });
    return { Maple, exports, threaded: false };
  })();
  return wasmReady;
}

/**
 * Whether this page can run the CPU path on several threads: it is cross-origin isolated (served
 * with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
 * require-corp`), so wasm memory can be shared with Web Workers, and the engine has relaxed SIMD
 * (the threaded build is the relaxed one).
 */
export function threadsPossible() {
  return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer !== "undefined" && hasRelaxedSimd();
}

/** Starts the model's `threads − 1` Web Workers; resolves once each runs its loop. */
async function startWorkers(wasm, inner) {
  const n = inner.threads();
  const handle = inner.worker_handle();
  const workers = [];
  for (let tid = 1; tid < n; tid++) {
    const w = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    workers.push(new Promise((resolve, reject) => {
      w.onmessage = () => resolve(w);
      w.onerror = (e) => reject(new Error(`maple worker ${tid}: ${e.message || e}`));
    }));
    w.postMessage({ glue: wasm.glue, module: wasm.module, memory: wasm.exports.memory, handle, tid });
  }
  return Promise.all(workers);
}

/**
 * Whether this engine has relaxed SIMD: a module of one function doing `f32x4.relaxed_madd` on
 * three constants validates.
 */
export function hasRelaxedSimd() {
  const c = [0xfd, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
  const body = [0x00, ...c, ...c, ...c, 0xfd, 0x85, 0x02, 0x0b]; // f32x4.relaxed_madd, end
  return WebAssembly.validate(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type: [] -> [v128]
    0x03, 0x02, 0x01, 0x00, // one function of that type
    0x0a, body.length + 2, 0x01, body.length, ...body]));
}

/** The build to load: relaxed SIMD (fused multiply-adds in the GEMM) where the engine has it. */
function defaultWasm() {
  const name = hasRelaxedSimd() ? "maple_web_relaxed_bg.wasm" : "maple_web_bg.wasm";
  return new URL(name, import.meta.url);
}

/** Bytes of wasm memory in use (models live there on the CPU side; it grows, never shrinks). */
export async function wasmMemoryBytes() {
  return (await initWasm()).exports.memory.buffer.byteLength;
}

/** The `resolve/` base URL of a Hugging Face model repository. */
export function hubUrl(repo, revision = "main", host = "https://huggingface.co") {
  return `${host}/${repo}/resolve/${revision}/`;
}

const MODEL_FILES = { config: "config.json", weights: "model.safetensors" };

/**
 * Fetches `url` (or reads it from `cache`), reporting progress as
 * `{ file, url, loaded, total, cached }` (`total` is 0 when the server does not say).
 */
async function fetchBytes(url, file, cache, onProgress, signal) {
  const report = (loaded, total, cached) => onProgress?.({ file, url, loaded, total, cached });
  if (cache) {
    const hit = await cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      report(bytes.length, bytes.length, true);
      return bytes;
    }
  }
  let res;
  try {
    res = await fetch(url, { signal });
  } catch (e) {
    throw new Error(`${url}: ${e.message || e}`);
  }
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`);
  const total = Number(res.headers.get("content-length")) || 0;
  report(0, total, false);
  let bytes;
  if (res.body && res.body.getReader) {
    const reader = res.body.getReader();
    const chunks = [];
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.length;
      report(loaded, total, false);
    }
    bytes = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.length; }
  } else {
    bytes = new Uint8Array(await res.arrayBuffer());
    report(bytes.length, total, false);
  }
  if (total && bytes.length !== total) throw new Error(`${url}: got ${bytes.length} of ${total} bytes`);
  if (cache) {
    try {
      await cache.put(url, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
    } catch (e) {
      // A full or unavailable cache costs a download next time, nothing more.
      console.warn(`maple-web: could not cache ${url}: ${e.message || e}`);
    }
  }
  return bytes;
}

function resolveUrl(base, nameOrUrl) {
  return new URL(nameOrUrl, new URL(base, globalThis.location?.href)).href;
}

/**
 * Loads a model by URL and puts it on the page's GPU, or keeps it on the CPU.
 *
 * `base`: a directory URL holding `config.json` and `model.safetensors` (f32 or f16): a Hugging
 * Face `resolve/main/` URL (see `hubUrl`) or any same-origin path.
 * Options: `prompts` (file name or URL of MaPLe prompts in safetensors, relative to `base`;
 * omit for zero-shot CLIP), `weights` (default `model.safetensors`), `config` (default
 * `config.json`), `onProgress(event)`, `cache` (`true`: the default bucket, a string: that
 * bucket, `false`: no caching), `signal` (an AbortSignal), `wasm` (URL of the wasm file),
 * `device` ("auto", the default: a hardware GPU adapter, else the CPU, as software WebGPU
 * adapters such as SwiftShader are far slower than the CPU path; "gpu": any adapter; "cpu").
 * `model.device` and `model.deviceReason` say what was chosen and why. `precision`: "f32" (the
 * default) or "int8" (the image tower's Linears in int8 on the CPU, as `maple-classify
 * --precision int8`: "auto" then picks the CPU, "gpu" is an error). `threads`: the CPU path's
 * threads, the page's included (default: the core count, at most 4), on a cross-origin-isolated
 * page only (see `threadsPossible`); elsewhere one. `model.threads` says how many run.
 */
export async function loadModel(base, options = {}) {
  const { onProgress, signal } = options;
  const wantThreads = options.threads ?? Math.min(globalThis.navigator?.hardwareConcurrency ?? 1, 4);
  const wasm = await initWasm(options.wasm, wantThreads);
  const asked = options.device ?? "auto";
  const precision = options.precision ?? "f32";
  if (!["f32", "int8"].includes(precision)) throw new Error(`precision "${precision}": use "f32" or "int8"`);
  if (!["auto", "gpu", "cpu"].includes(asked)) throw new Error(`device "${asked}": use "auto", "gpu" or "cpu"`);
  let device = asked;
  let noWebGpu = "";
  if (!globalThis.navigator?.gpu && asked !== "cpu") {
    if (asked === "gpu") throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
    device = "cpu";
    noWebGpu = "this browser has no WebGPU (navigator.gpu is missing)";
  }
  const useCache = options.cache ?? true;
  let cache = null;
  if (useCache && globalThis.caches) {
    try {
      cache = await caches.open(typeof useCache === "string" ? useCache : DEFAULT_CACHE);
    } catch {
      cache = null; // opaque origins and some private modes have no Cache Storage
    }
  }
  const files = [
    ["config", options.config ?? MODEL_FILES.config],
    ["weights", options.weights ?? MODEL_FILES.weights],
  ];
  if (options.prompts) files.push(["prompts", options.prompts]);
  const got = {};
  await Promise.all(files.map(async ([key, name]) => {
    got[key] = await fetchBytes(resolveUrl(base, name), name, cache, onProgress, signal);
  }));
  const config = new TextDecoder().decode(got.config);
  const inner = await wasm.Maple.load(config, got.weights, got.prompts, device, precision,
    wasm.threaded ? wantThreads : 1);
  if (wasm.threaded && inner.threads() > 1) await startWorkers(wasm, inner);
  return new MapleModel(inner, noWebGpu);
}

/** Removes every cached model file (or those of the bucket `name`). */
export async function clearCache(name = DEFAULT_CACHE) {
  return globalThis.caches ? caches.delete(name) : false;
}

/** Exact RGBA pixels of an image: no colour management, no premultiplied alpha. */
export async function pixelsOf(image) {
  if (typeof ImageData !== "undefined" && image instanceof ImageData) {
    return { rgba: new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.byteLength),
      width: image.width, height: image.height };
  }
  let bmp = image;
  let owned = false;
  if (typeof Blob !== "undefined" && image instanceof Blob) {
    bmp = await createImageBitmap(image, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
    owned = true;
  } else if (!(typeof ImageBitmap !== "undefined" && image instanceof ImageBitmap)) {
    throw new TypeError("classify takes an ImageBitmap, ImageData or Blob");
  }
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const d = ctx.getImageData(0, 0, bmp.width, bmp.height);
  if (owned) bmp.close();
  return { rgba: new Uint8Array(d.data.buffer), width: d.width, height: d.height };
}

/** One image's scores against every label, in label order; `top(k)` sorts them. */
export class Classification {
  constructor(labels, logits) {
    const m = Math.max(...logits);
    const ex = logits.map((v) => Math.exp(v - m));
    const z = ex.reduce((a, b) => a + b, 0);
    /** `{ index, label, logit, prob }` for each label, in label order. */
    this.scores = logits.map((logit, index) => ({ index, label: labels[index], logit, prob: ex[index] / z }));
  }

  /** The `k` best scores, best first. */
  top(k = 5) {
    return [...this.scores].sort((a, b) => b.logit - a.logit || a.index - b.index).slice(0, Math.max(0, k));
  }

  /** The best score. */
  best() {
    return this.top(1)[0];
  }
}

/** A model on the page's GPU or CPU. Calls are queued: one runs at a time. */
export class MapleModel {
  #inner;
  #reason;
  #queue = Promise.resolve();

  constructor(inner, reason = "") {
    this.#inner = inner;
    this.#reason = reason;
  }

  /** Threads the CPU path runs on, the page's included (1 on the GPU). */
  get threads() {
    return this.#inner.threads();
  }

  /** "f32" or "int8": the image tower's Linears. */
  get precision() {
    return this.#inner.precision();
  }

  /** "gpu" or "cpu": what runs the model. */
  get device() {
    return this.#inner.device();
  }

  /**
   * Why the CPU runs the model ("" on a GPU): `device: "cpu"` was asked for, the browser has no
   * WebGPU, or (under "auto") its only adapter is a software one, which is slower than the CPU.
   */
  get deviceReason() {
    return this.#reason || this.#inner.device_reason();
  }

  #run(f) {
    const next = this.#queue.then(f, f);
    this.#queue = next.catch(() => {});
    return next;
  }

  /** The GPU adapter in use, or the CPU path ("CPU (portable, 1 thread)"). */
  get adapter() {
    return this.#inner.adapter();
  }

  /** The labels, in order. */
  get labels() {
    return this.#inner.labels();
  }

  /**
   * Sets the labels: an array of names, or the text of a labels file (one per line, blank and
   * `#` lines skipped). `_` reads as a space. Runs the text tower once.
   */
  setLabels(labels) {
    return this.#run(() => (Array.isArray(labels)
      ? this.#inner.set_label_list(labels.map(String))
      : this.#inner.set_labels(String(labels))));
  }

  /** Classifies an `ImageBitmap`, `ImageData` or `Blob` (an image file) against the labels. */
  classify(image) {
    return this.#run(async () => {
      const { rgba, width, height } = await pixelsOf(image);
      const logits = await this.#inner.classify(rgba, width, height);
      return new Classification(this.#inner.labels(), Array.from(logits));
    });
  }

  /** The length of a feature row (512 for ViT-B/16). */
  get embeddingDim() {
    return this.#inner.embedding_dim();
  }

  /** A logit is this times the dot product of an image row and a text row. */
  get logitScale() {
    return this.#inner.logit_scale();
  }

  /** An image's feature row (`Float32Array` of `embeddingDim`, L2-normalised). */
  embedImage(image) {
    return this.#run(async () => {
      const { rgba, width, height } = await pixelsOf(image);
      return this.#inner.embed_image(rgba, width, height);
    });
  }

  /**
   * The feature row of an image you preprocessed yourself: `pixels` holds the image tower's
   * input, 3 × size × size values (224 for ViT-B/16), channels first, CLIP-normalised (a
   * PyTorch `pixel_values` tensor of one image).
   */
  embedPixels(pixels) {
    return this.#run(async () => {
      const px = pixels instanceof Float32Array ? pixels : Float32Array.from(pixels);
      return this.#inner.embed_pixels(px);
    });
  }

  /**
   * Text features, one `Float32Array` row per text, L2-normalised: each text is put in the
   * template as a label of that name would be. The labels stay as they are.
   */
  embedTexts(texts) {
    return this.#run(async () => {
      const flat = await this.#inner.embed_texts(texts.map(String));
      const e = this.#inner.embedding_dim();
      return texts.map((_, i) => flat.slice(i * e, (i + 1) * e));
    });
  }

  /** Frees the model's GPU and wasm memory. */
  free() {
    this.#inner.free();
  }
}

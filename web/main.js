// The demo page: model files picked from disk, labels typed, an image dropped → top-5 bars.
import init, { Maple } from "./pkg/maple_web.js";

const $ = (id) => document.getElementById(id);
const status = (msg, err = false) => { $("status").textContent = msg; $("status").className = err ? "err" : ""; };
let maple = null;
let labelsSet = null;

/** Exact pixels of an image file: no colour management, no premultiplied alpha. */
export async function pixelsOf(blob) {
  const bmp = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const d = ctx.getImageData(0, 0, bmp.width, bmp.height);
  return { rgba: new Uint8Array(d.data.buffer), width: bmp.width, height: bmp.height };
}

const bytes = async (file) => new Uint8Array(await file.arrayBuffer());

async function load() {
  const [c, w, p] = [$("config").files[0], $("weights").files[0], $("prompts").files[0]];
  if (!c || !w) return status("choose config.json and model.safetensors first", true);
  status("loading the model…");
  try {
    maple = await Maple.load(await c.text(), await bytes(w), p ? await bytes(p) : undefined);
    labelsSet = null;
    status(`model ready on ${maple.adapter()}`);
  } catch (e) { status(String(e), true); }
}

function show(labels, logits) {
  const m = Math.max(...logits);
  const ex = logits.map((v) => Math.exp(v - m));
  const z = ex.reduce((a, b) => a + b, 0);
  const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, 5);
  $("results").innerHTML = "";
  for (const i of order) {
    const pct = (100 * ex[i]) / z;
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<span></span><div class="bar"><div style="width:${pct.toFixed(1)}%"></div></div><span class="pct">${pct.toFixed(1)}%</span>`;
    row.firstChild.textContent = labels[i];
    $("results").appendChild(row);
  }
}

async function classify(file) {
  if (!maple) return status("load a model first", true);
  $("preview").src = URL.createObjectURL(file);
  try {
    const text = $("labels").value;
    if (labelsSet !== text) { status("encoding labels…"); await maple.set_labels(text); labelsSet = text; }
    status("classifying…");
    const { rgba, width, height } = await pixelsOf(file);
    const t = performance.now();
    const logits = await maple.classify(rgba, width, height);
    show(maple.labels(), Array.from(logits));
    status(`${file.name}: ${(performance.now() - t).toFixed(0)} ms on ${maple.adapter()}`);
  } catch (e) { status(String(e), true); }
}

$("load").onclick = load;
$("image").onchange = (e) => e.target.files[0] && classify(e.target.files[0]);
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); };

await init();
window.maple = { Maple, pixelsOf };
status(navigator.gpu ? "ready: choose the model files" : "this browser has no WebGPU", !navigator.gpu);

// The demo page, on the npm package's API (pkg/index.js): a model loaded by URL (cached by the
// browser after the first visit) or picked from disk, labels typed, an image dropped → top-5.
import { loadModel, initWasm, pixelsOf, wasmMemoryBytes, Classification, MapleModel } from "./pkg/index.js";
import { Maple } from "./pkg/maple_web.js";

const $ = (id) => document.getElementById(id);
const status = (msg, err = false) => { $("status").textContent = msg; $("status").className = err ? "err" : ""; };
let model = null;
let labelsSet = null;

const mb = (n) => (n / 1e6).toFixed(1);

async function loadFromUrl() {
  const base = $("url").value.trim();
  if (!base) return status("type a model URL first", true);
  const prompts = $("prompts-url").value.trim() || undefined;
  const seen = new Map();
  status("loading the model…");
  try {
    model = await loadModel(base, {
      prompts,
      onProgress: (e) => {
        seen.set(e.file, e);
        const parts = [...seen.values()].map((p) => p.cached ? `${p.file} (cached)`
          : `${p.file} ${mb(p.loaded)}${p.total ? "/" + mb(p.total) : ""} MB`);
        status(`downloading: ${parts.join(", ")}`);
      },
    });
    labelsSet = null;
    status(`model ready on ${model.adapter}`);
  } catch (e) { status(String(e.message || e), true); }
}

const bytes = async (file) => new Uint8Array(await file.arrayBuffer());

async function loadFromFiles() {
  const [c, w, p] = [$("config").files[0], $("weights").files[0], $("prompts").files[0]];
  if (!c || !w) return status("choose config.json and model.safetensors first", true);
  status("loading the model…");
  try {
    model = new MapleModel(await Maple.load(await c.text(), await bytes(w), p ? await bytes(p) : undefined));
    labelsSet = null;
    status(`model ready on ${model.adapter}`);
  } catch (e) { status(String(e.message || e), true); }
}

function show(result) {
  $("results").innerHTML = "";
  for (const s of result.top(5)) {
    const pct = 100 * s.prob;
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<span></span><div class="bar"><div style="width:${pct.toFixed(1)}%"></div></div><span class="pct">${pct.toFixed(1)}%</span>`;
    row.firstChild.textContent = s.label;
    $("results").appendChild(row);
  }
}

async function classify(file) {
  if (!model) return status("load a model first", true);
  $("preview").src = URL.createObjectURL(file);
  try {
    const text = $("labels").value;
    if (labelsSet !== text) { status("encoding labels…"); await model.setLabels(text); labelsSet = text; }
    status("classifying…");
    const t = performance.now();
    show(await model.classify(file));
    status(`${file.name}: ${(performance.now() - t).toFixed(0)} ms on ${model.adapter}`);
  } catch (e) { status(String(e.message || e), true); }
}

$("load-url").onclick = loadFromUrl;
$("load").onclick = loadFromFiles;
$("image").onchange = (e) => e.target.files[0] && classify(e.target.files[0]);
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); };

await initWasm();
window.maple = { Maple, MapleModel, Classification, loadModel, pixelsOf, wasmMemoryBytes };
status(navigator.gpu ? "ready: load a model" : "this browser has no WebGPU", !navigator.gpu);

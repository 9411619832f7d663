// Runs a wasm32-wasip1 test binary under Node's WASI (cargo's runner for that target):
// `node tools/wasi-run.mjs file.wasm [args...]`. Exits with the program's status.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [file, ...args] = process.argv.slice(2);
const env = process.env.MAPLE_SIMD ? { MAPLE_SIMD: process.env.MAPLE_SIMD } : {};
// The whole file system, as a native test binary sees it.
const wasi = new WASI({ version: "preview1", args: [file, ...args], env, preopens: { "/": "/" }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);

// A Web Worker of maple-web's threaded build (index.js starts threads − 1 of them per model on
// the CPU path): instantiates the page's module on the page's shared memory, says it is ready,
// then runs its share of every parallel job of that model until the model is freed.
self.onmessage = async ({ data }) => {
  const glue = await import(data.glue);
  glue.initSync({ module: data.module, memory: data.memory });
  self.postMessage("ready");
  glue.maple_worker(data.handle, data.tid);
  self.close();
};

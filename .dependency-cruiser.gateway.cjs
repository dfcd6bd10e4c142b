// `sana serve gateway` must not load the model runtimes: the CLI entry and the gateway reach ONNX Runtime, the
// tokenizer and sharp only through dynamic import() (run by the stage roles and local generation). Checked on
// static imports alone, so it is its own cruise (`npm run walls`).
const walls = require('./.dependency-cruiser.cjs');

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'gateway-process-loads-no-model-runtime',
      comment: 'Static imports from the CLI entry or the gateway must not reach onnxruntime-node, @huggingface/tokenizers or sharp.',
      severity: 'error',
      from: { path: ['^services/cli/main\\.ts$', '^services/gateway/'] },
      to: { path: '(^|/)node_modules/(onnxruntime-node|onnxruntime-common|@huggingface/tokenizers|sharp)/', reachable: true },
    },
  ],
  options: { ...walls.options, exclude: { dynamic: true } },
};

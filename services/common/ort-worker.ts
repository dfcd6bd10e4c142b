// Worker thread that owns one ONNX Runtime session: session.run() blocks its thread for the whole
// inference, so it must never run on the main event loop.
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from './tensor.ts';
import type { SessionOptions, WorkerReply, WorkerRequest } from './ort-session.ts';

const { modelPath, options } = workerData as { modelPath: string; options: SessionOptions };
const port = parentPort!;

const started = performance.now();
const session = await ort.InferenceSession.create(modelPath, {
  intraOpNumThreads: options.intraOpThreads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
  enableCpuMemArena: options.memoryArena ?? true,
  extra: {
    session: {
      ...(options.disablePrepacking ? { disable_prepacking: '1' } : {}),
      ...(options.allowSpinning === false ? { 'intra_op.allow_spinning': '0' } : {}),
    },
  },
});
port.postMessage({
  kind: 'ready',
  inputNames: session.inputNames,
  outputNames: session.outputNames,
  loadSeconds: (performance.now() - started) / 1000,
} satisfies WorkerReply);

port.on('message', async (req: WorkerRequest) => {
  if (req.kind === 'close') {
    await session.release();
    port.close();
    return;
  }
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(req.feeds)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
    const t0 = performance.now();
    const result = req.outputNames ? await session.run(feeds, req.outputNames) : await session.run(feeds);
    const runSeconds = (performance.now() - t0) / 1000;
    const outputs: Record<string, HostTensor> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(result)) {
      // ORT's output buffers are externally backed and do not survive postMessage: copy into our own.
      const data = (t.data as HostTensor['data']).slice();
      outputs[name] = { type: t.type as HostTensor['type'], dims: [...t.dims], data };
      transfer.push(data.buffer as ArrayBuffer);
    }
    port.postMessage({ kind: 'result', id: req.id, outputs, runSeconds } satisfies WorkerReply, transfer);
  } catch (e) {
    port.postMessage({ kind: 'error', id: req.id, message: (e as Error).message } satisfies WorkerReply);
  }
});

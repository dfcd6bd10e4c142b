import * as ort from 'onnxruntime-node';
import fs from 'node:fs';
const dir = process.argv[2];
const s = await ort.InferenceSession.create(dir + '/model.onnx', { intraOpNumThreads: 2, graphOptimizationLevel: 'all', enableProfiling: true, profileFilePrefix: '/tmp/ditprof' });
const B = 2, h = 32, L = 300;
const feeds = {
  hidden_states: new ort.Tensor('float32', Float32Array.from({ length: B * 32 * h * h }, (_, i) => Math.sin(i)), [B, 32, h, h]),
  encoder_hidden_states: new ort.Tensor('float32', Float32Array.from({ length: B * L * 2304 }, (_, i) => Math.cos(i)), [B, L, 2304]),
  encoder_attention_mask: new ort.Tensor('int64', new BigInt64Array(B * L).fill(1n), [B, L]),
  timestep: new ort.Tensor('float32', new Float32Array(B).fill(500), [B]),
};
await s.run(feeds);
const t0 = performance.now();
await s.run(feeds);
console.log('run s', (performance.now() - t0) / 1000);
const file = s.endProfiling();
const ev = JSON.parse(fs.readFileSync(file, 'utf8')) as any[];
// keep only the second run
const runs = ev.filter((e) => e.name === 'model_run');
const last = runs[runs.length - 1];
const byOp = new Map<string, number>();
for (const e of ev) {
  if (e.cat !== 'Node' || e.ts < last.ts || !e.name.endsWith('_kernel_time')) continue;
  const op = e.args.op_name;
  byOp.set(op, (byOp.get(op) ?? 0) + e.dur / 1e6);
}
const total = [...byOp.values()].reduce((a, b) => a + b, 0);
for (const [op, t] of [...byOp].sort((a, b) => b[1] - a[1])) console.log(op.padEnd(28), t.toFixed(3), (100 * t / total).toFixed(1) + '%');

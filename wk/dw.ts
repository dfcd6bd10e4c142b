import * as ort from 'onnxruntime-node';
import fs from 'node:fs';
import { GraphBuilder, ElemType } from '../services/common/onnx-graph.ts';
const C = 5760, B = 2, h = 32, N = h * h;
function build(variant: string) {
  const dir = `/tmp/dwtest-${variant}`;
  const g = new GraphBuilder('dw', dir);
  const x = g.input('x', ElemType.FLOAT, [B, N, C]);
  const w = g.weight('w', [C, 1, 3, 3], Float32Array.from({ length: C * 9 }, (_, i) => Math.sin(i)));
  const b = g.weight('b', [C], new Float32Array(C).fill(0.1));
  let y: string;
  if (variant === 'A') {
    const img = g.reshape(g.transpose(x, [0, 2, 1]), [B, C, h, h]);
    const d = g.op('Conv', [img, w, b], { group: C, kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
    y = g.transpose(g.reshape(d, [0, 0, -1]), [0, 2, 1]);
  } else {
    const img = g.transpose(g.reshape(x, [B, h, h, C]), [0, 3, 1, 2]);
    const d = g.op('Conv', [img, w, b], { group: C, kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
    y = g.reshape(g.transpose(d, [0, 2, 3, 1]), [B, N, C]);
  }
  y = g.op('Relu', [y]);
  g.output(y, 'y', ElemType.FLOAT, [B, N, C]);
  return g.finish();
}
for (const v of ['A', 'B']) {
  const s = await ort.InferenceSession.create(build(v), { intraOpNumThreads: 2, enableProfiling: v === 'B', profileFilePrefix: '/tmp/dwprof' , optimizedModelFilePath: `/tmp/dw-opt-${v}.onnx`});
  const x = new ort.Tensor('float32', Float32Array.from({ length: B * N * C }, (_, i) => Math.cos(i)), [B, N, C]);
  const out: number[] = [];
  for (let i = 0; i < 12; i++) { const t0 = performance.now(); await s.run({ x }); out.push(performance.now() - t0); }
  out.sort((a, b) => a - b);
  console.log(v, 'median ms', out[6].toFixed(1));
}

// The ONNX Runtime worker's optimized-graph cache on real sessions: the first session saves ORT's optimized graph
// beside the model (its rewritten weights inline or in a file of their own), later ones load it and compute the same
// bits; a damaged file is rebuilt, a model rewritten in place never meets the optimized graph of its old content, and
// while another writer holds the lock a session is created without writing.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { ElemType, GraphBuilder } from '../../services/common/onnx-graph.ts';
import { OrtSession } from '../../services/common/ort-session.ts';
import { tensor } from '../../services/common/tensor.ts';
import { tempDir } from '../helpers/tmp.ts';

const CHANNELS = 32; // a multiple of ORT's NCHWc block: its layout transform rewrites the conv

/** x [1,C,8,8] → depthwise 3×3 conv → ×scale: a graph level 'all' rewrites (NCHWc). */
function writeModel(dir: string, scale: number): string {
  const g = new GraphBuilder('conv', dir);
  const x = g.input('x', ElemType.FLOAT, [1, CHANNELS, 8, 8]);
  const w = g.weight('w', [CHANNELS, 1, 3, 3], Float32Array.from({ length: CHANNELS * 9 }, (_, i) => Math.sin(i)));
  const y = g.mul(g.op('Conv', [x, w], { group: CHANNELS, kernel_shape: [3, 3], pads: [1, 1, 1, 1] }), g.scalar(scale));
  g.output(y, 'y', ElemType.FLOAT, [1, CHANNELS, 8, 8]);
  return g.finish();
}

const input = { x: tensor(Float32Array.from({ length: CHANNELS * 64 }, (_, i) => Math.cos(i)), [1, CHANNELS, 8, 8]) };
const optimizedFiles = (dir: string) => fs.readdirSync(dir).filter((f) => f.includes('.optimized-'));

async function runOnce(model: string, optimizedWeightsApart = false): Promise<Float32Array> {
  const session = await OrtSession.create(model, { optimizedWeightsApart });
  try {
    return (await session.run(input)).y!.data as Float32Array;
  } finally {
    await session.close();
  }
}

describe('optimized graphs', () => {
  test('the first session saves the optimized graph; later sessions load it and give the same bits', async () => {
    const dir = tempDir('ort-optimized');
    const model = writeModel(dir, 2);
    const first = await runOnce(model);
    expect(optimizedFiles(dir)).toHaveLength(1);
    const again = await runOnce(model);
    expect(Array.from(again)).toEqual(Array.from(first));
    expect(optimizedFiles(dir)).toHaveLength(1);
  });

  test('rewritten weights apart: a file of their own beside the graph, the same bits; a rebuild replaces them', async () => {
    const dir = tempDir('ort-optimized');
    const model = writeModel(dir, 2);
    const first = await runOnce(model, true);
    const files = optimizedFiles(dir).sort();
    expect(files.map((f) => f.replace(/^model\.optimized-[0-9a-f]{16}/, '*').replace(/\.\d+-\d+\./, '.W.'))).toEqual(['*.W.weights.bin', '*.onnx']);
    expect(Array.from(await runOnce(model, true))).toEqual(Array.from(first));
    fs.writeFileSync(path.join(dir, files[1]!), 'not a model');
    expect(Array.from(await runOnce(model, true))).toEqual(Array.from(first));
    expect(optimizedFiles(dir)).toHaveLength(2); // the graph rebuilt, with weights under a new name; the old ones gone
    expect(optimizedFiles(dir).filter((f) => f.endsWith('.weights.bin'))).not.toEqual([files[0]]);
  });

  test('while another writer holds the lock, a session is created without writing', async () => {
    const dir = tempDir('ort-optimized');
    const model = writeModel(dir, 2);
    const reference = await runOnce(model);
    const [file] = optimizedFiles(dir);
    fs.rmSync(path.join(dir, file!));
    fs.writeFileSync(path.join(dir, file!.replace(/\.onnx$/, '.lock')), '');
    expect(Array.from(await runOnce(model))).toEqual(Array.from(reference));
    expect(optimizedFiles(dir)).toEqual([file!.replace(/\.onnx$/, '.lock')]);
  });

  test('a damaged optimized graph is rebuilt; a model rewritten in place gets its own', async () => {
    const dir = tempDir('ort-optimized');
    const model = writeModel(dir, 2);
    const reference = await runOnce(model);
    const [file] = optimizedFiles(dir);
    fs.writeFileSync(path.join(dir, file!), 'not a model');
    expect(Array.from(await runOnce(model))).toEqual(Array.from(reference));
    expect(fs.readFileSync(path.join(dir, file!)).length).toBeGreaterThan(100);

    writeModel(dir, 3); // same file names, other content
    const scaled = await runOnce(model);
    scaled.forEach((v, i) => expect(v).toBeCloseTo((reference[i]! * 3) / 2, 5));
    expect(optimizedFiles(dir)).toHaveLength(2); // its own key beside the old one
  });
});

// The compile cache's key covers every source file that shapes a compiled graph: the model file and all it imports.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { cachedCompile, codeClosure, type CompileKey } from '../../services/common/compile-cache.ts';
import { tempDir } from '../helpers/tmp.ts';

const SERVICES = path.resolve(import.meta.dirname, '../../services');
const MODELS = ['denoiser/linear-dit.ts', 'decoder/dc-ae.ts', 'text-encoder/gemma2.ts'];

describe('compile cache key', () => {
  const root = tempDir('compile-cache');
  const src = path.join(root, 'src');
  const savedCacheDir = process.env.SANA_CACHE_DIR;
  beforeEach(() => {
    fs.rmSync(src, { recursive: true, force: true });
    fs.mkdirSync(path.join(src, 'common'), { recursive: true });
    fs.mkdirSync(path.join(src, 'model'), { recursive: true });
    fs.writeFileSync(path.join(src, 'model', 'net.ts'), "import { f } from '../common/graph.ts';\nimport type { T } from './types.ts';\nexport const g = () => f();\n");
    fs.writeFileSync(path.join(src, 'model', 'types.ts'), 'export type T = number;\n');
    fs.writeFileSync(path.join(src, 'common', 'graph.ts'), "export {\n  cast,\n} from './dtype.ts';\nexport const f = () => 1;\nconst note = 'see ./missing.ts';\n");
    fs.writeFileSync(path.join(src, 'common', 'dtype.ts'), 'export const cast = (x: number) => x;\n');
    process.env.SANA_CACHE_DIR = path.join(root, 'cache');
  });
  afterEach(() => {
    if (savedCacheDir === undefined) delete process.env.SANA_CACHE_DIR;
    else process.env.SANA_CACHE_DIR = savedCacheDir;
  });

  const key = (): CompileKey => ({ kind: 'probe', inputs: [], options: {}, code: [pathToFileURL(path.join(src, 'model', 'net.ts')).href] });

  test('the closure follows relative imports and re-exports transitively, type-only ones too', () => {
    expect(codeClosure(key().code).map((f) => path.relative(src, f))).toEqual(['common/dtype.ts', 'common/graph.ts', 'model/net.ts', 'model/types.ts']);
  });

  test('a change in a module the builder imports indirectly is a cache miss', async () => {
    let builds = 0;
    const build = (dir: string) => {
      builds++;
      fs.writeFileSync(path.join(dir, 'model.onnx'), 'graph');
    };
    const first = await cachedCompile(key(), build);
    expect((await cachedCompile(key(), build)).hit).toBe(true);
    fs.appendFileSync(path.join(src, 'common', 'dtype.ts'), 'export const roundsDifferently = true;\n');
    const third = await cachedCompile(key(), build);
    expect(third.hit).toBe(false);
    expect(third.dir).not.toBe(first.dir);
    expect(builds).toBe(2);
  });

  test.each(MODELS)('the key of %s covers dtype conversion, safetensors, checkpoint weights and the graph builder', (model) => {
    const files = codeClosure([pathToFileURL(path.join(SERVICES, model)).href]).map((f) => path.relative(SERVICES, f));
    expect(files).toEqual(expect.arrayContaining([model, 'common/dtype.ts', 'common/safetensors.ts', 'common/checkpoint-weights.ts', 'common/onnx-graph.ts']));
  });
});

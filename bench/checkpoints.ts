// Random checkpoints for benchmarks, generated once per preset into the cache folder.
import fs from 'node:fs';
import path from 'node:path';
import { cacheRoot } from '../services/common/compile-cache.ts';
import { writeRandomCheckpoint } from '../services/cli/checkpoint.ts';

export function benchCheckpoint(preset: string): string {
  const dir = path.join(cacheRoot(), 'checkpoints', preset);
  const done = path.join(dir, '.complete');
  if (!fs.existsSync(done)) {
    fs.rmSync(dir, { recursive: true, force: true });
    console.error(`writing random checkpoint ${preset} to ${dir} (once) ...`);
    writeRandomCheckpoint(preset, dir);
    fs.writeFileSync(done, new Date().toISOString());
  }
  return dir;
}

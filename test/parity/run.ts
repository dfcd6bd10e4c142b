// `npm run parity`: checks every golden variant folder in SANA_GOLDEN_DIRS (colon-separated; default: every
// folder under test/fixtures/golden/) against this implementation, one line per checked output.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Golden } from './golden.ts';
import type { Stage } from './stages.ts';
import { transformerStage } from './transformer.ts';
import { schedulerStage } from './scheduler.ts';
import { textEncoderStage } from './te.ts';
import { vaeStage } from './vae.ts';
import { pipeStage } from './pipe.ts';

const stages: Stage[] = [textEncoderStage, transformerStage, vaeStage, schedulerStage, pipeStage];

function variantDirs(): string[] {
  const env = process.env.SANA_GOLDEN_DIRS;
  if (env) return env.split(':').filter(Boolean);
  const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden');
  return fs
    .readdirSync(root)
    .map((d) => path.join(root, d))
    .filter((d) => fs.existsSync(path.join(d, 'golden.json')))
    .sort();
}

function fmt(v: number): string {
  return Number.isFinite(v) ? v.toExponential(3) : String(v);
}

let passed = 0;
let failed = 0;
const dirs = variantDirs();
if (dirs.length === 0) {
  console.log('parity: no golden variant folders found');
  process.exitCode = 1;
}
for (const dir of dirs) {
  let golden: Golden;
  try {
    golden = new Golden(dir);
  } catch (e) {
    console.log(`${path.basename(dir)} ERROR cannot read golden: ${(e as Error).message}`);
    failed++;
    continue;
  }
  const v = golden.variant;
  const owned = new Set<string>();
  for (const stage of stages) {
    for (const group of stage.groups(golden)) {
      for (const t of Object.keys(golden.json.tensors)) if (t.startsWith(`${group}.`)) owned.add(t);
      try {
        const results = await stage.check(golden, group);
        if (results.length === 0) throw new Error('the stage checked no output of this group');
        for (const r of results) {
          const ok = r.value <= r.limit;
          console.log(`${v} ${r.tensor} ${r.metric}=${fmt(r.value)}${ok ? '' : `  FAIL (limit ${r.limit})`}`);
          if (ok) passed++;
          else failed++;
        }
      } catch (e) {
        console.log(`${v} ${group} FAIL ${(e as Error).message}`);
        failed++;
      }
    }
  }
  // A tensor group that no stage claims is a feature this implementation does not know: fail loudly.
  const orphanGroups = new Set(
    Object.keys(golden.json.tensors)
      .filter((t) => !t.startsWith('dbg.') && !owned.has(t))
      .map((t) => t.split('.')[0]),
  );
  for (const g of orphanGroups) {
    console.log(`${v} ${g} not checked (no stage of this implementation owns it)`);
    failed++;
  }
}
console.log(`parity: ${passed} passed, ${failed} failed`);
if (failed > 0) process.exitCode = 1;

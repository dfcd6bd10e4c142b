// Merges kernels/device/run.sh's outputs into $OUT/kernels-report.json and prints the timing table.
// usage: report.mjs OUT MODE TESTS_RC CHECK_RC TORCH_RC
import fs from 'node:fs';
import path from 'node:path';

const [out, mode, ...rcs] = process.argv.slice(2);
const [testsRc, checkRc, torchRc] = rcs.map(Number);
const load = (f) => (fs.existsSync(path.join(out, f)) ? JSON.parse(fs.readFileSync(path.join(out, f), 'utf8')) : null);
const backend = load('backend.json') ?? {};
const torch = load('torch.json');
const tests = fs.readFileSync(path.join(out, 'kernel-tests.txt'), 'utf8').trim().split('\n');
const ptxasFile = path.join(out, 'ptxas-report.txt');

const rows = new Map();
for (const t of [...(backend.timing ?? []), ...(torch?.timing ?? [])]) {
  if (!rows.has(t.px)) rows.set(t.px, {});
  rows.get(t.px)[t.engine] = t.medianMs;
}
const table = [...rows.keys()].sort((a, b) => a - b).map((px) => {
  const r = rows.get(px);
  const entry = { px, ...r };
  const base = r['torch-bf16-eager'];
  for (const engine of ['kernels-int8', 'kernels-bf16']) if (base && r[engine]) entry[`speedup ${engine} vs torch`] = base / r[engine];
  return entry;
});
const report = {
  mode,
  ok: testsRc === 0 && checkRc === 0 && torchRc === 0,
  kernelTests: { rc: testsRc, summary: tests.at(-1), lines: tests },
  ptxas: fs.existsSync(ptxasFile) ? fs.readFileSync(ptxasFile, 'utf8') : null,
  backend,
  torch,
  table,
};
const int8At1024 = rows.get(1024)?.['kernels-int8'];
// batch 2 = one image with classifier-free guidance; the transformer's share of a 20-step image
if (int8At1024) report.twentyStep1024pxTransformerSeconds = (20 * int8At1024) / 1000;
fs.writeFileSync(path.join(out, 'kernels-report.json'), `${JSON.stringify(report, null, 2)}\n`);

const cell = (v, w) => String(v === undefined ? '-' : typeof v === 'number' ? v.toFixed(2) : v).padStart(w);
console.log(`${cell('px', 6)} ${cell('kernels-int8 ms', 16)} ${cell('kernels-bf16 ms', 16)} ${cell('torch bf16 ms', 14)} ${cell('int8 speedup', 13)}`);
for (const e of table) {
  const s = e['speedup kernels-int8 vs torch'];
  console.log(`${cell(String(e.px), 6)} ${cell(e['kernels-int8'], 16)} ${cell(e['kernels-bf16'], 16)} ${cell(e['torch-bf16-eager'], 14)} ${cell(s ? `${s.toFixed(2)}x` : undefined, 13)}`);
}
if (report.twentyStep1024pxTransformerSeconds !== undefined) {
  console.log(`20 steps at 1024 px (CFG batch 2, transformer only): ${report.twentyStep1024pxTransformerSeconds.toFixed(3)} s`);
}
console.log(`report: ${path.join(out, 'kernels-report.json')}  ok=${report.ok}`);
process.exit(report.ok ? 0 : 1);

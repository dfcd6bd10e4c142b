import fs from 'node:fs';
const file = process.argv[2];
const ev = JSON.parse(fs.readFileSync(file, 'utf8')) as any[];
const runs = ev.filter((e) => e.name === 'model_run');
const last = runs[runs.length - 1];
const byOp = new Map<string, number>();
for (const e of ev) {
  if (e.cat !== 'Node' || e.ts < last.ts || !e.name.endsWith('_kernel_time')) continue;
  const op = e.args.op_name;
  byOp.set(op, (byOp.get(op) ?? 0) + e.dur / 1e6);
}
const total = [...byOp.values()].reduce((a, b) => a + b, 0);
console.log('total', total.toFixed(2), 'model_run', last.dur / 1e6);
for (const [op, t] of [...byOp].sort((a, b) => b[1] - a[1])) console.log(op.padEnd(28), t.toFixed(3), (100 * t / total).toFixed(1) + '%');

import fs from 'node:fs';
const file = process.argv[2];
const ev = JSON.parse(fs.readFileSync(file, 'utf8')) as any[];
const runs = ev.filter((e) => e.name === 'model_run');
const last = runs[runs.length - 1];
const byKey = new Map<string, { t: number; n: number }>();
for (const e of ev) {
  if (e.cat !== 'Node' || e.ts < last.ts || !e.name.endsWith('_kernel_time')) continue;
  const op = e.args.op_name;
  if (!['Transpose', 'MatMul', 'FusedMatMul', 'Add', 'Mul', 'Split', 'Gemm'].includes(op)) continue;
  const key = `${op} ${JSON.stringify(e.args.input_type_shape?.map((x: any) => Object.values(x)[0]))}`;
  const v = byKey.get(key) ?? { t: 0, n: 0 };
  v.t += e.dur / 1e6; v.n++;
  byKey.set(key, v);
}
for (const [k, v] of [...byKey].sort((a, b) => b[1].t - a[1].t).slice(0, 30)) console.log(v.t.toFixed(3), v.n, k);

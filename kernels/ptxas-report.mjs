// Summarises nvcc's `-Xptxas -v` output as a table (kernel, arch, registers, stack, spills, shared memory) and fails
// when any kernel spills: the GEMM and attention kernels must keep their accumulators in registers.
import fs from 'node:fs';

const text = fs.readFileSync(process.argv[2], 'utf8');
const rows = [];
let current = null;
for (const line of text.split('\n')) {
  const entry = /Compiling entry function '([^']+)' for '(sm_\d+)'/.exec(line);
  if (entry) {
    const mangled = entry[1];
    const name = /^_ZN4sana\d+([A-Za-z_0-9]+?)(I.*)?E/.exec(mangled.replace(/^_ZN4sana(\d+)/, (m, n) => m))?.[1] ?? mangled;
    const template = /gemm_tcILb([01])ELNS_3EpiE(\d)/.exec(mangled);
    const label = template ? `gemm_tc<${template[1] === '1' ? 'int8' : 'bf16'}, ${['Store', 'GateResidual', 'QkvLinearAttention'][+template[2]]}>` : name;
    current = { kernel: label, arch: entry[2], registers: 0, stack: 0, spillStores: 0, spillLoads: 0, smem: 0 };
    rows.push(current);
    continue;
  }
  if (!current) continue;
  const frame = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
  if (frame) [current.stack, current.spillStores, current.spillLoads] = frame.slice(1).map(Number);
  const used = /Used (\d+) registers.*?(?:(\d+) bytes smem)?,/.exec(line);
  if (used) {
    current.registers = Number(used[1]);
    const smem = /(\d+) bytes smem/.exec(line);
    current.smem = smem ? Number(smem[1]) : 0;
  }
}
if (rows.length === 0) {
  console.error('ptxas-report: no "Compiling entry function" lines (was -Xptxas -v given?)');
  process.exit(1);
}
const header = ['kernel', 'arch', 'regs', 'stack B', 'spill st B', 'spill ld B', 'smem B'];
const table = rows.map((r) => [r.kernel, r.arch, r.registers, r.stack, r.spillStores, r.spillLoads, r.smem].map(String));
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const fmt = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(fmt(header));
for (const t of table) console.log(fmt(t));
const spilling = rows.filter((r) => r.spillStores > 0 || r.spillLoads > 0);
if (spilling.length > 0) {
  console.error(`ptxas-report: spills in ${spilling.map((r) => `${r.kernel} (${r.arch})`).join(', ')}`);
  process.exit(1);
}

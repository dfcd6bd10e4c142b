// On-disk cache of compiled graphs, keyed by checkpoint content + compile options + the source of the builder and
// of every module it imports (dtype conversion, safetensors reading, checkpoint weights, the graph builder, the
// INT8 recipe, ...), so a second start reuses model.onnx + weights.bin and a code change never serves a stale one.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export function cacheRoot(): string {
  return process.env.SANA_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'sana-serve');
}

interface HashMemo {
  [file: string]: { size: number; mtimeMs: number; ino: number; sha256: string };
}

function readMemo(memoFile: string): HashMemo {
  try {
    return JSON.parse(fs.readFileSync(memoFile, 'utf8')) as HashMemo;
  } catch {
    return {};
  }
}

/** sha256 of a file's bytes, remembered per (path, size, mtime, inode) so multi-GB checkpoints are hashed once. */
export function contentHash(file: string): string {
  const abs = path.resolve(file);
  const st = fs.statSync(abs);
  const memoFile = path.join(cacheRoot(), 'content-hashes.json');
  const memo = readMemo(memoFile);
  const known = memo[abs];
  if (known && known.size === st.size && known.mtimeMs === st.mtimeMs && known.ino === st.ino) return known.sha256;
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(abs, 'r');
  try {
    const buf = Buffer.allocUnsafe(16 << 20);
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const sha256 = hash.digest('hex');
  const fresh = readMemo(memoFile); // another process may have written meanwhile
  fresh[abs] = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, sha256 };
  fs.mkdirSync(path.dirname(memoFile), { recursive: true });
  const tmp = `${memoFile}.${process.pid}.${crypto.randomUUID()}`;
  fs.writeFileSync(tmp, JSON.stringify(fresh));
  fs.renameSync(tmp, memoFile);
  return sha256;
}

export interface CompileKey {
  /** what is compiled, e.g. "linear-dit" */
  kind: string;
  /** checkpoint and config files whose content the result depends on */
  inputs: string[];
  /** compile options that change the graph */
  options: Record<string, unknown>;
  /** source modules (import.meta.url) whose code builds the graph; the modules they import count too */
  code: string[];
}

// `import … from './x.ts'`, `export … from '../y.ts'`, `import './z.ts'`: the relative (in-repo) static imports
const RELATIVE_IMPORT = /^\s*(?:import|export)\b[^;'"]*?['"](\.{1,2}\/[^'"]+)['"]/gm;

/**
 * The source files of `urls` and of every module they import statically through relative paths, transitively:
 * everything whose code can shape a compiled graph or its weights. Sorted, so the order of imports is irrelevant.
 */
export function codeClosure(urls: string[]): string[] {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const m of fs.readFileSync(file, 'utf8').matchAll(RELATIVE_IMPORT)) {
      const target = path.resolve(path.dirname(file), m[1]);
      if (fs.existsSync(target)) visit(target); // a look-alike inside a string is no import
    }
  };
  for (const url of urls) visit(fileURLToPath(url));
  return [...seen].sort();
}

export function compileKeyHash(key: CompileKey): string {
  const h = crypto.createHash('sha256');
  h.update(`${key.kind}\n${JSON.stringify(key.options)}\n`);
  for (const file of [...key.inputs].sort()) h.update(`${path.basename(file)}:${contentHash(file)}\n`);
  const root = fileURLToPath(new URL('../../', import.meta.url));
  for (const file of codeClosure(key.code)) h.update(`${path.relative(root, file)}\n`).update(fs.readFileSync(file));
  return h.digest('hex').slice(0, 32);
}

/**
 * Returns the folder holding a compiled model for this key, building it with `build(dir)` on a miss.
 * Builds go to a temporary folder renamed into place, so a crash never leaves a half-written entry.
 */
export async function cachedCompile(
  key: CompileKey,
  build: (dir: string) => Promise<void> | void,
): Promise<{ dir: string; hit: boolean }> {
  const dir = path.join(cacheRoot(), key.kind, compileKeyHash(key));
  if (fs.existsSync(path.join(dir, 'model.onnx'))) return { dir, hit: true };
  const tmp = `${dir}.tmp-${process.pid}-${crypto.randomUUID().slice(0, 8)}`;
  fs.mkdirSync(tmp, { recursive: true });
  try {
    await build(tmp);
    fs.writeFileSync(path.join(tmp, 'key.json'), JSON.stringify({ ...key, builtAt: new Date().toISOString() }, null, 2));
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      // another process finished the same build first: keep theirs
      if (!fs.existsSync(path.join(dir, 'model.onnx'))) throw e;
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return { dir, hit: false };
}

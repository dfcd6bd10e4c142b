// The Dockerfiles, checked without a Docker engine: what they COPY from the build context exists and survives
// .dockerignore (Docker's own matching rules), the entry point and health check are in the image, and the image's
// user and cache folder agree with the chart.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { effectiveValues, ROOT } from './chart.ts';

interface Instruction {
  keyword: string;
  args: string;
}

/** Instructions of a Dockerfile, continuation lines joined, comments dropped. */
function instructions(file: string): Instruction[] {
  return fs
    .readFileSync(path.join(ROOT, file), 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [keyword, ...rest] = l.split(/\s+/);
      return { keyword: keyword.toUpperCase(), args: rest.join(' ') };
    });
}

// CommonJS with `module.exports = factory`, which its typings (export default) do not describe for NodeNext
type DockerIgnore = { add(patterns: string[]): DockerIgnore; ignores(path: string): boolean };
const dockerignore = createRequire(import.meta.url)('@balena/dockerignore') as (options?: { ignorecase?: boolean }) => DockerIgnore;
const ignore = dockerignore({ ignorecase: false }).add(fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#')));

/** Every file under a context path (the path itself when it is a file). */
function filesUnder(relative: string): string[] {
  const full = path.join(ROOT, relative);
  if (!fs.statSync(full).isDirectory()) return [relative];
  return fs.readdirSync(full, { recursive: true, encoding: 'utf8' }).map((f) => path.join(relative, f)).filter((f) => fs.statSync(path.join(ROOT, f)).isFile());
}

/** the JSON array of an exec-form ENTRYPOINT/CMD (options before it skipped) */
const execForm = (args: string) => JSON.parse(args.slice(args.indexOf('['))) as string[];

describe.each(['deploy/Dockerfile', 'deploy/Dockerfile.cuda'])('%s', (file) => {
  const steps = instructions(file);
  const finalStage = steps.slice(steps.map((s) => s.keyword).lastIndexOf('FROM'));
  /** context paths copied into the final image, as [source, destination] */
  const copied = finalStage
    .filter((s) => s.keyword === 'COPY' && !s.args.includes('--from='))
    .flatMap((s) => {
      const parts = s.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      return parts.slice(0, -1).map((source) => [source, parts.at(-1)!] as const);
    });

  it('copies only context files that exist and that .dockerignore lets through', () => {
    expect(copied.length).toBeGreaterThan(0);
    for (const [source] of copied) {
      expect(fs.existsSync(path.join(ROOT, source)), source).toBe(true);
      const lost = filesUnder(source).filter((f) => ignore.ignores(f));
      expect(lost, `${source}: files .dockerignore leaves out`).toEqual([]);
    }
    for (const heavy of ['node_modules/sharp/package.json', '.git/HEAD', 'test/unit/admission.test.ts']) expect(ignore.ignores(heavy), heavy).toBe(true);
  });

  it('has its entry point and health check script in the image, and runs as the chart\'s non-root user', () => {
    const inImage = (script: string) => copied.some(([source, destination]) => script === source || script.startsWith(`${source.replace(/\/$/, '')}/`) || script === destination.replace(/^\.\//, ''));
    const entrypoint = execForm(finalStage.find((s) => s.keyword === 'ENTRYPOINT')!.args);
    expect(entrypoint[0]).toBe('node');
    expect(inImage(entrypoint[1]) && fs.existsSync(path.join(ROOT, entrypoint[1])), entrypoint[1]).toBe(true);
    const health = execForm(finalStage.find((s) => s.keyword === 'HEALTHCHECK')!.args);
    expect(health).toEqual(['node', 'deploy/healthcheck.cjs']);
    expect(inImage(health[1])).toBe(true);
    const values = effectiveValues([]) as { podSecurityContext: { runAsUser: number; runAsGroup: number }; compileCache: { mountPath: string } };
    expect(finalStage.find((s) => s.keyword === 'USER')!.args).toBe(`${values.podSecurityContext.runAsUser}:${values.podSecurityContext.runAsGroup}`);
    const env = finalStage.filter((s) => s.keyword === 'ENV').map((s) => s.args).join(' ');
    expect(env).toContain(`SANA_CACHE_DIR=${values.compileCache.mountPath}`);
    expect(finalStage.find((s) => s.keyword === 'VOLUME')!.args).toBe(JSON.stringify([values.compileCache.mountPath]));
  });
});

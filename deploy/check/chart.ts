// Renders helm/sana the way `helm template` does. With a helm binary on PATH it is used (and `helm lint` too);
// otherwise deploy/chart-render (Go text/template + sprig + Helm's extra functions) is built from Debian's Go
// packages in GOPATH mode: golang-go, golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isMap as isYamlMap, parseAllDocuments, parseDocument, parse as parseYaml, type Pair } from 'yaml';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const CHART_DIR = path.join(ROOT, 'helm/sana');
export const RELEASE = 'sana';
export const NAMESPACE = 'sana';

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface Renderer {
  /** "helm" or "chart-render (Go)" */
  name: string;
  /** rendered manifests of the chart with these values files (chart defaults first) */
  render(valuesFiles: string[]): string;
  /** `helm lint` where helm exists; undefined for the Go renderer (the schema is checked by the tests) */
  lint?(valuesFiles: string[]): void;
}

function onPath(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const result = spawnSync(command, args, { ...options, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (result.error) throw result.error;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (exit ${result.status}):\n${result.stderr}`);
  return result.stdout;
}

const GOPATH_DEBIAN = '/usr/share/gocode';
/** Debian installs these modules without their /vN suffix; GOPATH mode needs the import path as written. */
const MAJOR_VERSION_LINKS = ['github.com/Masterminds/sprig', 'github.com/Masterminds/semver'];

/** Builds deploy/chart-render into a temporary GOPATH that links Debian's Go sources; returns the binary. */
export function buildGoRenderer(): string {
  if (!onPath('go')) throw new Error('deploy:check needs Go to build the chart renderer: apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev (see .ci/run)');
  for (const dep of [...MAJOR_VERSION_LINKS, 'gopkg.in/yaml.v3']) {
    if (!fs.existsSync(path.join(GOPATH_DEBIAN, 'src', dep))) throw new Error(`deploy:check: ${GOPATH_DEBIAN}/src/${dep} is missing: apt-get install golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev`);
  }
  const gopath = fs.mkdtempSync(path.join(os.tmpdir(), 'sana-chart-render-'));
  for (const dep of MAJOR_VERSION_LINKS) {
    fs.mkdirSync(path.join(gopath, 'src', dep), { recursive: true });
    fs.symlinkSync(path.join(GOPATH_DEBIAN, 'src', dep), path.join(gopath, 'src', dep, 'v3'));
  }
  const source = path.join(gopath, 'src/sana/chart-render');
  fs.mkdirSync(path.dirname(source), { recursive: true });
  fs.symlinkSync(path.join(ROOT, 'deploy/chart-render'), source);
  const binary = path.join(gopath, 'chart-render');
  run('go', ['build', '-o', binary, '.'], {
    cwd: source,
    env: { ...process.env, GO111MODULE: 'off', GOPATH: `${gopath}:${GOPATH_DEBIAN}`, GOFLAGS: '', GOPROXY: 'off' },
  });
  return binary;
}

export function chartRenderer(): Renderer {
  if (onPath('helm')) {
    const files = (valuesFiles: string[]) => valuesFiles.flatMap((f) => ['-f', f]);
    return {
      name: 'helm',
      render: (valuesFiles) => run('helm', ['template', RELEASE, CHART_DIR, '--namespace', NAMESPACE, ...files(valuesFiles)]),
      lint: (valuesFiles) => void run('helm', ['lint', '--strict', CHART_DIR, '--namespace', NAMESPACE, ...files(valuesFiles)]),
    };
  }
  const binary = buildGoRenderer();
  return {
    name: 'chart-render (Go text/template + sprig)',
    render: (valuesFiles) => run(binary, ['-name', RELEASE, '-namespace', NAMESPACE, ...valuesFiles.flatMap((f) => ['-f', f]), CHART_DIR]),
  };
}

/** The objects of a rendered YAML stream (empty documents dropped). */
export function parseManifests(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((doc) => {
      if (doc.errors.length) throw new Error(`rendered YAML does not parse: ${doc.errors[0].message}`);
      return doc.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

export type Values = Record<string, unknown>;

const isMap = (v: unknown): v is Values => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Helm's value merge: maps merge key by key, other values replace, null deletes the key. */
export function mergeValues(base: Values, override: Values): Values {
  const out: Values = { ...base };
  for (const [key, value] of Object.entries(override)) {
    if (value === null) delete out[key];
    else out[key] = isMap(out[key]) && isMap(value) ? mergeValues(out[key] as Values, value) : value;
  }
  return out;
}

export function readValues(file: string): Values {
  return (parseYaml(fs.readFileSync(file, 'utf8')) ?? {}) as Values;
}

/** The chart's defaults merged with these values files, as Helm hands them to the templates and the schema. */
export function effectiveValues(valuesFiles: string[]): Values {
  return valuesFiles.map(readValues).reduce(mergeValues, readValues(path.join(CHART_DIR, 'values.yaml')));
}

/** `promtool check rules` (Debian's prometheus package): its report, or an error with it. */
export function promtoolCheckRules(file: string): string {
  const result = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
  if (result.error) throw new Error(`promtool: ${result.error.message} (apt-get install prometheus; see .ci/run)`);
  const report = `${result.stdout}${result.stderr}`;
  if (result.status !== 0) throw new Error(`promtool check rules ${file} failed:\n${report}`);
  return report;
}

/**
 * Keys of a values.yaml that no "# --" comment documents (helm-docs style): a comment right above a key documents
 * it and everything under it. A nested map's first comment belongs to the map node in the YAML tree.
 */
export function undocumentedValues(text: string): string[] {
  const doc = parseDocument(text);
  const missing: string[] = [];
  const walk = (node: unknown, prefix: string, documented: boolean, leading: string) => {
    if (!isYamlMap(node)) return;
    for (const [index, item] of (node.items as Pair[]).entries()) {
      const key = String((item.key as { value: unknown }).value);
      const comment = (item.key as { commentBefore?: string }).commentBefore ?? (index === 0 ? leading : '');
      const here = documented || /^ ?--/m.test(comment);
      if (isYamlMap(item.value) && item.value.items.length > 0 && !item.value.flow) walk(item.value, `${prefix}${key}.`, here, item.value.commentBefore ?? '');
      else if (!here) missing.push(prefix + key);
    }
  };
  walk(doc.contents, '', false, doc.commentBefore ?? '');
  return missing;
}

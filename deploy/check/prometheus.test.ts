// The dashboards' and alert rules' PromQL against a real Prometheus (Debian's package, on loopback) scraping a real
// `sana serve all` on the tiny random checkpoint while Generate calls run: every panel query returns data, every
// alert rule loads and evaluates, and no query names a metric the services do not export.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { ImageFormat } from '../../services/common/gen/sana/v1/image.ts';
import { callGenerate } from '../../test/helpers/grpc.ts';
import { closedPort } from '../../test/helpers/ports.ts';
import { tempDir } from '../../test/helpers/tmp.ts';
import { NAMESPACE, ROOT } from './chart.ts';
import { loopbackServeConfig } from '../../test/helpers/serve-config.ts';

const ALERTS_FILE = path.join(ROOT, 'deploy/prometheus/alerts.yaml');
const DASHBOARD_DIR = path.join(ROOT, 'deploy/grafana');
/** Grafana's variables as the dashboards use them, resolved for this Prometheus (1 s scrapes). */
const GRAFANA_VARIABLES: Record<string, string> = { $__rate_interval: '1m', $namespace: NAMESPACE };

interface PanelQuery {
  dashboard: string;
  panel: string;
  expr: string;
}

function dashboardQueries(): PanelQuery[] {
  const queries: PanelQuery[] = [];
  for (const file of fs.readdirSync(DASHBOARD_DIR).filter((f) => f.endsWith('.json')).sort()) {
    const model = JSON.parse(fs.readFileSync(path.join(DASHBOARD_DIR, file), 'utf8')) as { title: string; panels: { title: string; targets?: { expr: string }[] }[] };
    for (const panel of model.panels) {
      for (const target of panel.targets ?? []) queries.push({ dashboard: model.title, panel: panel.title, expr: target.expr });
    }
  }
  return queries;
}

const resolveVariables = (expr: string) => Object.entries(GRAFANA_VARIABLES).reduce((e, [name, value]) => e.replaceAll(name, value), expr);

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/** Metric names a PromQL expression reads: identifiers that are not functions, keywords, label names or values. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // string literals
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' '); // label lists
  const names = [...bare.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\(?))/g)]
    .filter((m) => m[1] !== '(' && !PROMQL_WORDS.has(m[0].toLowerCase()))
    .map((m) => m[0]);
  return [...new Set(names)];
}

/** Names a /metrics page exports: every sample's name (histogram _bucket/_sum/_count included). */
function exportedNames(exposition: string): Set<string> {
  return new Set(exposition.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0]));
}

let serving: Serving;
let prometheus: ChildProcess;
let prometheusUrl: string;
let prometheusLog = '';
let exported: Set<string>;
const work = tempDir('prometheus-check');

async function promApi<T>(pathAndQuery: string): Promise<T> {
  const response = await fetch(`${prometheusUrl}${pathAndQuery}`);
  const body = (await response.json()) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`Prometheus ${pathAndQuery}: ${body.error}`);
  return body.data;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`${what}: not reached in ${timeoutMs / 1000} s\n${prometheusLog.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** waits for n scrape intervals (1 s each) */
const scrapes = (n: number) => new Promise((r) => setTimeout(r, n * 1000 + 200));

type Sample = { metric: Record<string, string>; value: [number, string] };
const query = (expr: string) => promApi<{ resultType: string; result: Sample[] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`);

beforeAll(async () => {
  const modelDir = path.join(work, 'model');
  writeRandomCheckpoint('tiny', modelDir);
  serving = await startServe(loopbackServeConfig(modelDir, { metricsPort: 0, maxInFlight: 2 }));

  // Prometheus scrapes the process every second, labelled as the prometheus-operator would (namespace; honor_labels
  // keeps the services' own `service` label, as the chart's ServiceMonitors do)
  const port = await closedPort();
  prometheusUrl = `http://127.0.0.1:${port}`;
  const config = path.join(work, 'prometheus.yml');
  fs.writeFileSync(config, [
    'global: {scrape_interval: 1s, evaluation_interval: 1s}',
    `rule_files: [${JSON.stringify(ALERTS_FILE)}]`,
    'scrape_configs:',
    '  - job_name: sana',
    '    honor_labels: true',
    `    static_configs: [{targets: ["127.0.0.1:${serving.metricsPort}"], labels: {namespace: ${NAMESPACE}}}]`,
  ].join('\n'));
  prometheus = spawn('prometheus', [`--config.file=${config}`, `--storage.tsdb.path=${path.join(work, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  prometheus.on('error', (e) => (prometheusLog += `\n${e.message} (apt-get install prometheus; see .ci/run)`));
  for (const stream of [prometheus.stdout!, prometheus.stderr!]) stream.on('data', (d: Buffer) => (prometheusLog += d.toString()));
  await serving.ready;
  await waitFor('Prometheus ready', async () => ((await fetch(`${prometheusUrl}/-/ready`)).ok ? true : undefined));

  // traffic: a repeated prompt (embedding cache hits), two formats, several images, and requests the gateway
  // rejects before and after them; a scrape between calls, so every counter and histogram rises between two
  // scrapes and its rate (and quantiles) have a value
  const calls = [
    { prompt: ['a red fox in fresh snow'], seed: 1n, numInferenceSteps: 3 },
    { prompt: ['a red fox in fresh snow'], seed: 2n, numInferenceSteps: 3 },
    { prompt: ['a lighthouse at dusk', 'a bowl of ramen'], seed: 3n, numInferenceSteps: 2, format: ImageFormat.IMAGE_FORMAT_JPEG, quality: 80 },
  ];
  const rejected = async () => expect((await callGenerate(serving.address, { prompt: ['too many steps'], numInferenceSteps: 100_000 })).code).toBe(grpc.status.INVALID_ARGUMENT);
  // each call waits until Prometheus holds a sample with it (the gateway's Generate count), so no two calls share a
  // scrape however fast they run; a fixed sleep let warm, fast calls land in one scrape and left rates without a rise
  let generates = 0;
  const scraped = () =>
    waitFor(`Generate call ${generates} scraped`, async () => {
      const r = await query(`sum(sana_grpc_requests_total{namespace="${NAMESPACE}",service="gateway",method="Generate"})`);
      return r.result[0]?.value[1] === String(generates) ? true : undefined;
    });
  await rejected();
  generates++;
  await scraped();
  for (const request of calls) {
    const result = await callGenerate(serving.address, request);
    expect(result.code, result.details).toBe(grpc.status.OK);
    generates++;
    await scraped();
  }
  await rejected();
  generates++;
  exported = exportedNames(await (await fetch(`http://127.0.0.1:${serving.metricsPort}/metrics`)).text());
  await scraped();
  // two more scrapes so every rate has its second sample
  await scrapes(2);
}, 300_000);

afterAll(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const exited = new Promise((resolve) => prometheus.once('exit', resolve));
    prometheus.kill('SIGTERM');
    await exited;
  }
  await serving?.close();
});

describe('dashboards against a real Prometheus scraping sana serve all', () => {
  const queries = dashboardQueries();

  it('the dashboards have queries', () => {
    expect(queries.length).toBeGreaterThan(30);
  });

  it('the namespace variable finds the scraped namespace', async () => {
    const values = await promApi<string[]>(`/api/v1/label/namespace/values?${new URLSearchParams({ 'match[]': 'sana_ready' })}`);
    expect(values).toContain(NAMESPACE);
  });

  it.each(queries.map((q) => [`${q.dashboard} › ${q.panel}: ${q.expr}`, q] as const))('%s returns data', async (_name, panel) => {
    const { result } = await query(resolveVariables(panel.expr));
    expect(result.length, 'no series').toBeGreaterThan(0);
    expect(result.some((s) => Number.isFinite(Number(s.value[1]))), `only NaN/Inf: ${JSON.stringify(result)}`).toBe(true);
  });

  it('no panel query names a metric the services do not export', () => {
    const unknown = queries.flatMap((q) => metricNames(q.expr).filter((n) => !exported.has(n)).map((n) => `${q.dashboard} › ${q.panel}: ${n}`));
    expect(unknown).toEqual([]);
    for (const q of queries) expect(metricNames(q.expr).length, q.expr).toBeGreaterThan(0);
  });
});

describe('the query checker', () => {
  it('finds the metric names in PromQL and nothing else', () => {
    expect(metricNames('histogram_quantile(0.95, sum by (service, le) (rate(sana_queue_wait_seconds_bucket{namespace=~"$namespace"}[1m])))')).toEqual(['sana_queue_wait_seconds_bucket']);
    expect(metricNames('sum(rate(a_total{code!="OK"}[5m])) / on(job) group_left(pod) b > bool 0.5 and absent(c == 1) unless no_such_metric')).toEqual(['a_total', 'b', 'c', 'no_such_metric']);
  });
});

describe('the image health check (deploy/healthcheck.cjs)', () => {
  // asynchronously: the services run in this process and must keep answering while the check waits
  const check = (port: string) =>
    promisify(execFile)(process.execPath, [path.join(ROOT, 'deploy/healthcheck.cjs')], { env: { ...process.env, SANA_PORT: port } }).then(
      ({ stdout }) => ({ code: 0, stdout: stdout.trim() }),
      (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout.trim() }),
    );

  it('passes on a serving process and fails where nothing serves', async () => {
    const port = serving.address.split(':').at(-1)!;
    expect(await check(port)).toEqual({ code: 0, stdout: `grpc.health.v1 on port ${port}: SERVING` });
    const closed = await check(String(await closedPort()));
    expect(closed.code).toBe(1);
    expect(closed.stdout).toMatch(/UNAVAILABLE/);
  });
});

describe('alert rules against the same Prometheus', () => {
  type Rule = { name: string; query: string; health: string; lastError?: string; lastEvaluation: string };

  async function evaluatedRules(): Promise<Rule[]> {
    const { groups } = await promApi<{ groups: { rules: Rule[] }[] }>('/api/v1/rules');
    return groups.flatMap((g) => g.rules);
  }

  it('every rule loads and evaluates without error', async () => {
    const rules = await waitFor('every rule evaluated', async () => {
      const all = await evaluatedRules();
      return all.length > 0 && all.every((r) => !r.lastEvaluation.startsWith('0001')) ? all : undefined;
    });
    expect(rules.map((r) => `${r.name}: ${r.health}${r.lastError ? ` ${r.lastError}` : ''}`)).toEqual(rules.map((r) => `${r.name}: ok`));
    expect(new Set(rules.map((r) => r.name))).toEqual(new Set(['SanaServiceNotReady', 'SanaHighErrorRatio', 'SanaHighLatency', 'SanaQueueSaturated', 'SanaRejectingRequests']));
  });

  it('no alert names a metric the services do not export, and healthy services raise none', async () => {
    const rules = await evaluatedRules();
    expect(rules.flatMap((r) => metricNames(r.query).filter((n) => !exported.has(n)).map((n) => `${r.name}: ${n}`))).toEqual([]);
    // the readiness rule does see the services (its expression is empty because each one is ready)
    const ready = await query(`sum by (service) (sana_ready{namespace="${NAMESPACE}"})`);
    expect(Object.fromEntries(ready.result.map((s) => [s.metric.service, s.value[1]]))).toEqual({ gateway: '1', 'text-encoder': '1', denoiser: '1', decoder: '1' });
    // every service is ready, nothing is queued and latency is far below the thresholds
    const { alerts } = await promApi<{ alerts: { labels: Record<string, string> }[] }>('/api/v1/alerts');
    expect(alerts.map((a) => a.labels.alertname), JSON.stringify(alerts)).toEqual([]);
  });
});

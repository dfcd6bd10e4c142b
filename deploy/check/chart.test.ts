// The Helm chart rendered for the default values and three other value sets (helm/sana/ci/*-values.yaml): the
// values pass values.schema.json (and bad ones do not), every object validates against its Kubernetes/KEDA/
// prometheus-operator schema, and the rendered objects mean what the values say. The dashboards and the
// standalone alert rules must be fresh.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDashboards, DASHBOARD_DIRS, dashboardJson } from '../grafana/dashboards.ts';
import { CHART_DIR, chartRenderer, effectiveValues, NAMESPACE, parseManifests, promtoolCheckRules, ROOT, undocumentedValues, type K8sObject, type Renderer, type Values } from './chart.ts';
import { validateObject } from './models.ts';

const VALUE_SETS: Record<string, string[]> = {
  default: [],
  'gpu-keda': [path.join(CHART_DIR, 'ci/gpu-keda-values.yaml')],
  'cpu-hpa': [path.join(CHART_DIR, 'ci/cpu-hpa-values.yaml')],
  'all-in-one': [path.join(CHART_DIR, 'ci/all-in-one-values.yaml')],
};
const STAGES = ['text-encoder', 'denoiser', 'decoder'] as const;
const GPU = 'nvidia.com/gpu';
const ALERTS_FILE = path.join(ROOT, 'deploy/prometheus/alerts.yaml');

let renderer: Renderer;
const rendered: Record<string, K8sObject[]> = {};
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'sana-chart-check-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

beforeAll(() => {
  renderer = chartRenderer();
  for (const [name, files] of Object.entries(VALUE_SETS)) rendered[name] = parseManifests(renderer.render(files));
});

afterAll(() => {
  // the closing note's table: objects per value set and kind
  const kinds = [...new Set(Object.values(rendered).flatMap((objects) => objects.map((o) => o.kind)))].sort();
  const rows = Object.entries(rendered).map(([name, objects]) => `| ${name} | ${objects.length} | ${kinds.map((k) => `${k} ${objects.filter((o) => o.kind === k).length}`).filter((c) => !c.endsWith(' 0')).join(', ')} |`);
  console.info([`chart rendered by ${renderer?.name}`, '| values | objects | by kind |', '| --- | --- | --- |', ...rows].join('\n'));
});

// ---- lookups on the rendered objects ----

const objects = (set: string, kind: string) => rendered[set].filter((o) => o.kind === kind);
const named = (set: string, kind: string, name: string) => objects(set, kind).find((o) => o.metadata.name === name);
const component = (o: K8sObject) => o.metadata.labels?.['app.kubernetes.io/component'];

interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  ports?: { name: string; containerPort: number }[];
  resources?: { limits?: Record<string, unknown>; requests?: Record<string, unknown> };
  startupProbe?: Record<string, unknown>;
  readinessProbe?: Record<string, unknown>;
  livenessProbe?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: { name: string; persistentVolumeClaim?: { claimName: string; readOnly?: boolean }; emptyDir?: object; secret?: { secretName: string } }[];
}
type Deployment = K8sObject & { spec: { replicas?: number; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } } };

const deployment = (set: string, role: string) => named(set, 'Deployment', `sana-${role}`) as Deployment | undefined;
const container = (set: string, role: string) => deployment(set, role)!.spec.template.spec.containers[0];
const env = (c: Container, name: string) => c.env?.find((e) => e.name === name);
const gpuLimit = (c: Container) => c.resources?.limits?.[GPU];

/** the autoscaler (HPA or ScaledObject) of a Deployment */
function autoscalerOf(set: string, name: string): K8sObject | undefined {
  return [...objects(set, 'HorizontalPodAutoscaler'), ...objects(set, 'ScaledObject')].find((o) => (o.spec as { scaleTargetRef: { name: string } }).scaleTargetRef.name === name);
}

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

// ---- values ----

describe('values.schema.json', () => {
  const schema = JSON.parse(fs.readFileSync(path.join(CHART_DIR, 'values.schema.json'), 'utf8'));
  const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
  const errors = (values: Values) => (validate(values) ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}`));

  it('values.yaml documents every key', () => {
    expect(undocumentedValues(fs.readFileSync(path.join(CHART_DIR, 'values.yaml'), 'utf8'))).toEqual([]);
    expect(undocumentedValues('# -- documented\na: 1\nb:\n  # -- documented\n  c: 2\n  d: 3\n')).toEqual(['b.d']);
  });

  it.each(Object.entries(VALUE_SETS))('accepts the %s values', (_name, files) => {
    expect(errors(effectiveValues(files))).toEqual([]);
    renderer.lint?.(files);
  });

  it.each([
    ['an unknown mode', { mode: 'cluster' }, '/mode must be equal to one of the allowed values'],
    ['negative replicas', { denoiser: { replicas: -1 } }, '/denoiser/replicas must be >= 0'],
    ['a misspelt key', { gateway: { replica: 2 } }, '/gateway must NOT have additional properties'],
    ['an unknown autoscaler', { decoder: { autoscaling: { kind: 'vpa' } } }, '/decoder/autoscaling/kind must be equal to one of the allowed values'],
    ['an HPA scaling to zero', { textEncoder: { autoscaling: { enabled: true, kind: 'hpa', minReplicas: 0 } } }, '/textEncoder/autoscaling/minReplicas must be >= 1'],
    ['zero GPUs', { denoiser: { gpu: { count: 0 } } }, '/denoiser/gpu/count must be >= 1'],
    ['an unknown precision', { precision: 'fp8' }, '/precision must be equal to one of the allowed values'],
    ['a port out of range', { decoder: { port: 70000 } }, '/decoder/port must be <= 65535'],
    ['an error ratio above 1', { alerts: { errorRatio: 5 } }, '/alerts/errorRatio must be <= 1'],
    ['an init container without a command', { model: { initContainer: { enabled: true, image: 'busybox' } } }, '/model/initContainer/command must NOT have fewer than 1 items'],
    ['TLS without a Secret', { tls: { enabled: true } }, '/tls/secretName must NOT have fewer than 1 characters'],
    ['a token inlined into values', { auth: { token: 's3cret' } }, '/auth must NOT have additional properties'],
  ])('rejects %s', (_what, override, message) => {
    const file = path.join(scratch, 'bad-values.yaml');
    fs.writeFileSync(file, toYaml(override));
    expect(errors(effectiveValues([file]))).toContain(message);
  });

  it('names what is missing when the templates need a value the schema cannot require', () => {
    const file = path.join(scratch, 'no-model.yaml');
    fs.writeFileSync(file, toYaml({ model: { persistentVolumeClaim: { claimName: '' } } }));
    expect(() => renderer.render([file])).toThrow(/model\.persistentVolumeClaim\.claimName \(or model\.initContainer\) is required/);
  });
});

// ---- objects ----

describe.each(Object.keys(VALUE_SETS))('rendered with the %s values', (set) => {
  it('every object validates against its schema, and names are unique per kind', () => {
    expect(rendered[set].length).toBeGreaterThan(0);
    for (const object of rendered[set]) {
      validateObject(object);
      if (object.kind !== 'ConfigMap') expect(object.metadata.namespace, `${object.kind} ${object.metadata.name}`).toBe(NAMESPACE);
    }
    const keys = rendered[set].map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('renders no Secret and reads the bearer token only through a secretKeyRef', () => {
    expect(objects(set, 'Secret')).toEqual([]);
    const values = effectiveValues(VALUE_SETS[set]) as { auth: { existingSecret: string; secretKey: string } };
    for (const d of objects(set, 'Deployment') as Deployment[]) {
      const token = env(d.spec.template.spec.containers[0], 'SANA_AUTH_TOKEN');
      const entry = ['gateway', 'all'].includes(component(d)!);
      if (entry && values.auth.existingSecret) {
        expect(token).toEqual({ name: 'SANA_AUTH_TOKEN', valueFrom: { secretKeyRef: { name: values.auth.existingSecret, key: values.auth.secretKey } } });
      } else {
        expect(token).toBeUndefined();
      }
    }
  });

  it('probes each service with grpc.health.v1 on its own port (TCP under TLS), and mounts the model read-only', () => {
    const tls = (effectiveValues(VALUE_SETS[set]) as { tls: { enabled: boolean } }).tls.enabled;
    for (const d of objects(set, 'Deployment') as Deployment[]) {
      if (component(d) === 'worker') continue;
      const c = d.spec.template.spec.containers[0];
      const grpcPort = c.ports!.find((p) => p.name === 'grpc')!.containerPort;
      for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) {
        expect(probe).toMatchObject(tls ? { tcpSocket: { port: 'grpc' } } : { grpc: { port: grpcPort } });
      }
      expect(env(c, 'SANA_PORT')?.value).toBe(String(grpcPort));
      if (component(d) !== 'gateway') {
        expect(c.volumeMounts!.find((m) => m.name === 'model')).toMatchObject({ readOnly: true, mountPath: env(c, 'SANA_MODEL')!.value });
      }
    }
  });

  it('NetworkPolicies admit gRPC to the stages only from the gateway (and workers), metrics only from monitoring', () => {
    const policies = objects(set, 'NetworkPolicy') as (K8sObject & { spec: { podSelector: { matchLabels: Record<string, string> }; ingress: { from?: { podSelector?: { matchLabels: Record<string, string> } }[]; ports: { port: string }[] }[] } })[];
    const deployments = objects(set, 'Deployment') as Deployment[];
    // every pod is covered by exactly one policy
    for (const d of deployments) expect(policies.filter((p) => matches(p.spec.podSelector.matchLabels, d.spec.template.metadata.labels))).toHaveLength(1);
    const callers = deployments.filter((d) => ['gateway', 'worker'].includes(component(d)!)).map((d) => d.spec.template.metadata.labels);
    for (const policy of policies) {
      const role = component(policy)!;
      const grpcRules = policy.spec.ingress.filter((r) => r.ports.some((p) => p.port === 'grpc'));
      const metricsRules = policy.spec.ingress.filter((r) => r.ports.some((p) => p.port === 'metrics'));
      expect(policy.spec.ingress).toHaveLength(grpcRules.length + metricsRules.length);
      expect(metricsRules).toHaveLength(1);
      expect(metricsRules[0].from?.length).toBeGreaterThan(0);
      if ((STAGES as readonly string[]).includes(role)) {
        expect(grpcRules).toHaveLength(1);
        const from = grpcRules[0].from!;
        expect(from.map((peer) => Object.keys(peer))).toEqual(from.map(() => ['podSelector']));
        // the peers select exactly the gateway (and worker) pods: no stage, no outside pod
        for (const d of deployments) {
          const admitted = from.some((peer) => matches(peer.podSelector!.matchLabels, d.spec.template.metadata.labels));
          expect(admitted, `${d.metadata.name} → ${role}`).toBe(['gateway', 'worker'].includes(component(d)!));
        }
        expect(from).toHaveLength(callers.length);
      } else if (role === 'worker') {
        expect(grpcRules).toHaveLength(0);
      } else {
        expect(grpcRules).toHaveLength(1); // the entry: from anywhere, or from networkPolicy.gatewayFrom
      }
    }
  });

  it('ServiceMonitors keep the services\' own labels and select a Service with a metrics port', () => {
    const services = objects(set, 'Service');
    for (const monitor of objects(set, 'ServiceMonitor') as (K8sObject & { spec: { selector: { matchLabels: Record<string, string> }; endpoints: { port: string; honorLabels: boolean }[] } })[]) {
      expect(monitor.spec.endpoints).toEqual([expect.objectContaining({ port: 'metrics', honorLabels: true })]);
      const selected = services.filter((s) => matches(monitor.spec.selector.matchLabels, s.metadata.labels!));
      expect(selected).toHaveLength(1);
      expect((selected[0].spec as { ports: { name: string }[] }).ports.map((p) => p.name)).toContain('metrics');
    }
  });

  it('ships every dashboard as a ConfigMap for the Grafana sidecar, byte for byte', () => {
    const maps = objects(set, 'ConfigMap') as (K8sObject & { data: Record<string, string> })[];
    const files = fs.readdirSync(path.join(ROOT, 'deploy/grafana')).filter((f) => f.endsWith('.json')).sort();
    expect(maps.flatMap((m) => Object.keys(m.data)).sort()).toEqual(files);
    for (const m of maps) {
      expect(m.metadata.labels?.grafana_dashboard).toBe('1');
      for (const [file, json] of Object.entries(m.data)) expect(json).toBe(fs.readFileSync(path.join(ROOT, 'deploy/grafana', file), 'utf8').trimEnd());
    }
  });

  it('the PrometheusRule passes promtool check rules', () => {
    const [rule] = objects(set, 'PrometheusRule') as (K8sObject & { spec: unknown })[];
    const file = path.join(scratch, `${set}-rules.yaml`);
    fs.writeFileSync(file, toYaml(rule.spec));
    expect(promtoolCheckRules(file)).toMatch(/SUCCESS: \d+ rules found/);
  });
});

// ---- what each value set asks for ----

describe('semantics', () => {
  it('default: one Deployment and headless Service per stage plus the gateway, GPU only on the denoiser', () => {
    const set = 'default';
    const values = effectiveValues([]) as Record<string, { replicas: number; port: number }>;
    expect(objects(set, 'Deployment').map((d) => d.metadata.name).sort()).toEqual(['sana-decoder', 'sana-denoiser', 'sana-gateway', 'sana-text-encoder']);
    for (const [role, key] of [['gateway', 'gateway'], ['text-encoder', 'textEncoder'], ['denoiser', 'denoiser'], ['decoder', 'decoder']]) {
      expect(deployment(set, role)!.spec.replicas).toBe(values[key].replicas);
      expect(container(set, role).args).toEqual(['serve', role]);
      expect(autoscalerOf(set, `sana-${role}`)).toBeUndefined();
      expect(named(set, 'PodDisruptionBudget', `sana-${role}`)).toBeDefined();
    }
    expect(STAGES.filter((role) => gpuLimit(container(set, role)) !== undefined)).toEqual(['denoiser']);
    expect(gpuLimit(container(set, 'gateway'))).toBeUndefined();
    expect(container(set, 'denoiser').image).toMatch(/sana-cuda:/);
    expect(env(container(set, 'denoiser'), 'SANA_DEVICE')?.value).toBe('cuda');
    expect(env(container(set, 'decoder'), 'SANA_DEVICE')?.value).toBe('cpu');
    // headless stage Services; the gateway's dns:/// targets name them with their ports
    const gateway = container(set, 'gateway');
    for (const [role, variable] of [['text-encoder', 'SANA_TEXT_ENCODER_ADDRESS'], ['denoiser', 'SANA_DENOISER_ADDRESS'], ['decoder', 'SANA_DECODER_ADDRESS']]) {
      const service = named(set, 'Service', `sana-${role}`) as K8sObject & { spec: { clusterIP?: string; ports: { name: string; port: number }[] } };
      expect(service.spec.clusterIP).toBe('None');
      const port = service.spec.ports.find((p) => p.name === 'grpc')!.port;
      expect(env(gateway, variable)?.value).toBe(`dns:///sana-${role}.${NAMESPACE}.svc:${port}`);
    }
    expect((named(set, 'Service', 'sana-gateway')!.spec as { clusterIP?: string; type: string }).type).toBe('ClusterIP');
    expect(objects(set, 'ScaledObject')).toEqual([]);
    expect(deployment(set, 'worker')).toBeUndefined();
  });

  it('gpu-keda: the denoiser scales with KEDA on its own load, the other stages with the HPAs asked for', () => {
    const set = 'gpu-keda';
    const denoiser = autoscalerOf(set, 'sana-denoiser') as K8sObject & { spec: { minReplicaCount: number; maxReplicaCount: number; triggers: { type: string; metadata: { query: string; threshold: string; serverAddress: string } }[] } };
    expect(denoiser.kind).toBe('ScaledObject');
    expect(denoiser.spec).toMatchObject({ minReplicaCount: 2, maxReplicaCount: 16 });
    expect(denoiser.spec.triggers).toHaveLength(1);
    expect(denoiser.spec.triggers[0]).toMatchObject({ type: 'prometheus', metadata: { threshold: '3', serverAddress: 'http://prometheus-operated.monitoring.svc:9090' } });
    expect(denoiser.spec.triggers[0].metadata.query).toBe(`sum(sana_queue_depth{namespace="${NAMESPACE}",service="denoiser"}) + sum(sana_grpc_requests_in_flight{namespace="${NAMESPACE}",service="denoiser"})`);
    const te = autoscalerOf(set, 'sana-text-encoder') as K8sObject & { spec: { minReplicas: number; maxReplicas: number; metrics: unknown[] } };
    expect(te.kind).toBe('HorizontalPodAutoscaler');
    expect(te.spec).toMatchObject({ minReplicas: 1, maxReplicas: 3, metrics: [{ type: 'Resource', resource: { name: 'cpu', target: { type: 'Utilization', averageUtilization: 70 } } }] });
    const decoder = autoscalerOf(set, 'sana-decoder') as K8sObject & { spec: { metrics: unknown[] } };
    expect(decoder.spec.metrics).toEqual([{ type: 'Pods', pods: { metric: { name: 'sana_queue_depth' }, target: { type: 'AverageValue', averageValue: '2' } } }]);
    expect(autoscalerOf(set, 'sana-gateway')).toBeUndefined();
    // an autoscaled Deployment leaves replicas to its autoscaler; the others keep theirs
    for (const role of STAGES) expect(deployment(set, role)!.spec.replicas).toBeUndefined();
    expect(deployment(set, 'gateway')!.spec.replicas).toBe(2);
    // GPUs where asked: denoiser and decoder, one each, with the CUDA image; none elsewhere
    expect(Object.fromEntries(['gateway', ...STAGES].map((r) => [r, gpuLimit(container(set, r)) ?? null]))).toEqual({ gateway: null, 'text-encoder': null, denoiser: 1, decoder: 1 });
    expect(container(set, 'decoder').image).toMatch(/sana-cuda:/);
    expect(container(set, 'text-encoder').image).not.toMatch(/cuda/);
    expect((deployment(set, 'denoiser')!.spec.template.spec as { nodeSelector?: object }).nodeSelector).toEqual({ 'nvidia.com/gpu.present': 'true' });
    expect(env(container(set, 'denoiser'), 'SANA_PRECISION')?.value).toBe('int8');
    expect((named(set, 'Service', 'sana-gateway')!.spec as { type: string }).type).toBe('LoadBalancer');
    for (const monitor of objects(set, 'ServiceMonitor')) expect(monitor.metadata.labels?.release).toBe('kube-prometheus-stack');
    const rules = (objects(set, 'PrometheusRule')[0].spec as { groups: { rules: { alert: string; expr: string }[] }[] }).groups[0].rules;
    expect(rules.find((r) => r.alert === 'SanaHighLatency' && r.expr.includes('service="denoiser"'))!.expr).toMatch(/> 30$/);
  });

  it('cpu-hpa: no GPU anywhere, an HPA per component with the bounds given, the job worker behind KEDA nats-jetstream', () => {
    const set = 'cpu-hpa';
    for (const d of objects(set, 'Deployment') as Deployment[]) {
      for (const c of d.spec.template.spec.containers) {
        expect(gpuLimit(c), d.metadata.name).toBeUndefined();
        expect(c.image).not.toMatch(/cuda/);
      }
    }
    const bounds = Object.fromEntries(['gateway', ...STAGES].map((role) => {
      const hpa = autoscalerOf(set, `sana-${role}`) as K8sObject & { spec: { minReplicas: number; maxReplicas: number; metrics: { type: string }[] } };
      expect(hpa.kind).toBe('HorizontalPodAutoscaler');
      return [role, [hpa.spec.minReplicas, hpa.spec.maxReplicas, hpa.spec.metrics.map((m) => m.type).join('+')]];
    }));
    expect(bounds).toEqual({ gateway: [2, 6, 'Resource'], 'text-encoder': [1, 4, 'Resource'], denoiser: [2, 12, 'Resource+Pods'], decoder: [1, 4, 'Resource'] });
    const worker = container(set, 'worker');
    expect(worker.args).toEqual(['serve', 'worker']);
    expect(worker.ports?.map((p) => p.name)).toEqual(['metrics']);
    expect(env(worker, 'SANA_NATS')?.value).toBe('nats://nats.nats.svc:4222');
    const scaler = autoscalerOf(set, 'sana-worker') as K8sObject & { spec: { minReplicaCount: number; triggers: { type: string; metadata: Record<string, string> }[] } };
    expect(scaler.kind).toBe('ScaledObject');
    expect(scaler.spec.minReplicaCount).toBe(0);
    expect(scaler.spec.triggers).toEqual([{ type: 'nats-jetstream', metadata: { natsServerMonitoringEndpoint: 'nats.nats.svc:8222', account: '$G', stream: 'SANA_JOBS', consumer: 'sana-workers', lagThreshold: '4' } }]);
    const gatewayPolicy = named(set, 'NetworkPolicy', 'sana-gateway')!.spec as { ingress: { from?: unknown[]; ports: { port: string }[] }[] };
    expect(gatewayPolicy.ingress.find((r) => r.ports[0].port === 'grpc')!.from).toEqual([{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress-nginx' } } }]);
  });

  it('all-in-one: one `sana serve all` pod with an init container filling the model folder, TLS from a Secret', () => {
    const set = 'all-in-one';
    expect(objects(set, 'Deployment').map((d) => d.metadata.name)).toEqual(['sana-all']);
    expect(objects(set, 'Service').map((s) => s.metadata.name)).toEqual(['sana-all']);
    expect([...objects(set, 'HorizontalPodAutoscaler'), ...objects(set, 'ScaledObject')]).toEqual([]);
    const pod = deployment(set, 'all')!.spec.template.spec;
    expect(pod.containers[0].args).toEqual(['serve', 'all']);
    expect(pod.initContainers!.map((c) => [c.name, c.image])).toEqual([['fetch-model', 'amazon/aws-cli:2.15.0']]);
    expect(pod.volumes!.find((v) => v.name === 'model')).toEqual({ name: 'model', emptyDir: { sizeLimit: '20Gi' } });
    expect(pod.volumes!.find((v) => v.name === 'tls')).toEqual({ name: 'tls', secret: { secretName: 'sana-tls' } });
    expect(env(pod.containers[0], 'SANA_TLS_CERT')?.value).toBe('/etc/sana/tls/tls.crt');
    expect(gpuLimit(pod.containers[0])).toBeUndefined();
    expect(objects(set, 'ConfigMap').every((m) => m.metadata.namespace === 'monitoring')).toBe(true);
    expect(objects(set, 'ServiceMonitor')).toHaveLength(1);
  });
});

// ---- generated files are fresh ----

describe('generated files', () => {
  it('deploy/grafana and the chart hold what `npm run dashboards` writes', () => {
    const dashboards = buildDashboards();
    for (const dir of DASHBOARD_DIRS) {
      const files = fs.readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith('.json')).sort();
      expect(files, `${dir}: run npm run dashboards`).toEqual(Object.keys(dashboards).map((n) => `${n}.json`).sort());
      for (const [name, model] of Object.entries(dashboards)) {
        expect(fs.readFileSync(path.join(ROOT, dir, `${name}.json`), 'utf8'), `${dir}/${name}.json is stale: run npm run dashboards`).toBe(dashboardJson(model));
      }
    }
  });

  it('deploy/prometheus/alerts.yaml is the chart\'s PrometheusRule with the default values', () => {
    const [rule] = objects('default', 'PrometheusRule') as (K8sObject & { spec: { groups: unknown[] } })[];
    const text = `# Generated from helm/sana/templates/prometheusrule.yaml with the default values for namespace "${NAMESPACE}";\n` +
      '# `UPDATE_DEPLOY_FILES=1 npm run deploy:check` rewrites it. Load it with rule_files in prometheus.yml.\n' + toYaml(rule.spec, { lineWidth: 0 });
    if (process.env.UPDATE_DEPLOY_FILES) fs.writeFileSync(ALERTS_FILE, text);
    expect(fs.existsSync(ALERTS_FILE), 'deploy/prometheus/alerts.yaml: run UPDATE_DEPLOY_FILES=1 npm run deploy:check').toBe(true);
    expect(parseYaml(fs.readFileSync(ALERTS_FILE, 'utf8')), 'deploy/prometheus/alerts.yaml is stale: run UPDATE_DEPLOY_FILES=1 npm run deploy:check').toEqual(rule.spec);
    expect(promtoolCheckRules(ALERTS_FILE)).toMatch(/SUCCESS: \d+ rules found/);
  });
});

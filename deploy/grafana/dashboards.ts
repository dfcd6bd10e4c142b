// The Grafana dashboards as code (Grafana's foundation SDK). Every query reads a metric that the services export
// (services/common/metrics.ts and prom-client's default process metrics); deploy/check proves each one returns
// data from a real Prometheus scraping `sana serve all`. Panels for metrics that do not exist yet (GPU utilisation,
// job states, batch sizes, tiles, images by resolution) are left out until a service exports them.
import { DashboardBuilder, DatasourceVariableBuilder, QueryVariableBuilder, RowBuilder, VariableRefresh, VariableSort, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { ReduceDataOptionsBuilder } from '@grafana/grafana-foundation-sdk/common';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatPanel } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesPanel } from '@grafana/grafana-foundation-sdk/timeseries';

const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };
/** label matcher every query carries: the namespace(s) chosen in the dashboard */
const NS = 'namespace=~"$namespace"';
const RATE = '$__rate_interval';

type Query = { expr: string; legend: string };
const q = (expr: string, legend: string): Query => ({ expr, legend });

/** p50/p95/p99 of a histogram, grouped by `by` (plus le). */
function quantiles(histogram: string, matchers: string, by: string[], legendPrefix = ''): Query[] {
  const group = [...by, 'le'].join(', ');
  const legend = by.map((l) => `{{${l}}}`).join(' ');
  return [0.5, 0.95, 0.99].map((p) =>
    q(`histogram_quantile(${p}, sum by (${group}) (rate(${histogram}_bucket{${matchers}}[${RATE}])))`, `${legendPrefix}${legend} p${Math.round(p * 100)}`.trim()),
  );
}

function timeseries(title: string, description: string, unit: string, queries: Query[], width = 12): TimeseriesPanel {
  const panel = new TimeseriesPanel().title(title).description(description).unit(unit).datasource(DATASOURCE).height(8).span(width).fillOpacity(10).lineWidth(1);
  queries.forEach((query, i) => panel.withTarget(new DataqueryBuilder().expr(query.expr).legendFormat(query.legend).refId(String.fromCharCode(65 + i))));
  return panel;
}

function stat(title: string, description: string, unit: string, query: Query, width = 6): StatPanel {
  return new StatPanel()
    .title(title)
    .description(description)
    .unit(unit)
    .datasource(DATASOURCE)
    .height(4)
    .span(width)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false))
    .withTarget(new DataqueryBuilder().expr(query.expr).legendFormat(query.legend).instant().refId('A'));
}

function dashboard(uid: string, title: string, description: string): DashboardBuilder {
  return new DashboardBuilder(title)
    .uid(uid)
    .description(description)
    .tags(['sana', 'generated'])
    .editable()
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .timezone('browser')
    .withVariable(new DatasourceVariableBuilder('datasource').label('Data source').type('prometheus'))
    .withVariable(
      new QueryVariableBuilder('namespace')
        .label('Namespace')
        .datasource(DATASOURCE)
        .query('label_values(sana_ready, namespace)')
        .definition('label_values(sana_ready, namespace)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .sort(VariableSort.AlphabeticalAsc)
        .multi(true)
        .includeAll(true)
        .allValue('.*'),
    );
}

/** A stage's call latency, in-flight and queue panels (the same shape for every stage). */
function stageLoad(dash: DashboardBuilder, service: string, method: string): DashboardBuilder {
  const sel = `${NS},service="${service}"`;
  return dash
    .withPanel(timeseries(`${method} latency`, `p50/p95/p99 of ${service} ${method} calls, arrival to status`, 's', quantiles('sana_grpc_request_duration_seconds', `${sel},method="${method}"`, [])))
    .withPanel(timeseries(`${method} calls/s by status`, `${service} ${method} calls finished per second, by gRPC status code`, 'reqps', [q(`sum by (code) (rate(sana_grpc_requests_total{${sel},method="${method}"}[${RATE}]))`, '{{code}}')]))
    .withPanel(timeseries('In flight and queued', `${service} requests being handled and requests waiting for admission, per pod`, 'short', [
      q(`sum by (instance) (sana_grpc_requests_in_flight{${sel}})`, 'in flight {{instance}}'),
      q(`sum by (instance) (sana_queue_depth{${sel}})`, 'queued {{instance}}'),
    ]))
    .withPanel(timeseries('Queue wait', `seconds ${service} requests waited for admission`, 's', quantiles('sana_queue_wait_seconds', sel, [])));
}

function overview(): Dashboard {
  return dashboard('sana-overview', 'SANA / Service overview', 'Requests, errors, latency and load of the gateway and the three stages')
    .withRow(new RowBuilder('Traffic'))
    .withPanel(stat('Ready pods', 'pods per service whose model is loaded and warmed up (sana_ready)', 'short', q(`sum by (service) (sana_ready{${NS}})`, '{{service}}'), 12))
    .withPanel(stat('Generate calls/s', 'Generate calls finished per second at the gateway', 'reqps', q(`sum(rate(sana_grpc_requests_total{${NS},service="gateway",method="Generate"}[${RATE}]))`, 'Generate'), 12))
    .withPanel(timeseries('Requests/s by method', 'gRPC calls finished per second, by service and method', 'reqps', [q(`sum by (service, method) (rate(sana_grpc_requests_total{${NS}}[${RATE}]))`, '{{service}} {{method}}')]))
    .withPanel(timeseries('Errors/s by code', 'gRPC calls that did not end OK, per second, by service, method and status code', 'reqps', [q(`sum by (service, method, code) (rate(sana_grpc_requests_total{${NS},code!="OK"}[${RATE}]))`, '{{service}} {{method}} {{code}}')]))
    .withPanel(timeseries('Error ratio', 'fraction of each service\'s calls that did not end OK', 'percentunit', [
      q(`sum by (service) (rate(sana_grpc_requests_total{${NS},code!="OK"}[${RATE}])) / sum by (service) (rate(sana_grpc_requests_total{${NS}}[${RATE}]))`, '{{service}}'),
    ]))
    .withPanel(timeseries('Images/s', 'images delivered per second by the gateway, by format', 'short', [q(`sum by (format) (rate(sana_images_total{${NS},service="gateway"}[${RATE}]))`, '{{format}}')]))
    .withRow(new RowBuilder('Latency'))
    .withPanel(timeseries('Call latency by service', 'p50/p95/p99 of calls, arrival to status, per service', 's', quantiles('sana_grpc_request_duration_seconds', NS, ['service']), 24))
    .withPanel(timeseries('Pipeline stage time', 'p95 seconds per pipeline stage as the gateway sees it (stage work plus transport)', 's', [
      q(`histogram_quantile(0.95, sum by (stage, le) (rate(sana_gateway_stage_seconds_bucket{${NS}}[${RATE}])))`, '{{stage}} p95'),
    ]))
    .withPanel(timeseries('Queue wait', 'p95 seconds requests waited for admission, per service', 's', [
      q(`histogram_quantile(0.95, sum by (service, le) (rate(sana_queue_wait_seconds_bucket{${NS}}[${RATE}])))`, '{{service}} p95'),
    ]))
    .withRow(new RowBuilder('Load'))
    .withPanel(timeseries('In flight', 'calls being handled now, per service', 'short', [q(`sum by (service) (sana_grpc_requests_in_flight{${NS}})`, '{{service}}')]))
    .withPanel(timeseries('Queue depth', 'requests waiting for admission, per service (more than maxQueue get RESOURCE_EXHAUSTED)', 'short', [q(`sum by (service) (sana_queue_depth{${NS}})`, '{{service}}')]))
    .withPanel(timeseries('Resident memory', 'resident memory per process', 'bytes', [q(`sum by (instance) (process_resident_memory_bytes{${NS}})`, '{{instance}}')]))
    .withPanel(timeseries('Event-loop lag p99', 'Node.js event-loop lag per process: high values delay gRPC I/O', 's', [q(`max by (instance) (nodejs_eventloop_lag_p99_seconds{${NS}})`, '{{instance}}')]))
    .withPanel(timeseries('Model load and warm-up', 'seconds each service took to load its model and run the warm-up request', 's', [
      q(`max by (service) (sana_model_load_seconds{${NS}})`, 'load {{service}}'),
      q(`max by (service) (sana_model_warmup_seconds{${NS}})`, 'warm-up {{service}}'),
    ], 24))
    .build();
}

function denoiser(): Dashboard {
  const sel = `${NS},service="denoiser"`;
  const dash = dashboard('sana-denoiser', 'SANA / Denoiser', 'Linear-DiT denoising: per-step latency, steps/s, images/s and load')
    .withRow(new RowBuilder('Throughput'))
    .withPanel(stat('Ready denoisers', 'denoiser pods whose model is loaded and warmed up', 'short', q(`sum(sana_ready{${sel}})`, 'ready'), 8))
    .withPanel(stat('Steps/s', 'denoising steps per second over all pods', 'short', q(`sum(rate(sana_denoiser_steps_total{${sel}}[${RATE}]))`, 'steps/s'), 8))
    .withPanel(stat('Images/s', 'images the gateway delivered per second', 'short', q(`sum(rate(sana_images_total{${NS},service="gateway"}[${RATE}]))`, 'images/s'), 8))
    .withPanel(timeseries('Step latency', 'seconds per denoising step (one transformer forward and one solver update)', 's', quantiles('sana_denoiser_step_seconds', sel, [])))
    .withPanel(timeseries('Steps/s per pod', 'denoising steps per second, per pod', 'short', [q(`sum by (instance) (rate(sana_denoiser_steps_total{${sel}}[${RATE}]))`, '{{instance}}')]))
    .withPanel(timeseries('Images/s by format', 'images delivered per second by the gateway, by format', 'short', [q(`sum by (format) (rate(sana_images_total{${NS},service="gateway"}[${RATE}]))`, '{{format}}')]))
    .withPanel(timeseries('Denoise stage time', 'p95 seconds of the denoise stage as the gateway sees it', 's', [
      q(`histogram_quantile(0.95, sum by (le) (rate(sana_gateway_stage_seconds_bucket{${NS},stage="denoise"}[${RATE}])))`, 'denoise p95'),
    ]))
    .withRow(new RowBuilder('Calls and load'));
  return stageLoad(dash, 'denoiser', 'Denoise').build();
}

function textEncoder(): Dashboard {
  const sel = `${NS},service="text-encoder"`;
  const dash = dashboard('sana-text-encoder', 'SANA / Text encoder', 'Gemma-2 prompt encoding: embedding cache and encode latency')
    .withRow(new RowBuilder('Embedding cache'))
    .withPanel(stat('Cache hit ratio', 'fraction of prompt lookups answered from the embedding cache', 'percentunit', q(
      `sum(rate(sana_embedding_cache_lookups_total{${sel},result="hit"}[${RATE}])) / sum(rate(sana_embedding_cache_lookups_total{${sel}}[${RATE}]))`, 'hit ratio'), 8))
    .withPanel(stat('Cache size', 'bytes of embeddings the caches hold, all pods', 'bytes', q(`sum(sana_embedding_cache_bytes{${sel}})`, 'bytes'), 8))
    .withPanel(stat('Ready encoders', 'text-encoder pods whose model is loaded and warmed up', 'short', q(`sum(sana_ready{${sel}})`, 'ready'), 8))
    .withPanel(timeseries('Cache lookups/s', 'embedding cache lookups per second, by result', 'reqps', [q(`sum by (result) (rate(sana_embedding_cache_lookups_total{${sel}}[${RATE}]))`, '{{result}}')]))
    .withPanel(timeseries('Cache size per pod', 'bytes of embeddings each pod\'s cache holds', 'bytes', [q(`sum by (instance) (sana_embedding_cache_bytes{${sel}})`, '{{instance}}')]))
    .withRow(new RowBuilder('Calls and load'));
  return stageLoad(dash, 'text-encoder', 'Encode').build();
}

function decoder(): Dashboard {
  const sel = `${NS},service="decoder"`;
  const dash = dashboard('sana-decoder', 'SANA / Decoder', 'DC-AE decoding: decode latency, images encoded and load')
    .withRow(new RowBuilder('Images'))
    .withPanel(stat('Ready decoders', 'decoder pods whose model is loaded and warmed up', 'short', q(`sum(sana_ready{${sel}})`, 'ready'), 12))
    .withPanel(stat('Images/s', 'images the decoders encoded per second', 'short', q(`sum(rate(sana_images_total{${sel}}[${RATE}]))`, 'images/s'), 12))
    .withPanel(timeseries('Images/s by format', 'images the decoders encoded per second, by format', 'short', [q(`sum by (format) (rate(sana_images_total{${sel}}[${RATE}]))`, '{{format}}')]))
    .withPanel(timeseries('Decode stage time', 'p95 seconds of the decode stage as the gateway sees it (decode, image encoding and transport)', 's', [
      q(`histogram_quantile(0.95, sum by (le) (rate(sana_gateway_stage_seconds_bucket{${NS},stage="decode"}[${RATE}])))`, 'decode p95'),
    ]))
    .withRow(new RowBuilder('Calls and load'));
  return stageLoad(dash, 'decoder', 'Decode').build();
}

/** file name (without .json) → dashboard model */
export function buildDashboards(): Record<string, Dashboard> {
  return { 'sana-overview': overview(), 'sana-denoiser': denoiser(), 'sana-text-encoder': textEncoder(), 'sana-decoder': decoder() };
}

/** where `npm run dashboards` writes them: for manual import, and inside the chart that ships them */
export const DASHBOARD_DIRS = ['deploy/grafana', 'helm/sana/dashboards'];

/** The JSON text written to deploy/grafana/<name>.json and shipped in the chart. */
export function dashboardJson(model: Dashboard): string {
  return `${JSON.stringify(model, null, 2)}\n`;
}

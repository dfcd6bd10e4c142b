// `npm run dashboards`: writes the dashboards to deploy/grafana/*.json and into the chart (helm/sana/dashboards/),
// which ships them as ConfigMaps for the Grafana sidecar. deploy/check fails when either copy is stale.
import fs from 'node:fs';
import path from 'node:path';
import { buildDashboards, DASHBOARD_DIRS, dashboardJson } from './dashboards.ts';

const root = path.resolve(import.meta.dirname, '../..');
const dashboards = buildDashboards();
for (const dir of DASHBOARD_DIRS) {
  const target = path.join(root, dir);
  fs.mkdirSync(target, { recursive: true });
  for (const file of fs.readdirSync(target)) if (file.endsWith('.json')) fs.rmSync(path.join(target, file));
  for (const [name, model] of Object.entries(dashboards)) fs.writeFileSync(path.join(target, `${name}.json`), dashboardJson(model));
}
console.log(`wrote ${Object.keys(dashboards).length} dashboards to ${DASHBOARD_DIRS.join(' and ')}`);

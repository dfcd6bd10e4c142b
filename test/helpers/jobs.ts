// Conditions and metric readings for the job tests: wait on what the system reports, with generous deadlines
// (the CI machine has two loaded cores), never on fixed sleeps.
import type { Registry } from 'prom-client';

export async function waitFor(condition: () => Promise<boolean> | boolean, timeoutMs = 60_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`${what} not reached in ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The value of a counter or gauge whose labels include `labels` (histogram buckets left out). */
export async function metricValue(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val) && !('le' in v.labels))
    .reduce((sum, v) => sum + v.value, 0);
}

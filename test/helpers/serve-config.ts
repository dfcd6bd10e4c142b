// What the in-process tests serve with: `sana serve all` on loopback, any free port, no metrics endpoint unless an
// override asks for one, a short shutdown grace. Each test overrides what it is about.
import type { ServeConfig } from '../../services/cli/serve.ts';

export function loopbackServeConfig(model: string, overrides: Partial<ServeConfig> = {}): ServeConfig {
  return {
    role: 'all',
    model,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: -1,
    stages: { textEncoder: [], denoiser: [], decoder: [] },
    maxQueue: 4,
    shutdownGraceSeconds: 1,
    ...overrides,
  };
}

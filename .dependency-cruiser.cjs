// The walls between SANA Serve's parts, checked by `npm run walls` (dependency-cruiser) in CI.
//
//   services/cli            composition root: may import everything
//   services/gateway        orchestration over stage clients: no stage folder, no CLI
//   services/<stage>        text-encoder, denoiser, decoder: only their own folder and services/common
//   services/common         shared core and transport: no stage folder, no gateway, no CLI
//
// Transport (gRPC, NATS, HTTP, the generated proto code and proto <-> tensor conversion) lives only in the
// adapters below; the models, stages and the transport-free core never import it. Adding an adapter: name it
// server.ts / client.ts / remote-*.ts / *-server.ts / *-client.ts in its folder, or list it here.
const STAGE = '(text-encoder|denoiser|decoder)';

const ADAPTERS = [
  `^services/[^/]+/(server|client|remote-[^/]+|[^/]+-server|[^/]+-client)\\.ts$`,
  // services/common's transport side: gRPC bootstrap/client/status, admission and stage slots (gRPC statuses),
  // proto <-> tensor chunking, the Prometheus HTTP endpoint, the generated code
  `^services/common/(grpc-[^/]+|tensor-chunks|admission|stage-slot|metrics)\\.ts$`,
  `^services/common/gen/`,
  // the NATS side: the connection and names, the job queue, its workers and metrics, the shared embedding cache
  `^services/common/nats\\.ts$`,
  `^services/gateway/job-[^/]+\\.ts$`,
  `^services/text-encoder/shared-cache\\.ts$`,
  `^services/cli/`,
];

const TRANSPORT = [
  `^(node:)?(http|https|http2|net|tls|dgram)$`,
  `(^|/)node_modules/(@grpc/|grpc-health-check/|nats/|@nats-io/)`,
  ...ADAPTERS.filter((a) => !a.startsWith('^services/cli/')),
];

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'common-imports-no-stage',
      comment: 'services/common is shared by every process: it must not pull a stage, the gateway or the CLI in.',
      severity: 'error',
      from: { path: '^services/common/' },
      to: { path: `^services/(${STAGE.slice(1, -1)}|gateway|cli)/` },
    },
    {
      name: 'stages-stay-apart',
      comment: 'A stage folder imports only itself and services/common: never another stage, the gateway or the CLI.',
      severity: 'error',
      from: { path: `^services/${STAGE}/` },
      to: { path: `^services/(${STAGE.slice(1, -1)}|gateway|cli)/`, pathNot: '^services/$1/' },
    },
    {
      name: 'gateway-imports-no-stage',
      comment: 'The gateway orchestrates stages through their interfaces (services/common/stages.ts), never their code.',
      severity: 'error',
      from: { path: '^services/gateway/' },
      to: { path: `^services/(${STAGE.slice(1, -1)}|cli)/` },
    },
    {
      name: 'transport-only-in-adapters',
      comment:
        'gRPC, NATS, HTTP, the generated proto code and proto <-> tensor conversion belong to the transport adapters ' +
        '(server.ts, client.ts, remote-*.ts, services/common/grpc-*.ts, ...); models, stages and the core stay transport-free.',
      severity: 'error',
      from: { path: '^services/', pathNot: ADAPTERS },
      to: { path: TRANSPORT },
    },
    {
      name: 'generators-not-in-production',
      comment: 'Random checkpoints and test tokenizers are for tests, benchmarks and `sana checkpoint random` only.',
      severity: 'error',
      from: { path: '^services/', pathNot: ['^services/cli/', '^services/common/random-[^/]+\\.ts$'] },
      to: { path: '^services/common/random-[^/]+\\.ts$' },
    },
    {
      name: 'production-uses-no-dev-dependency',
      comment: 'services/ runs in production images, where devDependencies are not installed.',
      severity: 'error',
      from: { path: '^services/' },
      to: { dependencyTypes: ['npm-dev'] },
    },
    {
      name: 'resolvable',
      comment: 'Every import resolves to a file or an installed package.',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
  },
};

// Container health check: asks the process's gRPC health service (grpc.health.v1) for the overall status on
// 127.0.0.1:$SANA_PORT (default 50051) and exits 0 only when it is SERVING (model loaded and warmed up).
// Kubernetes probes the same service natively (grpc probes); this is for `docker run` and Compose.
const grpc = require('@grpc/grpc-js');
const { service } = require('grpc-health-check');

const port = process.env.SANA_PORT || '50051';
const Health = grpc.makeClientConstructor(service, 'grpc.health.v1.Health');
const client = new Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
client.check({ service: '' }, { deadline: Date.now() + 3000 }, (error, response) => {
  const status = error ? `${grpc.status[error.code]}: ${error.details}` : response.status;
  console.log(`grpc.health.v1 on port ${port}: ${status}`);
  process.exit(!error && response.status === 'SERVING' ? 0 : 1);
});

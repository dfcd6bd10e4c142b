// Where the denoiser's transformer runs: ONNX Runtime on the CPU (the default and the reference) or the CUDA kernels
// of kernels/ (cuda-backend.ts). A module of its own so the CLI can name the choices without loading either engine.
export const DEVICES = ['cpu', 'cuda'] as const;
export type Device = (typeof DEVICES)[number];

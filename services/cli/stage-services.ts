// The stage services that `sana serve <stage|all>` hosts, imported on demand by serve.ts so that the gateway role
// never loads ONNX Runtime, the tokenizer or sharp (`npm run walls` checks it).
export { addDecoderService, warmUpDecoder } from '../decoder/server.ts';
export { LocalDecoder } from '../decoder/stage.ts';
export { addDenoiserService, warmUpDenoiser } from '../denoiser/server.ts';
export { LocalDenoiser } from '../denoiser/stage.ts';
export { addTextEncoderService, warmUpTextEncoder } from '../text-encoder/server.ts';
export { LocalTextEncoder } from '../text-encoder/stage.ts';
export { checkModelDir } from './local-stages.ts';

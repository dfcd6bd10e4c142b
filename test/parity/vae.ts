// Parity of the DC-AE decoder on every `vae*` group: `<group>.latent` (already divided by scaling_factor) →
// `<group>.sample`, with the variant's own vae/ checkpoint as shipped.
import { DcAeDecoder } from '../../services/decoder/dc-ae.ts';
import { tensor } from '../../services/common/tensor.ts';
import { maxRelErr } from './golden.ts';
import { FLOAT_LIMIT, groupsByOutput, type Stage } from './stages.ts';

export const vaeStage: Stage = {
  name: 'vae',
  groups: (g) => groupsByOutput(g, 'vae', 'sample'),
  async check(golden, group) {
    const decoder = await DcAeDecoder.load(golden.component('vae'));
    try {
      const t = (n: string) => `${group}.${n}`;
      const out = await decoder.decode(tensor(golden.f32(t('latent')), golden.shape(t('latent'))));
      const refShape = golden.shape(t('sample'));
      if (out.dims.join() !== refShape.join()) throw new Error(`sample shape [${out.dims}] vs reference [${refShape}]`);
      return [{ tensor: t('sample'), metric: 'max_rel_err', value: maxRelErr(out.data, golden.f32(t('sample'))), limit: FLOAT_LIMIT }];
    } finally {
      await decoder.close();
    }
  },
};

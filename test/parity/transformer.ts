// Parity of the Linear-DiT on every `transformer*` group: the variant's own transformer/ checkpoint as shipped.
import { type DitInputs, LinearDit } from '../../services/denoiser/linear-dit.ts';
import { tensor } from '../../services/common/tensor.ts';
import { type Golden, maxRelErr } from './golden.ts';
import { FLOAT_LIMIT, groupsByOutput, type Stage } from './stages.ts';

/** The transformer inputs a golden group recorded (`<group>.hidden_states`, …). */
export function goldenDitInputs(golden: Golden, group: string): DitInputs {
  const t = (n: string) => `${group}.${n}`;
  return {
    hiddenStates: tensor(golden.f32(t('hidden_states')), golden.shape(t('hidden_states'))),
    encoderHiddenStates: tensor(golden.f32(t('encoder_hidden_states')), golden.shape(t('encoder_hidden_states'))),
    encoderAttentionMask: tensor(golden.i64(t('encoder_attention_mask')), golden.shape(t('encoder_attention_mask'))),
    timestep: tensor(golden.f32(t('timestep')), golden.shape(t('timestep'))),
  };
}

export const transformerStage: Stage = {
  name: 'transformer',
  groups: (g) => groupsByOutput(g, 'transformer', 'output'),
  async check(golden, group) {
    const dit = await LinearDit.load(golden.component('transformer'));
    try {
      const t = (n: string) => `${group}.${n}`;
      const out = await dit.forward(goldenDitInputs(golden, group));
      const ref = golden.f32(t('output'));
      const refShape = golden.shape(t('output'));
      if (out.dims.join() !== refShape.join()) throw new Error(`output shape [${out.dims}] vs reference [${refShape}]`);
      return [{ tensor: t('output'), metric: 'max_rel_err', value: maxRelErr(out.data, ref), limit: FLOAT_LIMIT }];
    } finally {
      await dit.close();
    }
  },
};

// Host-side input preparation shared by the device forward and the reference.
#include <cmath>

#include "dit_model.h"

namespace sana {

std::vector<float> timestepSinusoid(const float *t, int batch) {
  const int half = kTimestepChannels / 2;
  const float logMax = (float)-std::log(10000.0);
  std::vector<float> out((size_t)batch * kTimestepChannels);
  for (int i = 0; i < half; i++) {
    const float exponent = (float)((double)(float)((double)logMax * i) / half);
    const float freq = (float)std::exp((double)exponent);
    for (int b = 0; b < batch; b++) {
      const float arg = t[b] * freq;
      out[(size_t)b * kTimestepChannels + i] = std::cos(arg);
      out[(size_t)b * kTimestepChannels + half + i] = std::sin(arg);
    }
  }
  return out;
}

std::vector<float> maskBias(const float *mask, int count) {
  std::vector<float> out(count);
  for (int i = 0; i < count; i++) out[i] = (1.f - mask[i]) * kMaskBias;
  return out;
}

}  // namespace sana


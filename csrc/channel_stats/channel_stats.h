// channel_stats: each channel's mean and population standard deviation over wavelength, of a network's
// activation [B, C, L] (float32), for the OOD score's taps (zfast/ood.py: channel_statistics is the spec).
//
//   mean_c = (1/L) Σ_l a[b, c, l]        std_c = sqrt((1/L) Σ_l (a[b, c, l] - mean_c)²)      (two passes)
//
// Sums in double (the spec sums in float32: the two agree to ~1e-7 relative). The activation may be in either
// memory order: channels-last ([B, L, C] in memory, what Conv1dNHWC writes) or contiguous ([B, C, L]); one
// sample's block (C x L floats, 16 KB for the quick preset's taps) stays in L1 between the two passes.
#pragma once

#include <cstdint>

namespace zfast {
namespace channel_stats {

struct Params {
  const float* activation = nullptr;
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t length = 0;
  int64_t stride_b = 0;  // elements
  int64_t stride_c = 0;
  int64_t stride_l = 0;  // stride_c == 1 (channels-last) or stride_l == 1 (contiguous): the caller copies others
  float* out = nullptr;  // [B, 2C]: the C means, then the C standard deviations
};

// CPU launcher (channel_stats_cpu.cpp): samples split over up to n_threads std::threads. No CUDA launcher:
// off the CPU zfast runs the spec.
void launch_cpu(const Params& p, int n_threads);

}  // namespace channel_stats
}  // namespace zfast

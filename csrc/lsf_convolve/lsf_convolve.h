// lsf_convolve: spectra [B, M] convolved with an instrument's line-spread kernel [2h + 1], the edge pixels
// replicated outwards (zfast/data/instrument.py: Instrument.convolve_lsf's torch lines are the spec, the fallback
// off the CPU and the tests' oracle: replicate padding, then conv1d with the flipped kernel), optionally with the
// squares of the result beside it (what the template fit's χ² products read next).
//
//   out[b, j] = Σ_{d = -h..h} x[b, clamp(j + d, 0, M - 1)] · kernel[h - d]
//   square[b, j] = out[b, j]²
//
// Sums in the input's precision, tap by tap in the order d = -h..h (the interior of a row is a vector loop over j
// for each tap; the h pixels at each end clamp). The spec's oneDNN convolution sums in its own order: the two
// agree to a few ulps.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/host_device.h"

namespace zfast {
namespace lsf_convolve {

struct Params {
  const void* x = nullptr;       // [B, M], float32 or float64 (double_precision), rows contiguous
  const void* kernel = nullptr;  // [2h + 1], same dtype
  int64_t batch = 0;
  int64_t length = 0;  // M
  int64_t half = 0;    // h
  bool double_precision = false;
  void* out = nullptr;     // [B, M]
  void* square = nullptr;  // [B, M] or nullptr
};

// One row: x [M] -> out [M] (and square [M] unless nullptr); x and out must not overlap. Always inlined, so each
// caller's CPU clone vectorises it for its own ISA (lsf_convolve_cpu.cpp; redshift_resample_cpu.cpp renders
// templates through it).
template <typename T>
ZFAST_HD_ALWAYS_INLINE void convolve_row(const T* __restrict__ x, const T* __restrict__ kernel, int64_t m, int64_t h,
                                         T* __restrict__ out, T* __restrict__ square) {
  const int64_t lo = std::min(h, m), hi = std::max(lo, m - h);  // [lo, hi): every tap in range
  for (int64_t j = 0; j < m; ++j) {
    if (j == lo) j = hi;  // the interior is the vector loop below
    if (j >= m) break;
    T sum = 0;
    for (int64_t d = -h; d <= h; ++d) {
      const int64_t i = std::min(std::max(j + d, int64_t{0}), m - 1);
      sum += x[i] * kernel[h - d];
    }
    out[j] = sum;
  }
  if (hi > lo) {
    for (int64_t j = lo; j < hi; ++j) out[j] = 0;
    for (int64_t d = -h; d <= h; ++d) {
      const T k = kernel[h - d];
      const T* __restrict__ xs = x + d;
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) out[j] += xs[j] * k;
    }
  }
  if (square != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) square[j] = out[j] * out[j];
  }
}

// CPU launcher (lsf_convolve_cpu.cpp): rows split over up to n_threads std::threads. No CUDA launcher: off the
// CPU the spec (torch's convolution) runs.
void launch_cpu(const Params& p, int n_threads);

}  // namespace lsf_convolve
}  // namespace zfast

// CPU launcher of channel_stats (the maths in channel_stats.h). Channels-last blocks are reduced with the
// channels in the vector lanes (rows of C contiguous floats, summed over l); contiguous ones row by row.
// The loops vectorise under -O3 -fopenmp-simd (double accumulators); clones for AVX-512, AVX2 and baseline x86-64.
#include <cmath>
#include <vector>

#include "channel_stats.h"
#include "common/cpu_clones.h"
#include "common/parallel_rows.h"

namespace zfast {
namespace channel_stats {
namespace {

constexpr int64_t kMinValuesPerThread = 1 << 16;

ZFAST_CPU_CLONES void rows(const Params& p, int64_t begin, int64_t end) {
  const int64_t n_c = p.channels, n_l = p.length;
  const double inv_l = 1.0 / static_cast<double>(n_l);
  std::vector<double> sums(static_cast<size_t>(2 * n_c));
  double* __restrict__ mean = sums.data();
  double* __restrict__ square = mean + n_c;
  for (int64_t b = begin; b < end; ++b) {
    const float* __restrict__ a = p.activation + b * p.stride_b;
    float* __restrict__ out = p.out + b * 2 * n_c;
    if (p.stride_c == 1) {  // channels-last: row l holds the C channels
      for (int64_t c = 0; c < n_c; ++c) mean[c] = 0.0, square[c] = 0.0;
      for (int64_t l = 0; l < n_l; ++l) {
        const float* __restrict__ row = a + l * p.stride_l;
#pragma omp simd
        for (int64_t c = 0; c < n_c; ++c) mean[c] += row[c];
      }
#pragma omp simd
      for (int64_t c = 0; c < n_c; ++c) mean[c] *= inv_l;
      for (int64_t l = 0; l < n_l; ++l) {
        const float* __restrict__ row = a + l * p.stride_l;
#pragma omp simd
        for (int64_t c = 0; c < n_c; ++c) {
          const double d = row[c] - mean[c];
          square[c] += d * d;
        }
      }
    } else {  // rows of L contiguous floats (zfast/ops/channel_stats.py copies any other layout first). Unit
              // stride written as such: with the runtime stride_l the loads were gathers, 6x slower.
      for (int64_t c = 0; c < n_c; ++c) {
        const float* __restrict__ row = a + c * p.stride_c;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t l = 0; l < n_l; ++l) s += row[l];
        const double m = s * inv_l;
        double q = 0.0;
#pragma omp simd reduction(+ : q)
        for (int64_t l = 0; l < n_l; ++l) {
          const double d = row[l] - m;
          q += d * d;
        }
        mean[c] = m;
        square[c] = q;
      }
    }
    for (int64_t c = 0; c < n_c; ++c) {
      out[c] = static_cast<float>(mean[c]);
      out[n_c + c] = static_cast<float>(std::sqrt(square[c] * inv_l));
    }
  }
}

}  // namespace

void launch_cpu(const Params& p, int n_threads) {
  parallel_rows(p.batch, p.channels * p.length, n_threads, kMinValuesPerThread,
                [&p](int64_t begin, int64_t end) { rows(p, begin, end); });
}

}  // namespace channel_stats
}  // namespace zfast

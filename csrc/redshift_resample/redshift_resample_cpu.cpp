// CPU launcher of redshift_resample (maths in redshift_resample.h).
//
// Rows are independent and each is O(M): a row is done serially by one thread, in two vectorisable loops
// (edges -> cumulative values in an L1-sized buffer, then bins -> differences), and the batch is split over
// std::threads only when there is enough work to pay for starting them (no OpenMP: see STYLE.md). Observed
// edges increase, so the uncovered bins are counted in the edge loop and filled at the row's ends after it
// (no per-bin select, which kept GCC from vectorising the bin loop). The row
// function is compiled for AVX-512, AVX2 and baseline x86-64 with target_clones and picked at load time,
// so the wheel stays portable; the AVX2/AVX-512 clones vectorise the gathers (vgatherdpd).
#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

#include "redshift_resample.h"

namespace zfast {
namespace redshift_resample {
namespace {

// Below this many output values a batch is done on the calling thread (starting a thread costs ~20 us).
constexpr int64_t kMinValuesPerThread = 1 << 15;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ZFAST_CPU_CLONES
#endif

ZFAST_CPU_CLONES
void resample_rows(const Params& p, int64_t row_begin, int64_t row_end) {
  // Everything the loops read, hoisted into restrict-qualified locals: the stores to `out` and the row
  // buffers then provably do not alias the inputs, which the vectoriser needs.
  const int64_t n_bins = p.n_bins;
  const int64_t n_edges = n_bins + 1;
  const int64_t n_rest_pixels = p.n_rest_pixels;
  const double n_rest = static_cast<double>(n_rest_pixels);
  const double dln = p.dln;
  const double inv_expm1_dln = p.inv_expm1_dln;
  const float fill = p.fill;
  const double* __restrict__ edge_position = p.edge_position;
  const double* __restrict__ inv_bin_width = p.inv_bin_width;
  std::vector<double> edge_cumulative(static_cast<size_t>(n_edges));
  double* __restrict__ cum = edge_cumulative.data();

  for (int64_t b = row_begin; b < row_end; ++b) {
    float* __restrict__ out = p.out + b * n_bins;
    const int64_t s = p.sed_index[b];
    if (s < 0 || s >= p.n_seds) {
      std::fill(out, out + n_bins, fill);
      continue;
    }
    const double* __restrict__ row = p.cumulative + s * (n_rest_pixels + 1);
    const double offset = row_offset(std::log1p(p.z[b]), p.ln_edge0, dln);
    int64_t n_below = 0;
    int64_t n_above = 0;
#pragma omp simd reduction(+ : n_below, n_above)
    for (int64_t j = 0; j < n_edges; ++j) {
      const double t = edge_position[j] - offset;
      n_below += edge_below(t);
      n_above += edge_above(t, n_rest);
      cum[j] = cumulative_at(row, t, n_rest_pixels, dln, inv_expm1_dln);
    }
#pragma omp simd
    for (int64_t j = 0; j < n_bins; ++j) {
      out[j] = bin_mean(cum[j], cum[j + 1], inv_bin_width[j]);
    }
    // Uncovered bins: the first n_below (lower edge below the grid), the last n_above (upper edge above).
    std::fill(out, out + std::min(n_below, n_bins), fill);
    std::fill(out + std::max<int64_t>(n_bins - n_above, 0), out + n_bins, fill);
  }
}

}  // namespace

void launch_cpu(const Params& p, int n_threads) {
  if (p.batch <= 0 || p.n_bins <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, (p.batch * p.n_bins) / kMinValuesPerThread);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(n_threads), by_work, p.batch}));
  if (threads == 1) {
    resample_rows(p, 0, p.batch);
    return;
  }
  const int64_t chunk = (p.batch + threads - 1) / threads;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * chunk;
    const int64_t end = std::min(p.batch, begin + chunk);
    if (begin < end) workers.emplace_back(resample_rows, std::cref(p), begin, end);
  }
  resample_rows(p, 0, std::min(p.batch, chunk));
  for (auto& w : workers) w.join();
}

}  // namespace redshift_resample
}  // namespace zfast

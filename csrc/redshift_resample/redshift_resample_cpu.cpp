// CPU launcher of redshift_resample (maths in redshift_resample.h).
//
// Rows are independent and each is O(M): a row is done serially by one thread, in two vectorisable loops
// (edges -> cumulative values in an L1-sized buffer, then bins -> differences), and the batch is split over
// std::threads only when there is enough work to pay for starting them (no OpenMP: see STYLE.md). The row
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
  const int64_t n_edges = p.n_bins + 1;
  std::vector<double> edge_cumulative(static_cast<size_t>(n_edges));
  std::vector<unsigned char> edge_ok(static_cast<size_t>(n_edges));
  double* const cum = edge_cumulative.data();
  unsigned char* const ok = edge_ok.data();
  const double n_rest = static_cast<double>(p.n_rest_pixels);

  for (int64_t b = row_begin; b < row_end; ++b) {
    float* const out = p.out + b * p.n_bins;
    const int64_t s = p.sed_index[b];
    if (s < 0 || s >= p.n_seds) {
      std::fill(out, out + p.n_bins, p.fill);
      continue;
    }
    const double* const row = p.cumulative + s * (p.n_rest_pixels + 1);
    const double offset = row_offset(std::log1p(p.z[b]), p.ln_edge0, p.dln);
#pragma omp simd
    for (int64_t j = 0; j < n_edges; ++j) {
      const double t = p.edge_position[j] - offset;
      ok[j] = edge_covered(t, n_rest);
      cum[j] = cumulative_at(row, t, p.n_rest_pixels, p.dln, p.inv_expm1_dln);
    }
#pragma omp simd
    for (int64_t j = 0; j < p.n_bins; ++j) {
      out[j] = bin_mean(cum[j], cum[j + 1], p.inv_bin_width[j], ok[j] & ok[j + 1], p.fill);
    }
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

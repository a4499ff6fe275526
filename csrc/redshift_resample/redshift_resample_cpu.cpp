// CPU launcher of redshift_resample (maths in redshift_resample.h).
//
// Rows are independent and each is O(M): a row is done serially by one thread, in two vectorisable loops
// (edges -> cumulative values in an L1-sized buffer, then bins -> differences), and the batch is split over
// std::threads only when there is enough work to pay for starting them (no OpenMP: see STYLE.md). Observed
// edges increase, so the uncovered bins are found by bisection and filled at the row's ends afterwards (no
// per-edge coverage test, and no per-bin select, which kept GCC from vectorising the bin loop). The row
// function is compiled for AVX-512, AVX2 and baseline x86-64 with target_clones and picked at load time,
// so the wheel stays portable. GCC vectorises the arithmetic of the edge loop but emulates its two gathers
// per edge (C_s[k] and C_s[k+1]) with 16 scalar loads and as many inserts per 8 edges, which made the loop
// compute-bound at ~4 cycles per edge; on CPUs with AVX-512 the edge loop is therefore written by hand
// (edges_avx512): C_s[k] and C_s[k+1] are adjacent, so each edge's pair comes in one 16-byte load and two
// permutes split the 8 pairs into the two vectors (a hardware vgatherdpd pair was no faster than GCC's
// emulation on Zen 4). Measured on the cache-resident library (S = 16, B = 4096, one thread, min of 60):
// 3.1 -> 2.0 ms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define ZFAST_HAVE_AVX512_EDGES 1
#else
#define ZFAST_HAVE_AVX512_EDGES 0
#endif

#include "common/cpu_clones.h"
#include "common/parallel_rows.h"
#include "lsf_convolve/lsf_convolve.h"
#include "redshift_resample.h"

namespace zfast {
namespace redshift_resample {
namespace {

// Below this many output values a batch is done on the calling thread: a thread costs ~20 us to start, and
// right after one of torch's parallel ops its OpenMP workers still spin on both cores, so a second thread
// made a 256-spectrum batch slower, not faster (0.43 vs 0.21 ms measured after a conv1d; alone, one thread
// and two took the same 0.22 ms).
constexpr int64_t kMinValuesPerThread = 1 << 18;


// Software prefetch of the stretch of the next row's cumulative that its bins will read. Rows are random
// SEDs of a library much larger than the caches, and each row is only a few KB (two to three 4 KB pages),
// too short for the hardware stream prefetcher to train on, so without this the loop waits on DRAM latency.
// The prefetches are spread over the current row's edge loop (a few lines per chunk of edges) rather than
// issued in one burst, and go to L2, whose miss queue is deeper than L1's. Measured (B = 4096, S = 10,000,
// 2 threads, min of 60): no prefetch 3.8 ms at dlnλ = 1/2000 and 5.8 ms at 1/6000; into L1 2.0 and 5.7 ms;
// into L2 2.0 and 3.1 ms. A cache-resident library (S = 16) takes 1.7 ms: compute-bound from there.
struct RowStretch {
  const double* begin = nullptr;  // first cache line to fetch
  int64_t n_lines = 0;
};

constexpr int64_t kDoublesPerLine = 64 / sizeof(double);
constexpr int64_t kEdgesPerChunk = 64;

RowStretch stretch_of(const Params& p, double offset, int64_t s) {
  RowStretch stretch;
  if (s < 0 || s >= p.n_seds) return stretch;
  const double first = p.edge_position[0] - offset;
  const double last = p.edge_position[p.n_bins] - offset;
  const int64_t begin = std::max<int64_t>(0, std::min<int64_t>(p.n_rest_pixels, static_cast<int64_t>(std::max(first, 0.0))));
  const int64_t end = std::min<int64_t>(p.n_rest_pixels + 1, static_cast<int64_t>(std::max(last, 0.0)) + 2);
  stretch.begin = p.cumulative + s * (p.n_rest_pixels + 1) + begin;
  stretch.n_lines = std::max<int64_t>(0, (end - begin + kDoublesPerLine - 1) / kDoublesPerLine);
  return stretch;
}

#if ZFAST_HAVE_AVX512_EDGES
// cum[j] = C_s(edge_position[j] - offset) for j in [j_begin, j_end) in steps of 8, the maths of cumulative_at
// (the clamps, the truncation, expm1_small and interpolate evaluated on 8 lanes); returns the first j not
// done, for the caller's scalar tail. A NaN t (validation off) becomes 0 at the first max, as in the header.
template <int Degree>
__attribute__((target("arch=x86-64-v4"))) int64_t edges_avx512(const double* __restrict__ row,
                                                               const double* __restrict__ edge_position,
                                                               int64_t j_begin, int64_t j_end, double offset,
                                                               double n_rest, int32_t last_pixel, double dln,
                                                               double inv_expm1_dln, double* __restrict__ cum) {
  const __m512d v_offset = _mm512_set1_pd(offset);
  const __m512d v_n_rest = _mm512_set1_pd(n_rest);
  const __m256i v_last_pixel = _mm256_set1_epi32(last_pixel);
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  int64_t j = j_begin;
  for (; j + 8 <= j_end; j += 8) {
    __m512d t = _mm512_sub_pd(_mm512_loadu_pd(edge_position + j), v_offset);
    t = _mm512_min_pd(_mm512_max_pd(t, _mm512_setzero_pd()), v_n_rest);
    const __m256i k = _mm256_min_epi32(_mm512_cvttpd_epi32(t), v_last_pixel);
    const __m512d x = (t - _mm512_cvtepi32_pd(k)) * dln;
    alignas(32) int32_t pixel[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(pixel), k);
    // (C[k_i], C[k_i + 1]) for i = 0..7, two per 256 bits, four per 512, then split into c0 and c1.
    const __m256d pairs01 = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(row + pixel[0])),
                                                 _mm_loadu_pd(row + pixel[1]), 1);
    const __m256d pairs23 = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(row + pixel[2])),
                                                 _mm_loadu_pd(row + pixel[3]), 1);
    const __m256d pairs45 = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(row + pixel[4])),
                                                 _mm_loadu_pd(row + pixel[5]), 1);
    const __m256d pairs67 = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(row + pixel[6])),
                                                 _mm_loadu_pd(row + pixel[7]), 1);
    const __m512d pairs0123 = _mm512_insertf64x4(_mm512_castpd256_pd512(pairs01), pairs23, 1);
    const __m512d pairs4567 = _mm512_insertf64x4(_mm512_castpd256_pd512(pairs45), pairs67, 1);
    const __m512d c0 = _mm512_permutex2var_pd(pairs0123, even, pairs4567);
    const __m512d c1 = _mm512_permutex2var_pd(pairs0123, odd, pairs4567);
    _mm512_storeu_pd(cum + j, interpolate(c0, c1, expm1_small<Degree>(x) * inv_expm1_dln));
  }
  return j;
}
#endif

template <int Degree>
ZFAST_CPU_CLONES void resample_rows(const Params& p, int64_t row_begin, int64_t row_end) {
  // Everything the loops read, hoisted into restrict-qualified locals: the stores to `out` and the row
  // buffers then provably do not alias the inputs, which the vectoriser needs.
  const int64_t n_bins = p.n_bins;
  const int64_t n_edges = n_bins + 1;
  const int64_t n_rest_pixels = p.n_rest_pixels;
  const double n_rest = static_cast<double>(n_rest_pixels);
  const int32_t last_pixel = static_cast<int32_t>(n_rest_pixels - 1);
  const double dln = p.dln;
  const double inv_expm1_dln = p.inv_expm1_dln;
  const float fill = p.fill;
  const double* __restrict__ edge_position = p.edge_position;
  const double* __restrict__ inv_bin_width = p.inv_bin_width;
  std::vector<double> edge_cumulative(static_cast<size_t>(n_edges));
  double* __restrict__ cum = edge_cumulative.data();
  std::vector<float> row_buffer(p.lsf_kernel != nullptr ? static_cast<size_t>(n_bins) : 0);
  std::vector<double> offsets(static_cast<size_t>(row_end - row_begin));
  for (int64_t b = row_begin; b < row_end; ++b) {
    offsets[b - row_begin] = row_offset(std::log1p(p.z[b]), p.ln_edge0, dln);
  }
  const int64_t n_chunks = (n_edges + kEdgesPerChunk - 1) / kEdgesPerChunk;
#if ZFAST_HAVE_AVX512_EDGES
  const bool use_avx512 = p.allow_avx512 && cpu_uses_avx512();
#endif

  for (int64_t b = row_begin; b < row_end; ++b) {
    float* __restrict__ out = p.out + b * n_bins;
    const int64_t s = p.sed_index[b];
    if (s < 0 || s >= p.n_seds) {
      std::fill(out, out + n_bins, fill);
      continue;
    }
    const RowStretch next =
        b + 1 < row_end ? stretch_of(p, offsets[b + 1 - row_begin], p.sed_index[b + 1]) : RowStretch{};
    const int64_t lines_per_chunk = (next.n_lines + n_chunks - 1) / n_chunks;
    const double* __restrict__ row = p.cumulative + s * (n_rest_pixels + 1);
    const double offset = offsets[b - row_begin];
    // Observed edges increase, so the uncovered ones are a run at each end, found by bisection:
    // edge_below(t) <=> edge_position < offset - tol, edge_above(t) <=> edge_position > offset + N + tol.
    // (Counting them in the edge loop instead cost 18 % of the row, measured.)
    const int64_t n_below =
        std::lower_bound(edge_position, edge_position + n_edges, offset - kCoverageTolerance) - edge_position;
    const int64_t n_above =
        edge_position + n_edges -
        std::upper_bound(edge_position, edge_position + n_edges, offset + n_rest + kCoverageTolerance);
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      for (int64_t line = chunk * lines_per_chunk; line < std::min(next.n_lines, (chunk + 1) * lines_per_chunk); ++line) {
        __builtin_prefetch(next.begin + line * kDoublesPerLine, 0, 1);  // into L2 (prefetcht2)
      }
      const int64_t j_end = std::min(n_edges, (chunk + 1) * kEdgesPerChunk);
      int64_t j_begin = chunk * kEdgesPerChunk;
#if ZFAST_HAVE_AVX512_EDGES
      if (use_avx512) {
        j_begin = edges_avx512<Degree>(row, edge_position, j_begin, j_end, offset, n_rest, last_pixel, dln,
                                       inv_expm1_dln, cum);
      }
#endif
#pragma omp simd
      for (int64_t j = j_begin; j < j_end; ++j) {
        cum[j] = cumulative_at<Degree>(row, edge_position[j] - offset, last_pixel, dln, inv_expm1_dln);
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < n_bins; ++j) {
      out[j] = bin_mean(cum[j], cum[j + 1], inv_bin_width[j]);
    }
    // Uncovered bins: the first n_below (lower edge below the grid), the last n_above (upper edge above).
    std::fill(out, out + std::min(n_below, n_bins), fill);
    std::fill(out + std::max<int64_t>(n_bins - n_above, 0), out + n_bins, fill);
    if (p.lsf_kernel != nullptr) {  // the row is in L1: convolve it there rather than in a second pass over memory
      std::copy(out, out + n_bins, row_buffer.data());
      lsf_convolve::convolve_row(row_buffer.data(), p.lsf_kernel, n_bins, p.lsf_half, out,
                                 p.square == nullptr ? nullptr : p.square + b * n_bins);
    }
  }
}

}  // namespace

bool cpu_uses_avx512() {
#if ZFAST_HAVE_AVX512_EDGES
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
#else
  return false;
#endif
}

void launch_cpu(const Params& p, int n_threads) {
  if (p.n_bins <= 0) return;
  const auto rows = p.dln <= kCubicMaxDln ? &resample_rows<3> : &resample_rows<5>;
  parallel_rows(p.batch, p.n_bins, n_threads, kMinValuesPerThread,
                [&](int64_t begin, int64_t end) { rows(p, begin, end); });
}

InputStats input_stats_cpu(const double* z, const int64_t* sed_index, int64_t batch) {
  // This file is compiled with -ffast-math, under which isfinite() may fold to true: test the exponent bits.
  InputStats stats;
  for (int64_t b = 0; b < batch; ++b) {
    uint64_t bits;
    std::memcpy(&bits, z + b, sizeof bits);
    if (((bits >> 52) & 0x7ff) == 0x7ff) {
      ++stats.n_nonfinite;
    } else {
      stats.z_min = std::min(stats.z_min, z[b]);
      stats.z_max = std::max(stats.z_max, z[b]);
    }
    stats.index_min = std::min(stats.index_min, sed_index[b]);
    stats.index_max = std::max(stats.index_max, sed_index[b]);
  }
  return stats;
}

}  // namespace redshift_resample
}  // namespace zfast

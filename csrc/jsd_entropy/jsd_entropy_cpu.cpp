// CPU launcher of jsd_entropy (maths, gradient and stability in jsd_entropy.h).
//
// A row is done serially by one thread in four vectorised passes over data that stay in L1 (C = 800 floats is
// 3 KB per array):
//   1. m = max x (and, with validation on, the target's sum and minimum and the NaN/inf bits of both rows);
//   2. e_c = exp(x_c - m) into the gradient row, x_c - m into a per-thread scratch row, s = sum e_c;
//   3. in chunks of 64 classes: P_c = e_c / s, ln P_c = (x_c - m) - ln s, the class terms, P_c into the
//      gradient row, g_c into the scratch row, and the sums JS, H and sum P g. A chunk where the target is 0
//      throughout (most of the row with one-hot or box labels) needs no log at all; the others take two;
//   4. grad_c = grad_scale P_c (g_c - sum P g).
// The exp and the logs bound the loop. In float the logs are inlined (cpu_logf below: 3.7 -> 3.0 ms for a
// dense target at B = 4096, C = 800); exp, and the logs in double, vectorise only through glibc's libmvec,
// which GCC calls when __FAST_MATH__ is defined (CMakeLists.txt compiles this file with -O3 -ffast-math
// -fopenmp-simd; the simd pragmas need no OpenMP runtime). The row function is compiled for AVX-512, AVX2 and baseline x86-64 with
// target_clones and picked at load time, so the wheel stays portable while the AVX2 and AVX-512 clones call
// the 8- and 16-lane libmvec exp/log (libmvec's 16-lane logf: 0.33 ns per value against 0.45 ns with 8 lanes
// on this machine's AMD EPYC). The next row's inputs are prefetched during pass 3. The batch is split over
// std::threads when there is enough work (no OpenMP: see STYLE.md, FACTS.md).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_clones.h"
#include "common/parallel_rows.h"
#include "jsd_entropy.h"

namespace zfast {
namespace jsd_entropy {
namespace {

// Below this many logits per thread a batch is done on the calling thread (starting a thread costs ~20 us,
// a class ~1 ns).
constexpr int64_t kMinClassesPerThread = 1 << 15;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZFAST_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define ZFAST_ALWAYS_INLINE inline
#endif

// Floor of exp's argument x_c - m. Below about -87 (float) or -708 (double) the result is subnormal or 0, and
// libmvec computes such lanes with its scalar fallback (measured 5.3 ns against 0.45 ns per value), while a
// sharp softmax, which the entropy term favours, has many of them. exp is evaluated at the floor, and P_c is
// set to 0 below it (a select in pass 3, no dearer than the floor alone), so P_c is exactly 0 there, as on
// the GPU. Keeping exp(-60)/s instead was wrong for huge logits: P_c ln P_c with ln P_c ~ -1e25 made the loss
// -78. The classes dropped hold < 60 exp(-60) = 5e-25 each of the true loss (s keeps their < exp(-60)).
// The CUDA kernel needs no floor: the GPU's exp has no slow path.
template <typename T>
constexpr T kExpArgumentFloor = T(-60);
template <>
constexpr double kExpArgumentFloor<double> = -650.0;

// P_c from e_c = exp(max(x_c - m, floor)) and x_c - m: exactly 0 below the floor.
template <typename T>
ZFAST_ALWAYS_INLINE T probability(T e, T shifted, T inv_s) {
  return shifted > kExpArgumentFloor<T> ? e * inv_s : T(0);
}

// Classes per chunk of pass 3 (a multiple of every clone's vector length).
constexpr int64_t kTargetChunk = 64;
template <typename T>
constexpr int64_t kValuesPerLine = 64 / sizeof(T);

// Software prefetch of the next row's logits and target, spread over pass 3's chunks (the exp/log-bound part)
// so that pass 1 of the next row finds them in cache instead of waiting on DRAM: measured at B = 4096,
// C = 800, 2 threads, min of 60, 2.5 -> 2.2 ms (box target) and 4.0 -> 3.5 ms (dense target) into L1; into L2
// only 2.35 and 3.9 ms. Rows of up to 8 KB per array go to L1 (with the current row's arrays and the two
// scratch rows they fit its 32-48 KB); longer rows go to L2.
constexpr int64_t kL1PrefetchRowBytes = 8 << 10;

// ln v for float v >= FLT_MIN (the kernel clamps both log arguments there), inlined into the vector loop:
// libmvec's logf is a call that clobbers every vector register. v = 2^e m with m in [1/sqrt 2, sqrt 2) (from the
// bits, integer maths), ln v = e ln 2 + 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.1716, by its series to s^9
// (truncation < 7e-10). Measured: at most 3.8 ulp from the double-precision log over 4M values log-uniform in
// [FLT_MIN, 1] (the range of P, Q and M), 0.23-0.48 ns per value against libmvec's 0.44-0.66 on this machine.
// The GPU keeps logf; the double path keeps libmvec's log.
ZFAST_ALWAYS_INLINE float cpu_logf(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const int32_t exponent = static_cast<int32_t>(bits - 0x3f3504f3u) >> 23;
  const uint32_t mantissa_bits = bits - (static_cast<uint32_t>(exponent) << 23);
  float m;
  std::memcpy(&m, &mantissa_bits, sizeof m);
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = s * (2.0f + s2 * (2.0f / 3.0f + s2 * (2.0f / 5.0f + s2 * (2.0f / 7.0f + s2 * (2.0f / 9.0f)))));
  return static_cast<float>(exponent) * 0.693147180559945309f + series;
}

template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using type = uint32_t;
};
template <>
struct Bits<double> {
  using type = uint64_t;
};

// Rows [row_begin, row_end). Inlined into each target clone of rows_float/rows_double, so every clone gets
// its own vectorisation of these loops.
template <typename T, bool kStats>
ZFAST_ALWAYS_INLINE void rows_body(const Params<T>& p, int64_t row_begin, int64_t row_end) {
  using BitsT = typename Bits<T>::type;
  const int64_t n_classes = p.n_classes;
  const T lambda_js = p.lambda_js;
  const T lambda_ent = p.lambda_ent;
  const T grad_scale = p.grad_scale;
  const bool prefetch_to_l1 = n_classes * static_cast<int64_t>(sizeof(T)) <= kL1PrefetchRowBytes;
  std::vector<T> scratch(static_cast<size_t>(n_classes));
  T* __restrict__ scratch_row = scratch.data();  // x_c - m after pass 2, g_c after pass 3

  for (int64_t b = row_begin; b < row_end; ++b) {
    const T* __restrict__ x = p.logits + b * n_classes;
    const T* __restrict__ q = p.target + b * n_classes;
    T* __restrict__ grad = p.grad + b * n_classes;

    T m = x[0];
    if constexpr (kStats) {
      T target_sum = T(0);
      T target_min = q[0];
      BitsT logits_bits = 0;
      BitsT target_bits = 0;
#pragma omp simd reduction(max : m, logits_bits, target_bits) reduction(+ : target_sum) reduction(min : target_min)
      for (int64_t c = 0; c < n_classes; ++c) {
        m = x[c] > m ? x[c] : m;
        target_sum += q[c];
        target_min = q[c] < target_min ? q[c] : target_min;
        const BitsT xb = magnitude_bits(x[c]);
        const BitsT qb = magnitude_bits(q[c]);
        logits_bits = xb > logits_bits ? xb : logits_bits;
        target_bits = qb > target_bits ? qb : target_bits;
      }
      write_stats(p.stats + b * kStatsPerRow, target_sum, target_min, is_nonfinite_magnitude(logits_bits),
                  is_nonfinite_magnitude(target_bits));
    } else {
#pragma omp simd reduction(max : m)
      for (int64_t c = 0; c < n_classes; ++c) {
        m = x[c] > m ? x[c] : m;
      }
    }

    // x_c - m goes through the scratch row on its way to pass 3: -ffast-math would otherwise reassociate
    // (x_c - m) - ln s into x_c - (m + ln s), and m + ln s rounds to ulp(m) (5e-4 at |x| ~ 1e4 in float32).
    T s = T(0);
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n_classes; ++c) {
      const T shifted = shifted_logit(x[c], m);
      const T e = exp_of(shifted > kExpArgumentFloor<T> ? shifted : kExpArgumentFloor<T>);
      scratch_row[c] = shifted;
      grad[c] = e;
      s += e;
    }
    const T log_s = log_of(s);
    const T inv_s = T(1) / s;

    // Pass 3 in chunks: a chunk where the target is 0 throughout (most of the row with one-hot or box labels)
    // takes the branch without logs. The chunk is a few vectors long, so the per-chunk reduction epilogue is
    // small against the chunk's work.
    T js = T(0);
    T entropy = T(0);
    T p_weighted_g = T(0);
    const bool has_next_row = b + 1 < row_end;
    for (int64_t begin = 0; begin < n_classes; begin += kTargetChunk) {
      const int64_t end = std::min(n_classes, begin + kTargetChunk);
      if (has_next_row) {
        for (int64_t c = begin; c < end; c += kValuesPerLine<T>) {
          if (prefetch_to_l1) {
            __builtin_prefetch(x + n_classes + c, 0, 3);
            __builtin_prefetch(q + n_classes + c, 0, 3);
          } else {
            __builtin_prefetch(x + n_classes + c, 0, 1);
            __builtin_prefetch(q + n_classes + c, 0, 1);
          }
        }
      }
      int has_target = 0;
#pragma omp simd reduction(max : has_target)
      for (int64_t c = begin; c < end; ++c) {
        has_target = q[c] > T(0) ? 1 : has_target;
      }
      if (has_target) {
        if constexpr (std::is_same_v<T, float>) {
          // float: both logs inline (cpu_logf, no call), so one loop does the whole chunk without spills.
#pragma omp simd reduction(+ : js, entropy, p_weighted_g)
          for (int64_t c = begin; c < end; ++c) {
            const T prob = probability(grad[c], scratch_row[c], inv_s);
            const T log_m = cpu_logf(log_m_argument(prob, q[c]));
            const T log_q = cpu_logf(log_q_argument(q[c]));
            const ClassTerms<T> terms = class_terms_from_logs(scratch_row[c] - log_s, prob, q[c], log_m, log_q,
                                                              lambda_js, lambda_ent);
            grad[c] = prob;
            scratch_row[c] = terms.g;
            js += terms.js;
            entropy += terms.entropy;
            p_weighted_g += prob * terms.g;
          }
        } else {
          // double: the two logs (libmvec) get loops of their own: a libmvec call clobbers every vector
          // register, so a loop that also carries the sums and the constants spills and reloads them around
          // each call (18 % slower).
          alignas(64) T log_m[kTargetChunk];
          alignas(64) T log_q[kTargetChunk];
          const int64_t n = end - begin;
          const T* __restrict__ q_chunk = q + begin;
          T* __restrict__ grad_chunk = grad + begin;
          T* __restrict__ scratch_chunk = scratch_row + begin;
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) {
            log_m[i] = log_m_argument(probability(grad_chunk[i], scratch_chunk[i], inv_s), q_chunk[i]);
            log_q[i] = log_q_argument(q_chunk[i]);
          }
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) log_m[i] = log_of(log_m[i]);
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) log_q[i] = log_of(log_q[i]);
#pragma omp simd reduction(+ : js, entropy, p_weighted_g)
          for (int64_t i = 0; i < n; ++i) {
            const T prob = probability(grad_chunk[i], scratch_chunk[i], inv_s);
            const ClassTerms<T> terms = class_terms_from_logs(scratch_chunk[i] - log_s, prob, q_chunk[i], log_m[i],
                                                              log_q[i], lambda_js, lambda_ent);
            grad_chunk[i] = prob;
            scratch_chunk[i] = terms.g;
            js += terms.js;
            entropy += terms.entropy;
            p_weighted_g += prob * terms.g;
          }
        }
      } else {
#pragma omp simd reduction(+ : js, entropy, p_weighted_g)
        for (int64_t c = begin; c < end; ++c) {
          const T prob = probability(grad[c], scratch_row[c], inv_s);
          const ClassTerms<T> terms = class_terms_without_target(scratch_row[c] - log_s, prob, lambda_js, lambda_ent);
          grad[c] = prob;
          scratch_row[c] = terms.g;
          js += terms.js;
          entropy += terms.entropy;
          p_weighted_g += prob * terms.g;
        }
      }
    }

#pragma omp simd
    for (int64_t c = 0; c < n_classes; ++c) {
      grad[c] = grad_scale * logit_gradient(grad[c], scratch_row[c], p_weighted_g);
    }
    p.loss[b] = row_loss(js, entropy, lambda_js, lambda_ent);
  }
}

ZFAST_CPU_CLONES
void rows_float(const Params<float>& p, int64_t row_begin, int64_t row_end) {
  if (p.stats != nullptr) {
    rows_body<float, true>(p, row_begin, row_end);
  } else {
    rows_body<float, false>(p, row_begin, row_end);
  }
}

ZFAST_CPU_CLONES
void rows_double(const Params<double>& p, int64_t row_begin, int64_t row_end) {
  if (p.stats != nullptr) {
    rows_body<double, true>(p, row_begin, row_end);
  } else {
    rows_body<double, false>(p, row_begin, row_end);
  }
}

template <typename T, typename RowsFunction>
void launch(const Params<T>& p, int n_threads, RowsFunction rows) {
  if (p.n_classes <= 0) return;
  parallel_rows(p.batch, p.n_classes, n_threads, kMinClassesPerThread,
                [&](int64_t begin, int64_t end) { rows(p, begin, end); });
}

template <typename T>
StatsSummary summarize(const T* stats, int64_t batch) {
  StatsSummary summary;
  if (batch <= 0) return summary;
  // Codes are small integers stored in T; a row with a non-finite input has garbage sums and minima, which is
  // fine: Python reports the non-finite code first.
  int code = 0;
  T target_min = stats[kStatTargetMin];
  T max_sum_error = T(0);
  for (int64_t b = 0; b < batch; ++b) {
    const T* row = stats + b * kStatsPerRow;
    code |= static_cast<int>(row[kStatNonfinite]);
    target_min = std::min(target_min, row[kStatTargetMin]);
    const T sum_error = row[kStatTargetSum] > T(1) ? row[kStatTargetSum] - T(1) : T(1) - row[kStatTargetSum];
    max_sum_error = std::max(max_sum_error, sum_error);
  }
  summary.nonfinite_code = code;
  summary.target_min = static_cast<double>(target_min);
  summary.max_sum_error = static_cast<double>(max_sum_error);
  return summary;
}

}  // namespace

void launch_cpu(const Params<float>& params, int n_threads) { launch(params, n_threads, rows_float); }
void launch_cpu(const Params<double>& params, int n_threads) { launch(params, n_threads, rows_double); }
StatsSummary summarize_stats_cpu(const float* stats, int64_t batch) { return summarize(stats, batch); }
StatsSummary summarize_stats_cpu(const double* stats, int64_t batch) { return summarize(stats, batch); }

}  // namespace jsd_entropy
}  // namespace zfast

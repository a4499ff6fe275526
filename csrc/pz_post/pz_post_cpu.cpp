// CPU launchers of pz_post (the maths and its spec in pz_post.h).
//
// One thread does a row at a time, in a few passes over arrays of K = 800 doubles that stay in L1. What the torch
// spec spends its time on is the passes over [B, K] float64 arrays in memory (a dozen per batch: three softmaxes,
// normalisations, validity checks, the CDF twice, window masses, two masked maxima); here each row is read
// from memory once per op. The exp loops vectorise through glibc's libmvec (this file is built with -ffast-math,
// so __FAST_MATH__ declares the vector exp); the row functions are compiled for AVX-512, AVX2 and baseline
// x86-64 with target_clones and picked at load time. Rows are split over std::threads (no OpenMP).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/cpu_clones.h"
#include "common/parallel_rows.h"
#include "pz_post.h"

namespace zfast {
namespace pz_post {
namespace {

// A bin of a row costs a few ns: split a batch only when each thread gets this many bins (~50 us of work).
constexpr int64_t kMinBinsPerThread = 1 << 14;

// softmax(x / t)_c into out[K] from the row x (as double in xd), its maximum m: the spec's
// exp(x/t - max(x/t)) / Σ; max(x_c / t) = m / t exactly, as division by t > 0 is monotone and rounded once.
inline void softmax_row(const double* __restrict__ xd, int64_t n, double m, double t, double* __restrict__ out) {
  const double mt = m / t;
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) {
    const double a = xd[c] / t - mt;
    const double e = std::exp(a > kExpFloor ? a : kExpFloor);
    out[c] = e;
    s += e;  // the floored terms add < K 1e-307 to s >= 1
  }
  const double inv = 1.0 / s;
  // The floor's select is made here, in a second loop: in the first, GCC folded it into exp's argument and
  // evaluated exp on the unfloored lanes (libm's slow underflow path, 2x the time of the whole pass).
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = xd[c] / t - mt > kExpFloor ? out[c] * inv : 0.0;
}

ZFAST_CPU_CLONES void calibrate_rows(const CalibrateParams& p, int64_t begin, int64_t end) {
  const int64_t n = p.n_bins;
  std::vector<double> row(static_cast<size_t>(n));
  double* __restrict__ xd = row.data();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t n_snr_bins = p.n_snr_edges - 1;
  for (int64_t b = begin; b < end; ++b) {
    // One vector pass: the row as double, its maximum and whether any value is NaN or +inf (from the bits).
    double m = -std::numeric_limits<double>::infinity();
    uint64_t bad_bits = 0;
    if (p.logits32 != nullptr) {
      const float* __restrict__ x = p.logits32 + b * n;
#pragma omp simd reduction(max : m) reduction(| : bad_bits)
      for (int64_t c = 0; c < n; ++c) {
        const double v = static_cast<double>(x[c]);
        xd[c] = v;
        m = v > m ? v : m;
        bad_bits |= static_cast<uint64_t>(nan_or_plus_inf(v));
      }
    } else {
      const double* __restrict__ x = p.logits64 + b * n;
#pragma omp simd reduction(max : m) reduction(| : bad_bits)
      for (int64_t c = 0; c < n; ++c) {
        const double v = x[c];
        xd[c] = v;
        m = v > m ? v : m;
        bad_bits |= static_cast<uint64_t>(nan_or_plus_inf(v));
      }
    }
    const bool bad = bad_bits != 0;
    int64_t peak = 0;  // the first bin at the maximum (argmax's tie rule)
    while (peak < n - 1 && !(xd[peak] >= m)) ++peak;
    double* __restrict__ plain = p.plain + b * n;
    double* __restrict__ calibrated = p.calibrated != nullptr ? p.calibrated + b * n : nullptr;
    if (bad) {  // the spec's softmax is NaN there; summarise then reports the row
      std::fill(plain, plain + n, nan);
      if (calibrated != nullptr) std::fill(calibrated, calibrated + n, nan);
      continue;
    }
    softmax_row(xd, n, m, 1.0, plain);
    if (calibrated == nullptr) continue;
    int64_t group = 0;
    if (p.peak_edges != nullptr) {
      const double z = p.centres[peak];
      const double reach = p.peak_width * (1.0 + z);
      double inside = 0.0, total = 0.0;
#pragma omp simd reduction(+ : inside, total)
      for (int64_t c = 0; c < n; ++c) {
        total += plain[c];
        inside += std::fabs(p.centres[c] - z) <= reach ? plain[c] : 0.0;
      }
      group = bin_index(inside / total, p.peak_edges, p.n_peak_edges);
    }
    const int64_t k = bin_index(p.snr[b], p.snr_edges, p.n_snr_edges);
    softmax_row(xd, n, m, p.temperatures[group * n_snr_bins + k], calibrated);
  }
}

ZFAST_CPU_CLONES void summarise_rows(const SummariseParams& p, int64_t begin, int64_t end) {
  const int64_t n = p.n_bins, n_cand = p.n_candidates;
  const double* __restrict__ edges = p.edges;
  const double* __restrict__ centres = p.centres;
  std::vector<double> work(static_cast<size_t>(3 * n + 1));
  double* __restrict__ q = work.data();           // normalised P [K]
  double* __restrict__ cdf = q + n;               // [K + 1]
  double* __restrict__ score = cdf + n + 1;       // window mass + 1e-9 P, or -1 where taken [K]
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t* k_lo = p.window_k;
  const int64_t* k_hi = p.window_k + n;
  const double* f_lo = p.window_f;
  const double* f_hi = p.window_f + n;
  for (int64_t b = begin; b < end; ++b) {
    const double* __restrict__ probs = p.probs + b * n;
    double* summary = p.summary + b * kSummaryFields;
    double* z_cand = p.z_cand + b * n_cand;
    double* p_cand = p.p_cand + b * n_cand;
    bool bad = false;
    double total = 0.0;
    for (int64_t c = 0; c < n; ++c) {
      bad |= non_finite(probs[c]) || probs[c] < 0.0;
      total += probs[c];
    }
    const int8_t flag = bad ? kBadValues : (total > 0.0 ? 0 : kZeroSum);
    p.flags[b] = flag;
    if (flag != 0) {
      std::fill(summary, summary + kSummaryFields, nan);
      std::fill(z_cand, z_cand + n_cand, nan);
      std::fill(p_cand, p_cand + n_cand, nan);
      p.deltachi2[b] = nan;
      continue;
    }
    double mean = 0.0, second = 0.0;
#pragma omp simd reduction(+ : mean, second)
    for (int64_t c = 0; c < n; ++c) {
      const double v = probs[c] / total;
      const double width = edges[c + 1] - edges[c];
      q[c] = v;
      mean += v * centres[c];
      second += v * (centres[c] * centres[c] + width * width / 12.0);
    }
    cdf[0] = 0.0;
    for (int64_t c = 0; c < n; ++c) cdf[c + 1] = cdf[c] + q[c];  // sequential, as torch.cumsum
    const double last = cdf[n];
    const double variance = second - mean * mean;
    const double z_mode = refined_mode(p.mode_probs != nullptr ? p.mode_probs + b * n : q, edges, n);
    summary[0] = mean;
    summary[1] = z_mode;
    summary[2] = std::sqrt(variance > 0.0 ? variance : 0.0);
    summary[3] = quantile(cdf, last, edges, n, 0.16);
    summary[4] = quantile(cdf, last, edges, n, 0.84);
    summary[5] = quantile(cdf, last, edges, n, 0.025);
    summary[6] = quantile(cdf, last, edges, n, 0.975);

    // Candidates: z_mode's own window first, then the best free shared windows.
    int64_t k0, k1;
    double f0, f1;
    locate(z_mode - p.half_width * (1.0 + z_mode), edges, n, &k0, &f0);
    locate(z_mode + p.half_width * (1.0 + z_mode), edges, n, &k1, &f1);
    const double own = cdf_at(cdf, k1, f1) - cdf_at(cdf, k0, f0);
    z_cand[0] = z_mode;
    p_cand[0] = own > 0.0 ? own : 0.0;
    if (n_cand > 1) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const double mass = cdf_at(cdf, k_hi[c], f_hi[c]) - cdf_at(cdf, k_lo[c], f_lo[c]);
        score[c] = mass > 0.0 ? mass : 0.0;  // the window mass; + 1e-9 P once known free (below)
      }
    }
    bool found = true;
    double previous = z_mode;
    for (int64_t j = 1; j < n_cand; ++j) {
      int64_t best = -1;
      double best_value = -1.0;
      if (found) {
        const double previous_reach = p.half_width * (1.0 + previous);
        for (int64_t c = 0; c < n; ++c) {
          if (score[c] < 0.0) continue;  // taken by an earlier window
          if (std::fabs(centres[c] - previous) < p.reach[c] + previous_reach) {
            score[c] = -1.0;
            continue;
          }
          const double value = score[c] + 1e-9 * q[c];
          if (value > best_value) {
            best_value = value;
            best = c;
          }
        }
      }
      found = found && best >= 0;
      if (found) {
        z_cand[j] = centres[best];
        p_cand[j] = score[best];
        previous = centres[best];
      } else {
        z_cand[j] = nan;
        p_cand[j] = 0.0;
      }
    }
    const double p1 = n_cand > 1 ? p_cand[1] : 0.0;
    p.deltachi2[b] = 2.0 * (std::log(p_cand[0] > 1e-30 ? p_cand[0] : 1e-30) - std::log(p1 > 1e-30 ? p1 : 1e-30));
  }
}

}  // namespace

void calibrate_cpu(const CalibrateParams& p, int n_threads) {
  parallel_rows(p.batch, p.n_bins, n_threads, kMinBinsPerThread,
                [&p](int64_t begin, int64_t end) { calibrate_rows(p, begin, end); });
}

void summarise_cpu(SummariseParams p, int n_threads) {
  // The shared windows centre_c ± half_width (1 + centre_c), located once for every row.
  const int64_t n = p.n_bins;
  std::vector<int64_t> window_k(static_cast<size_t>(2 * n));
  std::vector<double> window_f(static_cast<size_t>(2 * n)), reach(static_cast<size_t>(n)), centres(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    centres[c] = 0.5 * (p.edges[c] + p.edges[c + 1]);
    reach[c] = p.half_width * (1.0 + centres[c]);
    locate(centres[c] - reach[c], p.edges, n, &window_k[c], &window_f[c]);
    locate(centres[c] + reach[c], p.edges, n, &window_k[n + c], &window_f[n + c]);
  }
  p.window_k = window_k.data();
  p.window_f = window_f.data();
  p.reach = reach.data();
  p.centres = centres.data();
  parallel_rows(p.batch, p.n_bins, n_threads, kMinBinsPerThread,
                [&p](int64_t begin, int64_t end) { summarise_rows(p, begin, end); });
}

}  // namespace pz_post
}  // namespace zfast

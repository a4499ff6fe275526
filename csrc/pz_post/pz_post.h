// pz_post: the per-spectrum post-processing of a classification network's P(z), fused per row.
//
// zfast.predict turns each row of logits x[K] (K redshift bins) into the catalogue's columns. The readable
// spec, the fallback off the CPU and the tests' oracle are the torch functions it replaces
// (zfast/calibration.py: calibrated_probs, peak_share; zfast/bins.py: pz_summary, refined_mode, pz_candidates);
// this header is the same maths for one row, in float64:
//
//   calibrate (per row b):
//     plain_c      = exp(x_c - max x) / Σ exp(x_k - max x)                                   (the softmax)
//     share        = Σ_{|centre_c - centre_peak| <= w (1 + centre_peak)} plain_c / Σ plain_c  (peak_share)
//     T            = temperatures[group(share), snr_bin(snr_b)]                        (per SNR bin and group)
//     calibrated_c = softmax(x / T)_c
//   summarise (per row, P = probs / Σ probs, CDF_0 = 0, CDF_{c+1} = CDF_c + P_c as torch.cumsum does):
//     z_mean, sigma (piecewise-constant density), lo68/hi68/lo95/hi95 (piecewise-linear CDF / CDF_K),
//     z_mode (the peak of mode_probs, refined by the vertex of a parabola through ln density), and the
//     candidates: z_mode and its window mass, then the bin centres whose windows ±w(1+z) hold the most mass
//     among those not overlapping an earlier one's (ties to the most probable bin), deltachi2 = 2 ln(P1/P2).
//
// Bin lookups are counts of sorted edges (binary searches) clamped into range, as torch.searchsorted then clamp
// in the spec. Non-finite inputs are detected from the bit pattern (the CPU file is built with -ffast-math).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace zfast {
namespace pz_post {

// summary[b, :] holds these, in this order.
constexpr int kSummaryFields = 7;  // z_mean, z_mode, sigma, lo68, hi68, lo95, hi95
// flags[b] of summarise: the row's probabilities had a NaN/inf or a negative value; or they summed to 0.
constexpr int8_t kBadValues = 1;
constexpr int8_t kZeroSum = 2;
// Softmax terms exp(a) with a below this are set to 0 (exp is evaluated at the floor there): libmvec computes
// lanes whose result would be subnormal (a < -708.4) with its scalar fallback, which made the calibrate pass 2x
// slower on sharp P(z); torch keeps those terms, all < 1e-307 of the peak's, as subnormals or 0.
constexpr double kExpFloor = -708.0;

struct CalibrateParams {
  const float* logits32 = nullptr;   // [B, K], one of the two
  const double* logits64 = nullptr;  // [B, K]
  int64_t batch = 0;
  int64_t n_bins = 0;
  const double* centres = nullptr;  // [K] bin centres
  const double* snr = nullptr;      // [B] (NaN already replaced by 0); unused without temperatures
  const double* snr_edges = nullptr;
  int64_t n_snr_edges = 0;           // S + 1
  const double* peak_edges = nullptr;  // [G + 1], or nullptr: one temperature per SNR bin
  int64_t n_peak_edges = 0;
  const double* temperatures = nullptr;  // [G, S] (or [S]) row-major; nullptr: no calibrated output
  double peak_width = 0.01;
  double* plain = nullptr;       // [B, K] out
  double* calibrated = nullptr;  // [B, K] out (nullptr without temperatures)
};

struct SummariseParams {
  const double* probs = nullptr;       // [B, K] >= 0, rows normalised here
  const double* mode_probs = nullptr;  // [B, K] whose peak is z_mode (used as given), or nullptr: probs'
  int64_t batch = 0;
  int64_t n_bins = 0;
  const double* edges = nullptr;  // [K + 1] increasing
  int64_t n_candidates = 3;
  double half_width = 0.01;
  // The windows every row shares (centre_c ± reach_c), located once per call by the launcher:
  const int64_t* window_k = nullptr;     // [2K]: the bin of lo_c, then of hi_c
  const double* window_f = nullptr;      // [2K]: the fraction into that bin
  const double* reach = nullptr;         // [K]: half_width (1 + centre_c)
  const double* centres = nullptr;       // [K]
  double* summary = nullptr;    // [B, kSummaryFields] out
  double* z_cand = nullptr;     // [B, n] out (NaN where none)
  double* p_cand = nullptr;     // [B, n] out (0 where none)
  double* deltachi2 = nullptr;  // [B] out
  int8_t* flags = nullptr;      // [B] out
};

// NaN or +inf (exponent all ones, and not -inf), from the bits: valid under -ffast-math.
ZFAST_HD bool nan_or_plus_inf(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const bool all_ones = ((bits >> 52) & 0x7ff) == 0x7ff;
  return all_ones && bits != 0xfff0000000000000ull;
}

ZFAST_HD bool non_finite(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return ((bits >> 52) & 0x7ff) == 0x7ff;
}

// The number of a[0..n) (sorted) that are < v (torch.searchsorted, left side), or <= v (right side).
ZFAST_HD int64_t count_below(const double* a, int64_t n, double v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v) lo = mid + 1; else hi = mid;  // clang-format off
  }
  return lo;
}

ZFAST_HD int64_t count_at_or_below(const double* a, int64_t n, double v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= v) lo = mid + 1; else hi = mid;  // clang-format off
  }
  return lo;
}

ZFAST_HD int64_t clamp_index(int64_t k, int64_t lo, int64_t hi) { return k < lo ? lo : (k > hi ? hi : k); }
ZFAST_HD double clamp_value(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

// zfast.calibration.bin_index: the bin [edges[k], edges[k + 1]) of v, clamped to the n_edges - 1 bins.
ZFAST_HD int64_t bin_index(double v, const double* edges, int64_t n_edges) {
  return clamp_index(count_at_or_below(edges, n_edges, v) - 1, 0, n_edges - 2);
}

// window_mass's cdf_at: the bin k and fraction f of z (clamped to the edges) on edges[0..K].
ZFAST_HD void locate(double z, const double* edges, int64_t n_bins, int64_t* k, double* f) {
  z = clamp_value(z, edges[0], edges[n_bins]);
  const int64_t i = clamp_index(count_below(edges, n_bins + 1, z) - 1, 0, n_bins - 1);
  *k = i;
  *f = clamp_value((z - edges[i]) / (edges[i + 1] - edges[i]), 0.0, 1.0);
}

ZFAST_HD double cdf_at(const double* cdf, int64_t k, double f) { return cdf[k] + f * (cdf[k + 1] - cdf[k]); }

// bins.refined_mode for one row p[K] (as given, not renormalised).
ZFAST_HD double refined_mode(const double* p, const double* edges, int64_t n_bins) {
  int64_t peak = 0;
  for (int64_t c = 1; c < n_bins; ++c)
    if (p[c] > p[peak]) peak = c;
  const double mode = 0.5 * (edges[peak] + edges[peak + 1]);
  if (n_bins < 3 || peak < 1 || peak > n_bins - 2) return mode;
  const double x0 = 0.5 * (edges[peak - 1] + edges[peak]), x1 = mode, x2 = 0.5 * (edges[peak + 1] + edges[peak + 2]);
  double y0 = p[peak - 1] / (edges[peak] - edges[peak - 1]);
  double y1 = p[peak] / (edges[peak + 1] - edges[peak]);
  double y2 = p[peak + 1] / (edges[peak + 2] - edges[peak + 1]);
  if (y0 > 0 && y1 > 0 && y2 > 0) {
    y0 = std::log(y0);
    y1 = std::log(y1);
    y2 = std::log(y2);
  }
  const double numerator = (x1 - x0) * (x1 - x0) * (y1 - y2) - (x1 - x2) * (x1 - x2) * (y1 - y0);
  const double denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0);
  const double shift = denominator != 0 ? -0.5 * numerator / denominator : 0.0;
  const double half = 0.5 * (edges[peak + 1] - edges[peak]);
  return x1 + clamp_value(shift, -half, half);
}

// z where the CDF (cdf[0..K], last value total) over edges reaches level: bins._quantiles on cdf / total.
ZFAST_HD double quantile(const double* cdf, double total, const double* edges, int64_t n_bins, double level) {
  int64_t lo = 0, hi = n_bins + 1;  // count of cdf_i / total < level
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cdf[mid] / total < level) lo = mid + 1; else hi = mid;  // clang-format off
  }
  const int64_t k = clamp_index(lo - 1, 0, n_bins - 1);
  const double c_lo = cdf[k] / total, c_hi = cdf[k + 1] / total;
  const double step = c_hi - c_lo > 1e-300 ? c_hi - c_lo : 1e-300;
  const double fraction = clamp_value((level - c_lo) / step, 0.0, 1.0);
  return edges[k] + fraction * (edges[k + 1] - edges[k]);
}

// CPU launchers (pz_post_cpu.cpp): rows split over up to n_threads std::threads. No CUDA launcher yet: off the
// CPU zfast runs the torch spec, whose passes run at memory speed on a GPU.
void calibrate_cpu(const CalibrateParams& p, int n_threads);
void summarise_cpu(SummariseParams p, int n_threads);

}  // namespace pz_post
}  // namespace zfast

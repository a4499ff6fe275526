// redshift_resample: a rest-frame SED at redshift z, integrated onto observed pixels.
//
// Maths (shared by the CPU loop and the CUDA kernel; the readable spec is
// zfast/ops/redshift_resample.py::redshift_resample_reference).
//
//   Rest grid: log-uniform pixel edges e_k = exp(ln e_0 + k*dln), k = 0..N. Each SED s is stored as its
//   cumulative integral at those edges, C_s[k] = sum_{i<k} f_s[i] * (e_{i+1} - e_i), in float64.
//   Observed bin j has edges a_j < a_{j+1}. With f_obs(l) = f_rest(l/(1+z)) / (1+z) and u = l/(1+z),
//       F_bj = (C_s(a_{j+1}/(1+z)) - C_s(a_j/(1+z))) / (a_{j+1} - a_j).
//   C_s(u) for u inside rest pixel k (f piecewise constant there):
//       t = (ln u - ln e_0) / dln            (arithmetic location, no search)
//         = edge_position[j] - row_offset     with edge_position[j] = ln(a_j)/dln (precomputed once per grid)
//                                             and  row_offset = (log1p(z) + ln e_0)/dln (once per row)
//       k = floor(t),  x = (t - k)*dln,  (u - e_k)/(e_{k+1} - e_k) = expm1(x)/expm1(dln)
//       C_s(u) = C_s[k] + (C_s[k+1] - C_s[k]) * expm1(x)/expm1(dln)
//   expm1(x) for 0 <= x <= dln <= 0.05 is a short Taylor polynomial (expm1_small below: relative error
//   <= 4e-10 at any allowed dln), so no transcendental is evaluated per bin: one subtraction, a
//   truncation, two gathers and a few FMAs per edge.
//
// Precision (where float64 is needed): C_s grows over the whole row, and F_bj is a difference of two
// nearby values of it. In float32 that cancellation costs ~N*eps relative (5e-4 over 8000 px, measured),
// so C_s, the location t, the in-pixel fraction and the difference are all float64; only F_bj is rounded
// to float32 when stored.
//
// Coverage: an edge is covered when -kCoverageTolerance <= t <= N + kCoverageTolerance (t is clamped into
// [0, N] before use); a bin is covered when both its edges are. Uncovered bins, and whole rows whose sed_index is
// outside [0, S), are written as `fill`. Python validates inputs before the launch (with half this
// tolerance, so a validated call never fills); the kernel only makes sure nothing is read out of bounds.
#pragma once

#include <cstdint>
#include <limits>

#include "common/host_device.h"

namespace zfast {
namespace redshift_resample {

constexpr double kCoverageTolerance = 1e-6;  // in rest pixels

struct Params {
  const double* cumulative;      // [n_seds, n_rest_pixels + 1], C_s at the rest edges
  int64_t n_seds;
  int64_t n_rest_pixels;         // N
  const int64_t* sed_index;      // [batch]
  const double* z;               // [batch]
  int64_t batch;
  const double* edge_position;   // [n_bins + 1], ln(a_j)/dln
  const double* inv_bin_width;   // [n_bins], 1/(a_{j+1} - a_j)
  int64_t n_bins;                // M
  double ln_edge0;               // ln e_0
  double dln;                    // rest pixel width in ln(lambda)
  double inv_expm1_dln;          // 1/expm1(dln)
  float fill;
  float* out;                    // [batch, n_bins]
  bool allow_avx512 = true;      // CPU only: false forces the portable edge loop (tests compare both)
  // CPU only (render_templates): with lsf_kernel set, each row is then convolved with the LSF kernel [2h + 1]
  // (edge pixels replicated, lsf_convolve.h) while it is in L1, and its squares written to `square` [batch, n_bins].
  const float* lsf_kernel = nullptr;
  int64_t lsf_half = 0;
  float* square = nullptr;
};

ZFAST_HD_ALWAYS_INLINE double row_offset(double log1p_z, double ln_edge0, double dln) {
  return (log1p_z + ln_edge0) / dln;
}

// An edge is uncovered below (t < -tol) or above (t > N + tol) the rest grid. Observed edges increase, so
// the uncovered edges of a row are a run at each end and the covered bins one contiguous stretch:
// bin j is covered iff its lower edge is not below and its upper edge not above.
ZFAST_HD_ALWAYS_INLINE bool edge_below(double t) { return t < -kCoverageTolerance; }
ZFAST_HD_ALWAYS_INLINE bool edge_above(double t, double n_rest_pixels) { return t > n_rest_pixels + kCoverageTolerance; }

// expm1(x) for 0 <= x <= dln as a Taylor polynomial: degree 3 (relative error <= x^3/24: 5e-12 at
// dln = 1/2000, 3e-10 at the switch dln = 1/500) or degree 5 (<= x^5/720: 4e-10 at the library's cap
// dln = 0.05). Degree 3 is 12 % faster on the CPU (measured) and is what every fine library gets.
constexpr double kCubicMaxDln = 1.0 / 500.0;

// T is double, or (in the CPU's AVX-512 edge loop) a GCC vector of doubles, whose operators broadcast the
// scalar constants: the vector path evaluates this very expression, lane by lane.
template <int Degree, typename T>
ZFAST_HD_ALWAYS_INLINE T expm1_small(T x) {
  static_assert(Degree == 3 || Degree == 5, "degree 3 or 5");
  if (Degree == 3) return x * (1.0 + x * (0.5 + x * (1.0 / 6.0)));
  return x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))));
}

// C at fraction `weight` = expm1(x)/expm1(dln) of the way through a pixel whose edges hold c0 and c1.
template <typename T>
ZFAST_HD_ALWAYS_INLINE T interpolate(T c0, T c1, T weight) {
  return c0 + (c1 - c0) * weight;
}

// C_s at rest position t (in pixels from e_0). Any t reads in bounds: t is clamped into [0, N], so t < 0
// gives C_s[0] and t > N gives C_s[N], and the pixel index is clamped again in integers because a NaN t
// (possible only with validation off) survives the compare-selects and truncates to INT_MIN on x86 (0 on
// CUDA). Written as plain compare-selects so that GCC turns them into vector min/max.
template <int Degree>
ZFAST_HD_ALWAYS_INLINE double cumulative_at(const double* cumulative_row, double t, int32_t last_pixel, double dln,
                                            double inv_expm1_dln) {
  const double n_rest_pixels = static_cast<double>(last_pixel) + 1.0;
  t = t < 0.0 ? 0.0 : t;
  t = t > n_rest_pixels ? n_rest_pixels : t;
  int32_t k = static_cast<int32_t>(t);  // truncation: floor, as t >= 0
  k = k < 0 ? 0 : k;
  k = k > last_pixel ? last_pixel : k;
  const double x = (t - static_cast<double>(k)) * dln;  // in [0, dln]
  const double c0 = cumulative_row[k];
  const double c1 = cumulative_row[k + 1];
  return interpolate(c0, c1, expm1_small<Degree>(x) * inv_expm1_dln);
}

ZFAST_HD_ALWAYS_INLINE float bin_mean(double cumulative_lo, double cumulative_hi, double inv_bin_width) {
  return static_cast<float>((cumulative_hi - cumulative_lo) * inv_bin_width);
}

}  // namespace redshift_resample
}  // namespace zfast

namespace zfast {
namespace redshift_resample {
// Launchers (redshift_resample_cpu.cpp, redshift_resample_cuda.cu). Pointers were validated in Python.
void launch_cpu(const Params& params, int n_threads);
bool cpu_uses_avx512();  // whether launch_cpu's edge loop is the hand-written AVX-512 one on this CPU

// One pass over the inputs for Python's validation on the CPU (a dozen small torch ops cost ~0.2 ms).
struct InputStats {
  int64_t n_nonfinite = 0;
  double z_min = std::numeric_limits<double>::infinity();  // until a finite z is seen
  double z_max = -std::numeric_limits<double>::infinity();
  int64_t index_min = std::numeric_limits<int64_t>::max();
  int64_t index_max = std::numeric_limits<int64_t>::min();
};
InputStats input_stats_cpu(const double* z, const int64_t* sed_index, int64_t batch);
void launch_cuda(const Params& params, int device, std::uintptr_t stream);
}  // namespace redshift_resample
}  // namespace zfast

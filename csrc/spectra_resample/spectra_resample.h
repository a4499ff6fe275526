// spectra_resample: observed spectra (flux, variance, validity on their own pixels) onto the model's pixels,
// flux-conserving, for zfast.predict (zfast/predict.py: resample is the spec, the fallback off the CPU and the
// tests' oracle; the maths is that of zfast.ops.rebin, spectres' convention).
//
// Input pixel k has edges e_k, e_{k+1} (width w_k); output pixel j has edges b_j, b_{j+1} (width W_j). The
// cumulative integral of a piecewise-constant v is C(q) = Σ_{i<k} v_i w_i + v_k w_k t with k the input pixel
// holding q and t its fraction of the way across (k and t clamped into the grid, as torch.searchsorted then
// clamp in the spec). The integral over output pixel j is C(b_{j+1}) - C(b_j), summed here directly,
//
//   S_j(v) = Σ_{k_j <= i < k_{j+1}} v_i w_i + v_{k_{j+1}} w_{k_{j+1}} t_{j+1} - v_{k_j} w_{k_j} t_j,
//
// so no cumulative sum is differenced (the spec's cancels ~N eps of the total; this does not). Per row, for
// the three integrands valid·1, valid·flux and valid·var·w (the variance of a mean over pixels of width w):
//
//   c_j = S_j(valid) / W_j                 the valid fraction; good_j = c_j >= 0.5, safe_j = good_j ? c_j : 1
//   flux_j = good_j ? S_j(valid·flux) / W_j / safe_j : NaN
//   var_j = S_j(valid·var·w) / W_j / (W_j safe_j²)
//   ivar_j = good_j and var_j > 0 ? 1 / max(var_j, 1e-300) : (good_j and var_j == 0 ? +inf : 0)
//   fraction = (number of good j) / M
//
// Non-finite values are part of the contract (NaN flux out, +inf ivar, flux NaN on invalid input pixels), so
// this file is built without -ffast-math (CMakeLists.txt).
#pragma once

#include <cstdint>

namespace zfast {
namespace spectra_resample {

struct Params {
  const double* flux = nullptr;      // [B, N], any value where !valid
  const double* var = nullptr;       // [B, N], >= 0 where valid
  const uint8_t* valid = nullptr;    // [B, N], 0 / 1 (a torch.bool tensor's bytes)
  const double* edges_in = nullptr;  // [N + 1], strictly increasing
  const double* edges_out = nullptr; // [M + 1], strictly increasing
  int64_t batch = 0;
  int64_t n_in = 0;   // N
  int64_t n_out = 0;  // M
  double* flux_out = nullptr;  // [B, M]
  double* ivar_out = nullptr;  // [B, M]
  double* fraction = nullptr;  // [B]
};

// Where output edge q falls on the input edges: pixel k = clamp(#{e_i <= q} - 1, 0, N - 1) and
// t = clamp((q - e_k) / w_k, 0, 1), as the spec's searchsorted(right=True) - 1, clamp, and fraction.
inline void locate(const double* edges, int64_t n, double q, int64_t* k_out, double* t_out) {
  int64_t lo = 0, hi = n + 1;  // count of edges <= q, by bisection over [0, n + 1]
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (edges[mid] <= q) lo = mid + 1; else hi = mid;
  }
  int64_t k = lo - 1;
  k = k < 0 ? 0 : (k > n - 1 ? n - 1 : k);
  double t = (q - edges[k]) / (edges[k + 1] - edges[k]);
  t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
  *k_out = k;
  *t_out = t;
}

// CPU launcher (spectra_resample_cpu.cpp): rows split over up to n_threads std::threads. No CUDA launcher:
// zfast.predict prepares spectra on the CPU.
void launch_cpu(const Params& p, int n_threads);

}  // namespace spectra_resample
}  // namespace zfast

// jsd_entropy: the fused Jensen-Shannon + entropy loss of a softmax, its gradient written in the forward pass.
//
// Maths (shared by the CPU loop and the CUDA kernel; the readable spec is
// zfast/ops/jsd_entropy.py::jsd_entropy_reference). Per row b, logits x[C], target probabilities Q[C]
// (Q_c >= 0, sum 1, zeros allowed), natural logs:
//
//   P = softmax(x),  M = (P + Q)/2
//   JS(P, Q) = 1/2 sum_c P_c ln(P_c/M_c) + 1/2 sum_c Q_c ln(Q_c/M_c)     (0 <= JS <= ln 2)
//   H(P)     = -sum_c P_c ln P_c                                         (0 <= H <= ln C)
//   L_b      = lambda_js JS + lambda_ent H                                (defaults 0.85 and 0.15)
//
// Gradient. dJS/dP_c = 1/2 ln(P_c/M_c) (the other terms of the derivative cancel because P + Q = 2M), and
// dH/dP_c = -(ln P_c + 1). With g_c = lambda_js/2 ln(P_c/M_c) - lambda_ent ln P_c, through the softmax
//   dL/dx_c = P_c (g_c - sum_k P_k g_k)
// (the constant -lambda_ent of dH/dP cancels in the bracket). The forward pass writes this gradient, already
// multiplied by the reduction's dL_total/dL_b (1/B for a mean); the backward pass only scales it by the
// incoming gradient, and skips even that when it is 1 on the CPU (Liger-Kernel's fused-loss pattern: no second
// pass over the logits, no B x C intermediates beyond the gradient itself).
//
// Stability (every quantity stays finite for any finite logits and any valid target):
//   - softmax through a max-subtracted log-sum-exp: m = max x, s = sum exp(x - m),
//     ln P_c = (x_c - m) - ln s. ln P is never the log of a P that may have underflowed; x_c - m is exact for
//     the large logits that matter, so |x| ~ 1e4 loses nothing to the subtraction of a big m + ln s.
//     x_c - m is floored far below any exp underflow (shifted_logit), so it is finite even for logits near
//     the type's limit, and a P_c that underflows is exactly 0: a diverging run (|x| ~ 1e19 to 3e38) sees
//     the true loss, never a large negative one from tiny P_c times huge ln P_c.
//   - Q_c > 0: M_c >= Q_c/2 > 0, so ln M_c is finite even when P_c underflows to 0 (that P_c then
//     contributes P_c ln(P_c/M_c) = 0 x finite = 0 and P_c (g_c - ...) = 0). On the CPU exp's argument is
//     floored for speed (jsd_entropy_cpu.cpp) and P_c set to exactly 0 below the floor, as the GPU's exp gives.
//   - Q_c = 0: M_c = P_c/2, so ln(P_c/M_c) = ln 2 exactly (an explicit select), and Q_c ln(Q_c/M_c) = 0
//     (Q_c times a finite log: logs are only taken of values clamped to the smallest normal number, so
//     0 log 0 and the log of an underflowed P are never formed).
//   The kernels are compiled with -ffast-math (CPU), which lets the compiler assume no NaN/inf: nothing here
//   tests a float for NaN. Non-finite inputs are detected from their exponent bits (integer maths) and
//   reported to Python, which validates before returning.
//
// Precision: the row is computed in T (float for float32/16-bit logits, double for float64). Row sums run
// over C <= ~1e4 terms in T, a relative error ~1e-6 in float32.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if !defined(__CUDACC__)
#include <math.h>
#endif

#include "common/host_device.h"

namespace zfast {
namespace jsd_entropy {

constexpr double kLn2 = 0.693147180559945309417232121458176568;

// Per-row input statistics written when validation is on (stats != nullptr), [batch, kStatsPerRow] in T:
// the sum and the minimum of the target row, and a code: +1 when the logits row holds NaN/inf, +2 when the
// target row does. Python turns them into errors that name the row.
constexpr int kStatsPerRow = 3;
constexpr int kStatTargetSum = 0;
constexpr int kStatTargetMin = 1;
constexpr int kStatNonfinite = 2;
constexpr int kNonfiniteLogits = 1;
constexpr int kNonfiniteTarget = 2;

template <typename T>
struct Params {
  const T* logits;  // [batch, n_classes], contiguous
  const T* target;  // [batch, n_classes], contiguous
  int64_t batch;
  int64_t n_classes;
  T lambda_js;
  T lambda_ent;
  T grad_scale;  // dL/dL_b of the caller's reduction: 1/batch for a mean, 1 for a sum or none
  T* loss;       // [batch], L_b
  T* grad;       // [batch, n_classes], grad_scale * dL_b/dx
  T* stats;  // [batch, kStatsPerRow], or nullptr to skip the statistics
};

ZFAST_HD float exp_of(float v) { return expf(v); }
ZFAST_HD double exp_of(double v) { return exp(v); }
ZFAST_HD float log_of(float v) { return logf(v); }
ZFAST_HD double log_of(double v) { return log(v); }

// |v|'s bits; v is NaN or inf iff they reach the exponent mask. Integer maths, so -ffast-math cannot fold it.
ZFAST_HD uint32_t magnitude_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v) & 0x7fffffffu;
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffu;
#endif
}
ZFAST_HD uint64_t magnitude_bits(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(v)) & 0x7fffffffffffffffull;
#else
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffffffffffull;
#endif
}
ZFAST_HD bool is_nonfinite_magnitude(uint32_t magnitude) { return magnitude >= 0x7f800000u; }
ZFAST_HD bool is_nonfinite_magnitude(uint64_t magnitude) { return magnitude >= 0x7ff0000000000000ull; }

// x_c - m, floored at -1e30 (float) or -1e300 (double). Both launchers form ln P_c from it. Unfloored, the
// difference of two finite logits near the type's limit is -inf, and P_c ln P_c = 0 x -inf is NaN; floored,
// ln P_c stays finite (and so does g_c for any lambda below ~1e8), while P_c = exp(ln P_c) is exactly 0 there.
template <typename T>
constexpr T kShiftFloor = T(-1e30);
template <>
constexpr double kShiftFloor<double> = -1e300;

template <typename T>
ZFAST_HD T shifted_logit(T x, T m) {
  const T shifted = x - m;
  return shifted > kShiftFloor<T> ? shifted : kShiftFloor<T>;
}

// The three per-class quantities the row needs, given ln P_c, P_c and Q_c.
template <typename T>
struct ClassTerms {
  T js;       // 1/2 P_c ln(P_c/M_c) + 1/2 Q_c ln(Q_c/M_c)
  T entropy;  // -P_c ln P_c
  T g;        // lambda_js/2 ln(P_c/M_c) - lambda_ent ln P_c (dL/dP_c up to a constant)
};

// The two logs a class needs are ln M_c and ln Q_c, each taken of its argument clamped to the smallest normal
// number, never of 0 or a subnormal. Where Q_c = 0 their results are unused (Q_c multiplies one, the ln 2
// select replaces the other); where 0 < Q_c or M_c is below the clamp the loss changes by < 1e-36 (float).
// Clamping, rather than taking the log of 1 in those lanes, also keeps GCC from rewriting log(has_q ? q : 1)
// as has_q ? log(q) : 0, which evaluates log(0) in the vector lanes and sends libmvec to its scalar fallback
// (a box target ran 3x slower that way).
template <typename T>
ZFAST_HD T log_m_argument(T p, T q) {
  const T half_sum = T(0.5) * (p + q);
  return half_sum > std::numeric_limits<T>::min() ? half_sum : std::numeric_limits<T>::min();
}
template <typename T>
ZFAST_HD T log_q_argument(T q) {
  return q > std::numeric_limits<T>::min() ? q : std::numeric_limits<T>::min();
}

// The class terms given ln P_c, P_c, Q_c and the two logs above.
template <typename T>
ZFAST_HD ClassTerms<T> class_terms_from_logs(T log_p, T p, T q, T log_m, T log_q, T lambda_js, T lambda_ent) {
  const T log_p_over_m = q > T(0) ? log_p - log_m : T(kLn2);
  ClassTerms<T> terms;
  terms.js = T(0.5) * (p * log_p_over_m + q * (log_q - log_m));  // Q_c = 0: 0 * finite = 0
  terms.entropy = -p * log_p;
  terms.g = T(0.5) * lambda_js * log_p_over_m - lambda_ent * log_p;
  return terms;
}

template <typename T>
ZFAST_HD ClassTerms<T> class_terms(T log_p, T p, T q, T lambda_js, T lambda_ent) {
  return class_terms_from_logs(log_p, p, q, log_of(log_m_argument(p, q)), log_of(log_q_argument(q)), lambda_js,
                               lambda_ent);
}

// class_terms for Q_c = 0 without any log: ln(P_c/M_c) = ln 2 and the Q_c term is 0. Equal, value for value,
// to class_terms(log_p, p, 0, ...); the CPU kernel uses it for stretches of the row where the target is 0
// (most of it with one-hot or box labels), which saves both logs there.
template <typename T>
ZFAST_HD ClassTerms<T> class_terms_without_target(T log_p, T p, T lambda_js, T lambda_ent) {
  ClassTerms<T> terms;
  terms.js = T(0.5) * (p * T(kLn2));
  terms.entropy = -p * log_p;
  terms.g = T(0.5) * lambda_js * T(kLn2) - lambda_ent * log_p;
  return terms;
}

// dL/dx_c from P_c, g_c and the row's sum_k P_k g_k.
template <typename T>
ZFAST_HD T logit_gradient(T p, T g, T p_weighted_g) {
  return p * (g - p_weighted_g);
}

template <typename T>
ZFAST_HD T row_loss(T js, T entropy, T lambda_js, T lambda_ent) {
  return lambda_js * js + lambda_ent * entropy;
}

template <typename T>
ZFAST_HD void write_stats(T* stats_row, T target_sum, T target_min, bool logits_nonfinite, bool target_nonfinite) {
  stats_row[kStatTargetSum] = target_sum;
  stats_row[kStatTargetMin] = target_min;
  stats_row[kStatNonfinite] = T((logits_nonfinite ? kNonfiniteLogits : 0) + (target_nonfinite ? kNonfiniteTarget : 0));
}

// Launchers (jsd_entropy_cpu.cpp, jsd_entropy_cuda.cu). Pointers, shapes and dtypes were validated in Python.
void launch_cpu(const Params<float>& params, int n_threads);
void launch_cpu(const Params<double>& params, int n_threads);

// The whole batch's statistics in one pass over stats [batch, kStatsPerRow] on the CPU, for Python's check
// (a few small torch reductions cost ~20 us).
struct StatsSummary {
  int nonfinite_code = 0;     // OR of the rows' codes
  double target_min = 0.0;    // smallest target value (0 for an empty batch)
  double max_sum_error = 0.0; // largest |row sum - 1|
};
StatsSummary summarize_stats_cpu(const float* stats, int64_t batch);
StatsSummary summarize_stats_cpu(const double* stats, int64_t batch);
void launch_cuda(const Params<float>& params, int device, std::uintptr_t stream);
void launch_cuda(const Params<double>& params, int device, std::uintptr_t stream);

}  // namespace jsd_entropy
}  // namespace zfast

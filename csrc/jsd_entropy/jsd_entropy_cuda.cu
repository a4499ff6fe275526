// CUDA launcher of jsd_entropy (maths, gradient and stability in jsd_entropy.h).
//
// A row is independent and needs three row-wide reductions (the max, the sum of exponentials, then JS, H and
// sum P g together), so one row belongs to one group of threads that can reduce among themselves:
//   - C <= kWarpRowLimit (the redshift-bin counts of 80-800): a warp per row, 8 rows per 256-thread block.
//     Reductions are warp shuffles only, no shared memory and no __syncthreads; a lane handles <= 32 classes.
//   - larger C: a block of 256 threads per row; reductions are two-level (shuffles within each warp, then the
//     8 warp partials through shared memory).
// Each thread walks its classes with a stride of the group size, so a warp reads and writes consecutive
// elements (coalesced). The passes re-read the row's logits and targets, which the first pass brought into
// L1/L2; the gradient row holds g_c between the third and the fourth pass, written and re-read by the same
// thread (no synchronisation needed), and P_c is recomputed as exp(ln P_c) rather than stored. Rows are
// walked grid-stride. Launched on torch's current stream (passed as an integer) after cudaSetDevice.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "jsd_entropy.h"

namespace zfast {
namespace jsd_entropy {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpRowLimit = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

struct MaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct MinOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a < b ? a : b; }
};
struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct OrOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a | b; }
};

// Reduction over the kWarpsPerRow warps of a row group: shuffles within the warp, then (block per row) through
// `shared` [kWarpsPerRow]. Every thread of the group returns the result. The leading __syncthreads keeps a
// previous reduction's readers from seeing this one's writes.
template <int kWarpsPerRow, typename V, typename Op>
__device__ V group_reduce(V value, Op op, V* shared) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  if constexpr (kWarpsPerRow > 1) {
    const int warp = threadIdx.x / kWarpSize;
    __syncthreads();
    if (threadIdx.x % kWarpSize == 0) shared[warp] = value;
    __syncthreads();
    value = shared[0];
#pragma unroll
    for (int w = 1; w < kWarpsPerRow; ++w) value = op(value, shared[w]);
  }
  return value;
}

template <typename T, int kWarpsPerRow, bool kStats>
__global__ void __launch_bounds__(kThreads) jsd_entropy_kernel(const Params<T> p) {
  constexpr int kGroup = kWarpsPerRow * kWarpSize;  // threads per row
  constexpr int kRowsPerBlock = kThreads / kGroup;
  // One slot per warp and per concurrent reduction value (only used with a block per row).
  __shared__ T shared_t[3][kWarpsPerRow];
  __shared__ unsigned shared_code[kWarpsPerRow];

  const int lane = threadIdx.x % kGroup;
  const int64_t n_classes = p.n_classes;
  const T lambda_js = p.lambda_js;
  const T lambda_ent = p.lambda_ent;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kGroup; b < p.batch;
       b += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* x = p.logits + b * n_classes;
    const T* q = p.target + b * n_classes;
    T* grad = p.grad + b * n_classes;

    T m = -std::numeric_limits<T>::max();
    T target_sum = T(0);
    T target_min = std::numeric_limits<T>::max();
    unsigned code = 0;
    for (int64_t c = lane; c < n_classes; c += kGroup) {
      const T xc = x[c];
      m = xc > m ? xc : m;
      if constexpr (kStats) {
        const T qc = q[c];
        target_sum += qc;
        target_min = qc < target_min ? qc : target_min;
        code |= (is_nonfinite_magnitude(magnitude_bits(xc)) ? kNonfiniteLogits : 0) |
                (is_nonfinite_magnitude(magnitude_bits(qc)) ? kNonfiniteTarget : 0);
      }
    }
    m = group_reduce<kWarpsPerRow>(m, MaxOp(), shared_t[0]);
    if constexpr (kStats) {
      target_sum = group_reduce<kWarpsPerRow>(target_sum, SumOp(), shared_t[1]);
      target_min = group_reduce<kWarpsPerRow>(target_min, MinOp(), shared_t[2]);
      code = group_reduce<kWarpsPerRow>(code, OrOp(), shared_code);
      if (lane == 0) {
        write_stats(p.stats + b * kStatsPerRow, target_sum, target_min, (code & kNonfiniteLogits) != 0,
                    (code & kNonfiniteTarget) != 0);
      }
    }

    T s = T(0);
    for (int64_t c = lane; c < n_classes; c += kGroup) s += exp_of(shifted_logit(x[c], m));
    s = group_reduce<kWarpsPerRow>(s, SumOp(), shared_t[0]);
    const T log_s = log_of(s);

    T js = T(0);
    T entropy = T(0);
    T p_weighted_g = T(0);
    for (int64_t c = lane; c < n_classes; c += kGroup) {
      const T log_p = shifted_logit(x[c], m) - log_s;
      const T prob = exp_of(log_p);
      const ClassTerms<T> terms = class_terms(log_p, prob, q[c], lambda_js, lambda_ent);
      grad[c] = terms.g;
      js += terms.js;
      entropy += terms.entropy;
      p_weighted_g += prob * terms.g;
    }
    js = group_reduce<kWarpsPerRow>(js, SumOp(), shared_t[0]);
    entropy = group_reduce<kWarpsPerRow>(entropy, SumOp(), shared_t[1]);
    p_weighted_g = group_reduce<kWarpsPerRow>(p_weighted_g, SumOp(), shared_t[2]);

    for (int64_t c = lane; c < n_classes; c += kGroup) {
      grad[c] = p.grad_scale * logit_gradient(exp_of(shifted_logit(x[c], m) - log_s), grad[c], p_weighted_g);
    }
    if (lane == 0) p.loss[b] = row_loss(js, entropy, lambda_js, lambda_ent);
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("zfast jsd_entropy (CUDA): ") + what + ": " + cudaGetErrorString(status));
  }
}

template <typename T, int kWarpsPerRow>
void launch_group(const Params<T>& p, cudaStream_t stream) {
  constexpr int kRowsPerBlock = kThreads / (kWarpsPerRow * kWarpSize);
  // Enough blocks to fill any current GPU many times over; rows beyond are walked grid-stride.
  const int64_t blocks = std::min<int64_t>((p.batch + kRowsPerBlock - 1) / kRowsPerBlock, int64_t{1} << 20);
  if (p.stats != nullptr) {
    jsd_entropy_kernel<T, kWarpsPerRow, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  } else {
    jsd_entropy_kernel<T, kWarpsPerRow, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
}

template <typename T>
void launch(const Params<T>& p, int device, std::uintptr_t stream_handle) {
  if (p.batch <= 0 || p.n_classes <= 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (p.n_classes <= kWarpRowLimit) {
    launch_group<T, 1>(p, stream);
  } else {
    launch_group<T, kThreads / kWarpSize>(p, stream);
  }
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace

void launch_cuda(const Params<float>& params, int device, std::uintptr_t stream) { launch(params, device, stream); }
void launch_cuda(const Params<double>& params, int device, std::uintptr_t stream) { launch(params, device, stream); }

}  // namespace jsd_entropy
}  // namespace zfast

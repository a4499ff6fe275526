// CUDA launcher of redshift_resample (maths in redshift_resample.h).
//
// One thread per output bin: blockIdx.x tiles the M bins of a row, blockIdx.y walks the rows (grid-stride
// past 65,535). Why not one thread per row: B is often only a few hundred (a training batch), which would
// leave most of an H100 idle, and a thread walking its own row writes with stride M (uncoalesced). Per bin,
// neighbouring threads write neighbouring floats and read neighbouring stretches of the same cumulative
// row (L1/L2 hits), and the row's SED and redshift are uniform across the block (no division to find them).
// Each thread evaluates C_s at both edges of its bin; the edge shared with the neighbour is computed twice,
// which costs arithmetic only (the gathers hit cache) and keeps the kernel free of shared memory and
// synchronisation. Not yet measured on a GPU: a block-per-row variant that shares edges through shared
// memory is the candidate if the FP64 arithmetic turns out to bound it.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "redshift_resample.h"

namespace zfast {
namespace redshift_resample {
namespace {

template <int Degree>
__global__ void redshift_resample_kernel(const Params p) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.n_bins) return;
  const double n_rest = static_cast<double>(p.n_rest_pixels);
  const int32_t last_pixel = static_cast<int32_t>(p.n_rest_pixels - 1);
  const double position_lo = p.edge_position[j];
  const double position_hi = p.edge_position[j + 1];
  const double inv_bin_width = p.inv_bin_width[j];
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    float* out = p.out + b * p.n_bins + j;
    const int64_t s = p.sed_index[b];
    if (s < 0 || s >= p.n_seds) {
      *out = p.fill;
      continue;
    }
    const double* row = p.cumulative + s * (p.n_rest_pixels + 1);
    const double offset = row_offset(log1p(p.z[b]), p.ln_edge0, p.dln);
    const double t_lo = position_lo - offset;
    const double t_hi = position_hi - offset;
    const bool covered = !edge_below(t_lo) && !edge_above(t_hi, n_rest);
    const double c_lo = cumulative_at<Degree>(row, t_lo, last_pixel, p.dln, p.inv_expm1_dln);
    const double c_hi = cumulative_at<Degree>(row, t_hi, last_pixel, p.dln, p.inv_expm1_dln);
    *out = covered ? bin_mean(c_lo, c_hi, inv_bin_width) : p.fill;
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("zfast redshift_resample (CUDA): ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

}  // namespace

void launch_cuda(const Params& p, int device, std::uintptr_t stream) {
  if (p.batch <= 0 || p.n_bins <= 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  constexpr int kThreads = 256;
  const dim3 blocks(static_cast<unsigned>((p.n_bins + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  if (p.dln <= kCubicMaxDln) {
    redshift_resample_kernel<3><<<blocks, kThreads, 0, cuda_stream>>>(p);
  } else {
    redshift_resample_kernel<5><<<blocks, kThreads, 0, cuda_stream>>>(p);
  }
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace redshift_resample
}  // namespace zfast

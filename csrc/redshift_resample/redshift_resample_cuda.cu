// CUDA launcher of redshift_resample (maths in redshift_resample.h).
//
// One thread per output bin, grid-stride over batch*M. Why not one thread per row: B is often only a few
// hundred (a training batch), which would leave most of an H100 idle, and a thread walking its own row
// writes with stride M (uncoalesced). Per bin, neighbouring threads write neighbouring floats and read
// neighbouring stretches of the same cumulative row (L1/L2 hits). Each thread evaluates C_s at both edges
// of its bin; the edge shared with the neighbour is computed twice, which costs arithmetic only (the
// gathers hit cache), and keeps the kernel free of shared memory and synchronisation.
#include <cuda_runtime.h>

#include <algorithm>

#include <stdexcept>
#include <string>

#include "redshift_resample.h"

namespace zfast {
namespace redshift_resample {
namespace {

__global__ void redshift_resample_kernel(const Params p) {
  const int64_t total = p.batch * p.n_bins;
  const double n_rest = static_cast<double>(p.n_rest_pixels);
  const int32_t last_pixel = static_cast<int32_t>(p.n_rest_pixels - 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.n_bins;
    const int64_t j = i - b * p.n_bins;
    const int64_t s = p.sed_index[b];
    if (s < 0 || s >= p.n_seds) {
      p.out[i] = p.fill;
      continue;
    }
    const double* row = p.cumulative + s * (p.n_rest_pixels + 1);
    const double offset = row_offset(log1p(p.z[b]), p.ln_edge0, p.dln);
    const double t_lo = p.edge_position[j] - offset;
    const double t_hi = p.edge_position[j + 1] - offset;
    const bool covered = !edge_below(t_lo) && !edge_above(t_hi, n_rest);
    const double c_lo = cumulative_at(row, t_lo, last_pixel, p.dln, p.inv_expm1_dln);
    const double c_hi = cumulative_at(row, t_hi, last_pixel, p.dln, p.inv_expm1_dln);
    p.out[i] = covered ? bin_mean(c_lo, c_hi, p.inv_bin_width[j]) : p.fill;
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
  const int64_t total = p.batch * p.n_bins;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  redshift_resample_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace redshift_resample
}  // namespace zfast

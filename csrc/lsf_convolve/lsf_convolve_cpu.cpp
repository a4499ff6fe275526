// CPU launcher of lsf_convolve (the maths in lsf_convolve.h). Each row: the clamped ends pixel by pixel, the
// interior as one vector loop over the output pixels per tap (out[j] += k·x[j + d]), then the squares; the row
// (2-4 KB) stays in L1 throughout. Clones for AVX-512, AVX2 and baseline x86-64.
#include "common/cpu_clones.h"
#include "common/host_device.h"
#include "common/parallel_rows.h"
#include "lsf_convolve.h"

namespace zfast {
namespace lsf_convolve {
namespace {

constexpr int64_t kMinValuesPerThread = 1 << 16;

template <typename T>
ZFAST_HD_ALWAYS_INLINE void rows_t(const Params& p, int64_t begin, int64_t end) {
  const int64_t m = p.length;
  for (int64_t b = begin; b < end; ++b) {
    convolve_row(static_cast<const T*>(p.x) + b * m, static_cast<const T*>(p.kernel), m, p.half,
                 static_cast<T*>(p.out) + b * m, p.square == nullptr ? nullptr : static_cast<T*>(p.square) + b * m);
  }
}

ZFAST_CPU_CLONES void rows_float(const Params& p, int64_t begin, int64_t end) { rows_t<float>(p, begin, end); }
ZFAST_CPU_CLONES void rows_double(const Params& p, int64_t begin, int64_t end) { rows_t<double>(p, begin, end); }

}  // namespace

void launch_cpu(const Params& p, int n_threads) {
  parallel_rows(p.batch, p.length * (2 * p.half + 1), n_threads, kMinValuesPerThread, [&p](int64_t begin, int64_t end) {
    if (p.double_precision) rows_double(p, begin, end); else rows_float(p, begin, end);
  });
}

}  // namespace lsf_convolve
}  // namespace zfast

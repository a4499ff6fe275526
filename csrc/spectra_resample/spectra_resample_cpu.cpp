// CPU launcher of spectra_resample (the maths in spectra_resample.h). The output edges are located on the input
// edges once per call (shared by every row), then each row is one pass over its input pixels: every pixel's three
// integrands are summed into the output pixel(s) it overlaps. Rows are split over std::threads.
#include <cmath>
#include <limits>
#include <vector>

#include "common/parallel_rows.h"
#include "spectra_resample.h"

namespace zfast {
namespace spectra_resample {
namespace {

constexpr int64_t kMinPixelsPerThread = 1 << 15;

struct Located {
  std::vector<int64_t> k;        // [M + 1]
  std::vector<double> t;         // [M + 1]
  std::vector<double> width_in;  // [N]
  std::vector<double> width_out; // [M]
};

struct Sums {
  double valid = 0.0, flux = 0.0, var = 0.0;
};

void rows(const Params& p, const Located& at, int64_t begin, int64_t end) {
  const int64_t n = p.n_in, m = p.n_out;
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t b = begin; b < end; ++b) {
    const double* flux = p.flux + b * n;
    const double* var = p.var + b * n;
    const uint8_t* valid = p.valid + b * n;
    double* flux_out = p.flux_out + b * m;
    double* ivar_out = p.ivar_out + b * m;
    // The integrals of valid, valid·flux and valid·var·w over input pixel i.
    auto integrals = [&](int64_t i) {
      Sums s;
      if (valid[i]) {
        const double w = at.width_in[i];
        s.valid = w;
        s.flux = flux[i] * w;
        s.var = var[i] * w * w;
      }
      return s;
    };
    int64_t good_count = 0;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t ka = at.k[j], kb = at.k[j + 1];
      Sums s;
      for (int64_t i = ka; i < kb; ++i) {
        const Sums v = integrals(i);
        s.valid += v.valid, s.flux += v.flux, s.var += v.var;
      }
      const Sums hi = integrals(kb), lo = integrals(ka);
      const double tb = at.t[j + 1], ta = at.t[j];
      s.valid += hi.valid * tb - lo.valid * ta;
      s.flux += hi.flux * tb - lo.flux * ta;
      s.var += hi.var * tb - lo.var * ta;
      const double width = at.width_out[j];
      const double coverage = s.valid / width;
      const bool good = coverage >= 0.5;
      const double safe = good ? coverage : 1.0;
      const double v = s.var / width / (width * (safe * safe));
      flux_out[j] = good ? s.flux / width / safe : nan;
      ivar_out[j] = !good ? 0.0 : (v > 0.0 ? 1.0 / (v > 1e-300 ? v : 1e-300) : (v == 0.0 ? inf : 0.0));
      good_count += good;
    }
    p.fraction[b] = static_cast<double>(good_count) / static_cast<double>(m);
  }
}

}  // namespace

void launch_cpu(const Params& p, int n_threads) {
  if (p.batch <= 0 || p.n_out <= 0) return;
  Located at;
  at.k.resize(static_cast<size_t>(p.n_out + 1));
  at.t.resize(static_cast<size_t>(p.n_out + 1));
  for (int64_t j = 0; j <= p.n_out; ++j) locate(p.edges_in, p.n_in, p.edges_out[j], &at.k[j], &at.t[j]);
  at.width_in.resize(static_cast<size_t>(p.n_in));
  for (int64_t i = 0; i < p.n_in; ++i) at.width_in[i] = p.edges_in[i + 1] - p.edges_in[i];
  at.width_out.resize(static_cast<size_t>(p.n_out));
  for (int64_t j = 0; j < p.n_out; ++j) at.width_out[j] = p.edges_out[j + 1] - p.edges_out[j];
  parallel_rows(p.batch, p.n_in + p.n_out, n_threads, kMinPixelsPerThread,
                [&p, &at](int64_t begin, int64_t end) { rows(p, at, begin, end); });
}

}  // namespace spectra_resample
}  // namespace zfast

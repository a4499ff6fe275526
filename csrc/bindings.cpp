// zfast._C: pybind11 bindings over raw pointers (no libtorch linkage).
//
// Every function takes data pointers and sizes as integers; zfast/ops/*.py validate dtype, device,
// contiguity and shapes before calling, and pass torch's current CUDA stream as an integer handle.
// The GIL is released while kernels run so torch's own threads and other Python threads can proceed.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "channel_stats/channel_stats.h"
#include "jsd_entropy/jsd_entropy.h"
#include "lsf_convolve/lsf_convolve.h"
#include "pz_post/pz_post.h"
#include "redshift_resample/redshift_resample.h"
#include "spectra_resample/spectra_resample.h"

#if defined(ZFAST_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

namespace {

zfast::redshift_resample::Params make_redshift_resample_params(
    std::uintptr_t cumulative, int64_t n_seds, int64_t n_rest_pixels, std::uintptr_t sed_index,
    std::uintptr_t z, int64_t batch, std::uintptr_t edge_position, std::uintptr_t inv_bin_width,
    int64_t n_bins, double ln_edge0, double dln, double inv_expm1_dln, float fill, std::uintptr_t out) {
  zfast::redshift_resample::Params p;
  p.cumulative = reinterpret_cast<const double*>(cumulative);
  p.n_seds = n_seds;
  p.n_rest_pixels = n_rest_pixels;
  p.sed_index = reinterpret_cast<const int64_t*>(sed_index);
  p.z = reinterpret_cast<const double*>(z);
  p.batch = batch;
  p.edge_position = reinterpret_cast<const double*>(edge_position);
  p.inv_bin_width = reinterpret_cast<const double*>(inv_bin_width);
  p.n_bins = n_bins;
  p.ln_edge0 = ln_edge0;
  p.dln = dln;
  p.inv_expm1_dln = inv_expm1_dln;
  p.fill = fill;
  p.out = reinterpret_cast<float*>(out);
  return p;
}

template <typename T>
zfast::jsd_entropy::Params<T> make_jsd_entropy_params(std::uintptr_t logits, std::uintptr_t target, int64_t batch,
                                                      int64_t n_classes, double lambda_js, double lambda_ent,
                                                      double grad_scale, std::uintptr_t loss, std::uintptr_t grad,
                                                      std::uintptr_t stats) {
  zfast::jsd_entropy::Params<T> p;
  p.logits = reinterpret_cast<const T*>(logits);
  p.target = reinterpret_cast<const T*>(target);
  p.batch = batch;
  p.n_classes = n_classes;
  p.lambda_js = static_cast<T>(lambda_js);
  p.lambda_ent = static_cast<T>(lambda_ent);
  p.grad_scale = static_cast<T>(grad_scale);
  p.loss = reinterpret_cast<T*>(loss);
  p.grad = reinterpret_cast<T*>(grad);
  p.stats = reinterpret_cast<T*>(stats);  // 0: no statistics
  return p;
}

int cuda_device_count() {
#if defined(ZFAST_WITH_CUDA)
  int count = 0;
  // With the static runtime and no driver this returns cudaErrorInsufficientDriver: that means "no CUDA".
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zfast native kernels (raw-pointer interface; use the zfast package, not this module)";
#if defined(ZFAST_WITH_CUDA)
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  m.def("cuda_device_count", &cuda_device_count,
        "Number of CUDA devices our runtime sees; 0 when built without CUDA or when no driver/GPU is present.");

  m.def(
      "redshift_resample_cpu",
      [](std::uintptr_t cumulative, int64_t n_seds, int64_t n_rest_pixels, std::uintptr_t sed_index,
         std::uintptr_t z, int64_t batch, std::uintptr_t edge_position, std::uintptr_t inv_bin_width,
         int64_t n_bins, double ln_edge0, double dln, double inv_expm1_dln, float fill, std::uintptr_t out,
         int n_threads, bool allow_avx512) {
        auto params = make_redshift_resample_params(cumulative, n_seds, n_rest_pixels, sed_index, z, batch,
                                                    edge_position, inv_bin_width, n_bins, ln_edge0, dln,
                                                    inv_expm1_dln, fill, out);
        params.allow_avx512 = allow_avx512;
        zfast::redshift_resample::launch_cpu(params, n_threads);
      },
      py::arg("cumulative"), py::arg("n_seds"), py::arg("n_rest_pixels"), py::arg("sed_index"), py::arg("z"),
      py::arg("batch"), py::arg("edge_position"), py::arg("inv_bin_width"), py::arg("n_bins"),
      py::arg("ln_edge0"), py::arg("dln"), py::arg("inv_expm1_dln"), py::arg("fill"), py::arg("out"),
      py::arg("n_threads"), py::arg("allow_avx512") = true, py::call_guard<py::gil_scoped_release>());

  m.def(
      "render_templates_cpu",
      [](std::uintptr_t cumulative, int64_t n_seds, int64_t n_rest_pixels, std::uintptr_t sed_index,
         std::uintptr_t z, int64_t batch, std::uintptr_t edge_position, std::uintptr_t inv_bin_width,
         int64_t n_bins, double ln_edge0, double dln, double inv_expm1_dln, float fill, std::uintptr_t out,
         std::uintptr_t lsf_kernel, int64_t lsf_half, std::uintptr_t square, int n_threads) {
        auto params = make_redshift_resample_params(cumulative, n_seds, n_rest_pixels, sed_index, z, batch,
                                                    edge_position, inv_bin_width, n_bins, ln_edge0, dln,
                                                    inv_expm1_dln, fill, out);
        params.lsf_kernel = reinterpret_cast<const float*>(lsf_kernel);
        params.lsf_half = lsf_half;
        params.square = reinterpret_cast<float*>(square);
        zfast::redshift_resample::launch_cpu(params, n_threads);
      },
      py::arg("cumulative"), py::arg("n_seds"), py::arg("n_rest_pixels"), py::arg("sed_index"), py::arg("z"),
      py::arg("batch"), py::arg("edge_position"), py::arg("inv_bin_width"), py::arg("n_bins"),
      py::arg("ln_edge0"), py::arg("dln"), py::arg("inv_expm1_dln"), py::arg("fill"), py::arg("out"),
      py::arg("lsf_kernel"), py::arg("lsf_half"), py::arg("square"), py::arg("n_threads"),
      py::call_guard<py::gil_scoped_release>(),
      "redshift_resample_cpu, then each row convolved with the float32 LSF kernel [2h+1] (edges replicated) in "
      "place and its squares written to square [B, M]: the template fit's rendering in one pass.");

  m.def("redshift_resample_cpu_uses_avx512", &zfast::redshift_resample::cpu_uses_avx512,
        "Whether redshift_resample_cpu runs its hand-written AVX-512 edge loop on this CPU (allow_avx512=False "
        "selects the portable loop, for tests and benchmarks).");

  m.def(
      "redshift_resample_input_stats_cpu",
      [](std::uintptr_t z, std::uintptr_t sed_index, int64_t batch) {
        const auto stats = zfast::redshift_resample::input_stats_cpu(reinterpret_cast<const double*>(z),
                                                                       reinterpret_cast<const int64_t*>(sed_index), batch);
        return py::make_tuple(stats.n_nonfinite, stats.z_min, stats.z_max, stats.index_min, stats.index_max);
      },
      py::arg("z"), py::arg("sed_index"), py::arg("batch"),  // builds a tuple: keeps the GIL
      "(non-finite count, min and max of the finite z, min and max of sed_index) of float64 z and int64 sed_index.");

  m.def(
      "jsd_entropy_cpu",
      [](std::uintptr_t logits, std::uintptr_t target, int64_t batch, int64_t n_classes, double lambda_js,
         double lambda_ent, double grad_scale, std::uintptr_t loss, std::uintptr_t grad, std::uintptr_t stats,
         bool float64, int n_threads) {
        if (float64) {
          zfast::jsd_entropy::launch_cpu(make_jsd_entropy_params<double>(logits, target, batch, n_classes, lambda_js,
                                                                         lambda_ent, grad_scale, loss, grad, stats),
                                         n_threads);
        } else {
          zfast::jsd_entropy::launch_cpu(make_jsd_entropy_params<float>(logits, target, batch, n_classes, lambda_js,
                                                                        lambda_ent, grad_scale, loss, grad, stats),
                                         n_threads);
        }
      },
      py::arg("logits"), py::arg("target"), py::arg("batch"), py::arg("n_classes"), py::arg("lambda_js"),
      py::arg("lambda_ent"), py::arg("grad_scale"), py::arg("loss"), py::arg("grad"), py::arg("stats"),
      py::arg("float64"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
      "Per-row JS + entropy loss [B] and grad_scale times its gradient [B, C] (float32 or float64 throughout);\n"
      "stats [B, 3] or 0.");

  m.def(
      "jsd_entropy_stats_summary_cpu",
      [](std::uintptr_t stats, int64_t batch, bool float64) {
        const zfast::jsd_entropy::StatsSummary summary =
            float64 ? zfast::jsd_entropy::summarize_stats_cpu(reinterpret_cast<const double*>(stats), batch)
                    : zfast::jsd_entropy::summarize_stats_cpu(reinterpret_cast<const float*>(stats), batch);
        return py::make_tuple(summary.nonfinite_code, summary.target_min, summary.max_sum_error);
      },
      py::arg("stats"), py::arg("batch"), py::arg("float64"),  // builds a tuple: keeps the GIL
      "(OR of the rows' non-finite codes, smallest target value, largest |row sum - 1|) of the stats [B, 3].");
  m.def(
      "lsf_convolve_cpu",
      [](std::uintptr_t x, std::uintptr_t kernel, int64_t batch, int64_t length, int64_t half, bool double_precision,
         std::uintptr_t out, std::uintptr_t square, int n_threads) {
        zfast::lsf_convolve::Params p;
        p.x = reinterpret_cast<const void*>(x);
        p.kernel = reinterpret_cast<const void*>(kernel);
        p.batch = batch;
        p.length = length;
        p.half = half;
        p.double_precision = double_precision;
        p.out = reinterpret_cast<void*>(out);
        p.square = square == 0 ? nullptr : reinterpret_cast<void*>(square);
        zfast::lsf_convolve::launch_cpu(p, n_threads);
      },
      py::arg("x"), py::arg("kernel"), py::arg("batch"), py::arg("length"), py::arg("half"), py::arg("double_precision"),
      py::arg("out"), py::arg("square"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
      "Rows [B, M] convolved with a kernel [2h+1], edge pixels replicated (Instrument.convolve_lsf's maths); "
      "square != 0 also writes the squares there.");

  m.def(
      "spectra_resample_cpu",
      [](std::uintptr_t flux, std::uintptr_t var, std::uintptr_t valid, std::uintptr_t edges_in,
         std::uintptr_t edges_out, int64_t batch, int64_t n_in, int64_t n_out, std::uintptr_t flux_out,
         std::uintptr_t ivar_out, std::uintptr_t fraction, int n_threads) {
        zfast::spectra_resample::Params p;
        p.flux = reinterpret_cast<const double*>(flux);
        p.var = reinterpret_cast<const double*>(var);
        p.valid = reinterpret_cast<const uint8_t*>(valid);
        p.edges_in = reinterpret_cast<const double*>(edges_in);
        p.edges_out = reinterpret_cast<const double*>(edges_out);
        p.batch = batch;
        p.n_in = n_in;
        p.n_out = n_out;
        p.flux_out = reinterpret_cast<double*>(flux_out);
        p.ivar_out = reinterpret_cast<double*>(ivar_out);
        p.fraction = reinterpret_cast<double*>(fraction);
        zfast::spectra_resample::launch_cpu(p, n_threads);
      },
      py::arg("flux"), py::arg("var"), py::arg("valid"), py::arg("edges_in"), py::arg("edges_out"), py::arg("batch"),
      py::arg("n_in"), py::arg("n_out"), py::arg("flux_out"), py::arg("ivar_out"), py::arg("fraction"),
      py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
      "Flux-conserving resampling of float64 spectra [B, N] (flux, var, bool valid) on edges [N+1] onto edges "
      "[M+1] -> flux [B, M], ivar [B, M], valid fraction [B] (zfast.predict.resample's maths).");

  m.def(
      "channel_stats_cpu",
      [](std::uintptr_t activation, int64_t batch, int64_t channels, int64_t length, int64_t stride_b,
         int64_t stride_c, int64_t stride_l, std::uintptr_t out, int n_threads) {
        zfast::channel_stats::Params p;
        p.activation = reinterpret_cast<const float*>(activation);
        p.batch = batch;
        p.channels = channels;
        p.length = length;
        p.stride_b = stride_b;
        p.stride_c = stride_c;
        p.stride_l = stride_l;
        p.out = reinterpret_cast<float*>(out);
        zfast::channel_stats::launch_cpu(p, n_threads);
      },
      py::arg("activation"), py::arg("batch"), py::arg("channels"), py::arg("length"), py::arg("stride_b"),
      py::arg("stride_c"), py::arg("stride_l"), py::arg("out"), py::arg("n_threads"),
      py::call_guard<py::gil_scoped_release>(),
      "Per-channel mean and population std over L of a float32 activation [B, C, L] (any strides) -> [B, 2C].");

  m.def(
      "pz_calibrate_cpu",
      [](std::uintptr_t logits, bool float64, int64_t batch, int64_t n_bins, std::uintptr_t centres,
         std::uintptr_t snr, std::uintptr_t snr_edges, int64_t n_snr_edges, std::uintptr_t peak_edges,
         int64_t n_peak_edges, std::uintptr_t temperatures, double peak_width, std::uintptr_t plain,
         std::uintptr_t calibrated, int n_threads) {
        zfast::pz_post::CalibrateParams p;
        if (float64) p.logits64 = reinterpret_cast<const double*>(logits);
        else p.logits32 = reinterpret_cast<const float*>(logits);  // clang-format off
        p.batch = batch;
        p.n_bins = n_bins;
        p.centres = reinterpret_cast<const double*>(centres);
        p.snr = reinterpret_cast<const double*>(snr);
        p.snr_edges = reinterpret_cast<const double*>(snr_edges);
        p.n_snr_edges = n_snr_edges;
        p.peak_edges = reinterpret_cast<const double*>(peak_edges);  // 0: no groups
        p.n_peak_edges = n_peak_edges;
        p.temperatures = reinterpret_cast<const double*>(temperatures);  // 0: plain softmax only
        p.peak_width = peak_width;
        p.plain = reinterpret_cast<double*>(plain);
        p.calibrated = reinterpret_cast<double*>(calibrated);
        zfast::pz_post::calibrate_cpu(p, n_threads);
      },
      py::arg("logits"), py::arg("float64"), py::arg("batch"), py::arg("n_bins"), py::arg("centres"),
      py::arg("snr"), py::arg("snr_edges"), py::arg("n_snr_edges"), py::arg("peak_edges"), py::arg("n_peak_edges"),
      py::arg("temperatures"), py::arg("peak_width"), py::arg("plain"), py::arg("calibrated"),
      py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
      "Plain softmax [B, K] and softmax(logits / T) [B, K] (float64) with T per SNR bin and peak-share group.");

  m.def(
      "pz_summarise_cpu",
      [](std::uintptr_t probs, std::uintptr_t mode_probs, int64_t batch, int64_t n_bins, std::uintptr_t edges,
         int64_t n_candidates, double half_width, std::uintptr_t summary, std::uintptr_t z_cand,
         std::uintptr_t p_cand, std::uintptr_t deltachi2, std::uintptr_t flags, int n_threads) {
        zfast::pz_post::SummariseParams p;
        p.probs = reinterpret_cast<const double*>(probs);
        p.mode_probs = reinterpret_cast<const double*>(mode_probs);  // 0: the peak of probs
        p.batch = batch;
        p.n_bins = n_bins;
        p.edges = reinterpret_cast<const double*>(edges);
        p.n_candidates = n_candidates;
        p.half_width = half_width;
        p.summary = reinterpret_cast<double*>(summary);
        p.z_cand = reinterpret_cast<double*>(z_cand);
        p.p_cand = reinterpret_cast<double*>(p_cand);
        p.deltachi2 = reinterpret_cast<double*>(deltachi2);
        p.flags = reinterpret_cast<int8_t*>(flags);
        zfast::pz_post::summarise_cpu(p, n_threads);
      },
      py::arg("probs"), py::arg("mode_probs"), py::arg("batch"), py::arg("n_bins"), py::arg("edges"),
      py::arg("n_candidates"), py::arg("half_width"), py::arg("summary"), py::arg("z_cand"), py::arg("p_cand"),
      py::arg("deltachi2"), py::arg("flags"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>(),
      "P(z) summaries [B, 7], candidates z and mass [B, n], deltachi2 [B] and row flags [B] (int8).");
#if defined(ZFAST_WITH_CUDA)
  m.def(
      "redshift_resample_cuda",
      [](std::uintptr_t cumulative, int64_t n_seds, int64_t n_rest_pixels, std::uintptr_t sed_index,
         std::uintptr_t z, int64_t batch, std::uintptr_t edge_position, std::uintptr_t inv_bin_width,
         int64_t n_bins, double ln_edge0, double dln, double inv_expm1_dln, float fill, std::uintptr_t out,
         int device, std::uintptr_t stream) {
        zfast::redshift_resample::launch_cuda(
            make_redshift_resample_params(cumulative, n_seds, n_rest_pixels, sed_index, z, batch, edge_position,
                                          inv_bin_width, n_bins, ln_edge0, dln, inv_expm1_dln, fill, out),
            device, stream);
      },
      py::arg("cumulative"), py::arg("n_seds"), py::arg("n_rest_pixels"), py::arg("sed_index"), py::arg("z"),
      py::arg("batch"), py::arg("edge_position"), py::arg("inv_bin_width"), py::arg("n_bins"),
      py::arg("ln_edge0"), py::arg("dln"), py::arg("inv_expm1_dln"), py::arg("fill"), py::arg("out"),
      py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());

  m.def(
      "jsd_entropy_cuda",
      [](std::uintptr_t logits, std::uintptr_t target, int64_t batch, int64_t n_classes, double lambda_js,
         double lambda_ent, double grad_scale, std::uintptr_t loss, std::uintptr_t grad, std::uintptr_t stats,
         bool float64, int device, std::uintptr_t stream) {
        if (float64) {
          zfast::jsd_entropy::launch_cuda(make_jsd_entropy_params<double>(logits, target, batch, n_classes, lambda_js,
                                                                          lambda_ent, grad_scale, loss, grad, stats),
                                          device, stream);
        } else {
          zfast::jsd_entropy::launch_cuda(make_jsd_entropy_params<float>(logits, target, batch, n_classes, lambda_js,
                                                                         lambda_ent, grad_scale, loss, grad, stats),
                                          device, stream);
        }
      },
      py::arg("logits"), py::arg("target"), py::arg("batch"), py::arg("n_classes"), py::arg("lambda_js"),
      py::arg("lambda_ent"), py::arg("grad_scale"), py::arg("loss"), py::arg("grad"), py::arg("stats"),
      py::arg("float64"), py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
#endif
}

// Splitting a batch of independent rows over std::threads (CPU launchers of every op).
//
// No OpenMP: after an OpenMP region a forked child hangs at its next one (FACTS.md), and its pool fights
// torch's on small machines. Threads are started per call, so a batch is split only when every thread gets
// enough work to pay for starting it (~20 us); the calling thread does the first share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace zfast {

// Calls rows(begin, end) on contiguous shares of [0, batch), on up to n_threads threads, each share holding at
// least min_work_per_thread = rows x work_per_row units (unless the whole batch is smaller).
template <typename Rows>
void parallel_rows(int64_t batch, int64_t work_per_row, int n_threads, int64_t min_work_per_thread, const Rows& rows) {
  if (batch <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, (batch * work_per_row) / min_work_per_thread);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(n_threads), by_work, batch}));
  const int64_t share = (batch + threads - 1) / threads;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * share;
    const int64_t end = std::min(batch, begin + share);
    if (begin < end) workers.emplace_back(std::cref(rows), begin, end);
  }
  rows(int64_t{0}, std::min(batch, share));
  for (auto& worker : workers) worker.join();
}

}  // namespace zfast

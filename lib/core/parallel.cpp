#include "alloy/core/parallel.h"

#include <omp.h>

#include <atomic>

namespace alloy {
namespace {
std::atomic<int> g_thread_count{0};  // 0 = OpenMP's default
}

int thread_count() {
  const int n = g_thread_count.load();
  return n > 0 ? n : omp_get_max_threads();
}

void set_thread_count(int n) { g_thread_count.store(n > 0 ? n : 0); }

bool in_parallel_region() { return omp_in_parallel() != 0; }

namespace detail {
void parallel_for_impl(size_t chunk_count, void* ctx, void (*call)(void*, size_t)) {
  const int threads = thread_count();
  if (threads <= 1 || chunk_count <= 1 || omp_in_parallel()) {
    for (size_t c = 0; c < chunk_count; ++c) call(ctx, c);
    return;
  }
  const long n = static_cast<long>(chunk_count);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (long c = 0; c < n; ++c) call(ctx, static_cast<size_t>(c));
}
}  // namespace detail

}  // namespace alloy

// The chunked path of the merge executor: see merge_chunked.h.
#include "merge_chunked.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/page_buffer.h"
#include "alloy/core/parallel.h"
#include "methods/method_util.h"
#include "methods/sparsify.h"

namespace alloy::detail {
namespace {

// Per-thread float32 scratch of the chunked path: one chunk per source and one for the output.
// Huge pages (PageBuffer): a few faults per thread instead of hundreds.
thread_local PageBuffer t_chunk_scratch;
// The chunked path's grouped reads: a few chunks of every source per pread (chunks_per_read).
thread_local PageBuffer t_group_bytes;

}  // namespace

void check_overflow(const PlannedTensor& t, size_t overflows, bool clamped) {
  if (overflows == 0 || clamped) return;
  throw Error(ErrorCode::kNonFinite,
              "tensor '" + t.name + "': " + std::to_string(overflows) +
                  " merged values exceed the range of " + dtype_torch_name(t.out_dtype) +
                  " and would be stored as infinity; use a wider out_dtype, or "
                  "--allow-crimes to clamp them to the largest finite value");
}

void merge_chunked(const MergePlan& plan, const PlannedTensor& t, MergeContext& ctx,
                   ChunkedMerge& merge, BufferPool& pool, WriteBehind& behind,
                   const EmitBytes& emit, bool clamp_overflow,
                   const std::vector<SourceBytes>* given) {
  const uint64_t n = numel(t.shape);
  const size_t count = t.sources.size();
  std::vector<SourceBytes> inputs;
  if (given != nullptr) inputs = *given;
  for (size_t k = 0; given == nullptr && k < count; ++k) {
    const PlannedSource& s = t.sources[k];
    SourceBytes source{plan.models[s.model]->find(s.tensor)};
    const TensorInfo& info = *source.input->info;
    if (info.shape != t.shape || lora_for(plan, s) != nullptr) {
      uint8_t* whole = pool.bytes(1 + k, info.nbytes());
      read_whole(plan, s, *source.input, whole, pool, count + 1);
      source.whole = whole;
    }
    inputs.push_back(source);
  }
  FirstError read_error;
  // bf16 sources, each one run of bytes (not cropped), merged in bf16: their bytes are the values
  // the merge computes with, and its passes can read them with no float32 rows in between.
  bool bf16_sources = t.compute_dtype == DType::BF16;
  for (const SourceBytes& source : inputs) {
    bf16_sources = bf16_sources && source.input->info->dtype == DType::BF16 &&
                   source.input->info->shape == t.shape;
  }
  // bf16 in, bf16 out, and a merge with kernels for that (ChunkedMerge::merges_bf16): the chunks'
  // bytes go to the merge as read, and its bytes to the output, with no float32 rows.
  const bool bf16_bits = bf16_sources && merge.merges_bf16() && t.out_dtype == DType::BF16;
  // The sums pass's partial sums, per kDefaultGrain chunk (added in chunk order below).
  const size_t sums = merge.sum_count();
  std::vector<double> partial(
      sums > 0 ? static_cast<size_t>((n + kDefaultGrain - 1) / kDefaultGrain) * sums : 0);
  // A merge with a sums pass, or a prepare() that reads the sources, reads every source twice or
  // more (the sums or the selection passes, then the output). Where the sources fit
  // the pool's held_limit() together they are read once, in parallel, into a held buffer, and
  // every pass converts from it: the second copy out of the page cache cost a slerp as much as its
  // arithmetic, and a TIES merge a fifth of its CPU time. On bf16 bits the sums are taken as each
  // chunk is read, while its bytes are in the reading core's cache, not in a pass of their own
  // over memory.
  const bool reads_twice = sums > 0 || merge.prepare_reads_sources();
  bool summed = false;
  if (reads_twice && given == nullptr) {
    std::function<void(size_t, size_t)> sum_chunks;
    if (sums > 0 && bf16_bits) {
      // Two chunks of the same length at a time (ChunkedMerge::chunk_pair_sums_bf16).
      sum_chunks = [&](size_t cb, size_t ce) {
        std::vector<const uint16_t*> bits(2 * count);
        const auto point = [&](size_t c, const uint16_t** at) {
          for (size_t k = 0; k < count; ++k) {
            at[k] = reinterpret_cast<const uint16_t*>(inputs[k].whole) + c * kDefaultGrain;
          }
          return static_cast<size_t>(std::min<uint64_t>(kDefaultGrain, n - c * kDefaultGrain));
        };
        for (size_t c = cb; c < ce; c += 2) {
          const size_t len = point(c, bits.data());
          const size_t next_len = c + 1 < ce ? point(c + 1, bits.data() + count) : 0;
          if (next_len == len) {
            merge.chunk_pair_sums_bf16(bits.data(), bits.data() + count, len,
                                       partial.data() + c * sums, partial.data() + (c + 1) * sums);
          } else {  // the last chunk, alone or after a longer one
            merge.chunk_sums_bf16(bits.data(), len, partial.data() + c * sums);
            if (next_len > 0) {
              merge.chunk_sums_bf16(bits.data() + count, next_len, partial.data() + (c + 1) * sums);
            }
          }
        }
      };
    }
    summed =
        hold_sources(t, inputs, pool.held_limit(), pool.held_sources(), read_error, sum_chunks) &&
        sum_chunks;
  }
  read_error.rethrow();
  // Whole-tensor work first (the sparsified task-arithmetic methods' streaming passes,
  // lib/merge/methods/sparsify.h): any range of any source, read from its bytes as the chunks are
  // (as float32 rows, or as the bytes themselves where the sources are bf16: prepare_bf16).
  const SourceRangeLoader load = [&](size_t k, uint64_t begin, size_t len, float* dst) {
    bool loaded = false;
    read_error.run([&] {
      load_range(inputs[k], t.shape, t.compute_dtype, begin, len, dst);
      loaded = true;
    });
    if (!loaded) std::fill(dst, dst + len, 0.0f);
  };
  if (bf16_sources) {
    merge.prepare_bf16(
        load, [&](size_t k, uint64_t begin, size_t len, uint16_t* scratch) -> const uint16_t* {
          const uint8_t* bytes = nullptr;
          read_error.run([&] {
            bytes = source_range_bytes(inputs[k], t.shape, begin, len,
                                       reinterpret_cast<uint8_t*>(scratch));
          });
          if (bytes != nullptr) return reinterpret_cast<const uint16_t*>(bytes);
          std::fill(scratch, scratch + len, uint16_t{0});
          return scratch;
        });
  } else {
    merge.prepare(load);
  }
  read_error.rethrow();
  // The merge's chunks: the sums pass needs the fixed kDefaultGrain chunks (its partial sums are
  // added in their order); an element-wise merge takes any length (the streaming grain, which
  // tests make small and odd).
  const size_t grain = merge.sum_count() > 0 ? kDefaultGrain : detail::stream_grain();
  // Runs body(begin, len, sources, scratch_out, bits) on every chunk of elements [first, first +
  // total), in parallel (chunk boundaries at first + a multiple of `chunk`): sources are the
  // chunk's float32 rows, or with bf16_bits null and bits the sources' bf16 values. A chunk whose
  // source cannot be read is skipped and its error rethrown after the loop.
  size_t element_bytes = 0;  // of all the sources together
  for (const SourceBytes& source : inputs)
    element_bytes += dtype_bits(source.input->info->dtype) / 8;
  // Chunks of `chunk` elements per task: a few consecutive chunks of every source read with one
  // pread each (chunks_per_read), then converted and merged chunk by chunk: the same chunks, so
  // the same bytes, whatever the grouping.
  const auto group_of = [&](size_t chunk) { return chunks_per_read(element_bytes * chunk); };
  // Runs body(begin, len, sources, scratch_out, bits) on chunks [cb, ce) of elements [first, first
  // + total) (chunk c: first + c * chunk): sources are the chunk's float32 rows, or with bf16_bits
  // null and bits the sources' bf16 values. Returns the sum of body's results.
  auto run_group = [&](uint64_t first, size_t total, size_t chunk, size_t cb, size_t ce,
                       auto&& body) {
    const size_t group_first = cb * chunk, group_len = std::min(total, ce * chunk) - group_first;
    float* scratch = bf16_bits ? nullptr
                               : reinterpret_cast<float*>(
                                     t_chunk_scratch.reserve((count + 1) * chunk * sizeof(float)));
    uint8_t* group_bytes = t_group_bytes.reserve(element_bytes * group_len);
    const uint8_t* bytes_of[64];
    const float* sources[64];
    const uint16_t* bits_of[64];
    std::vector<const uint8_t*> many_bytes(count > 64 ? count : 0);
    std::vector<const float*> many(count > 64 ? count : 0);
    std::vector<const uint16_t*> many_bits(count > 64 && bf16_bits ? count : 0);
    const uint8_t** bytes = count > 64 ? many_bytes.data() : bytes_of;
    const float** ptrs = count > 64 ? many.data() : sources;
    const uint16_t** bits = count > 64 ? many_bits.data() : bits_of;
    size_t sum = 0;
    read_error.run([&] {
      for (size_t k = 0, at = 0; k < count; ++k) {
        bytes[k] = source_range_bytes(inputs[k], t.shape, first + group_first, group_len,
                                      group_bytes + at);
        at += group_len * (dtype_bits(inputs[k].input->info->dtype) / 8);
        if (!bf16_bits) ptrs[k] = scratch + k * chunk;
      }
      for (size_t c = cb; c < ce; ++c) {
        const size_t lo = c * chunk, len = std::min(chunk, total - lo);
        if (bf16_bits) {
          for (size_t k = 0; k < count; ++k) {
            bits[k] = reinterpret_cast<const uint16_t*>(bytes[k] + (lo - group_first) * 2);
          }
          sum += body(first + lo, len, static_cast<const float* const*>(nullptr),
                      static_cast<float*>(nullptr), bits);
          continue;
        }
        for (size_t k = 0; k < count; ++k) {
          const DType dtype = inputs[k].input->info->dtype;
          float* dst = scratch + k * chunk;
          if (bytes[k] != nullptr) {
            convert_range(dtype, bytes[k] + (lo - group_first) * (dtype_bits(dtype) / 8), len,
                          t.compute_dtype, dst);
          } else {
            load_range(inputs[k], t.shape, t.compute_dtype, first + lo, len, dst);
          }
        }
        sum += body(first + lo, len, ptrs, scratch + count * chunk,
                    static_cast<const uint16_t* const*>(nullptr));
      }
    });
    return sum;
  };
  // run_group over every group of chunks of [first, first + total), in parallel.
  auto for_each_chunk = [&](uint64_t first, size_t total, size_t chunk, auto&& body) {
    if (total == 0) return size_t{0};
    const size_t chunks = (total + chunk - 1) / chunk;
    const size_t result = parallel_reduce(
        chunks, group_of(chunk), size_t{0},
        [&](size_t cb, size_t ce) { return run_group(first, total, chunk, cb, ce, body); },
        [](size_t a, size_t b) { return a + b; });
    read_error.rethrow();
    return result;
  };
  if (sums > 0 && !summed) {
    for_each_chunk(0, static_cast<size_t>(n), kDefaultGrain,
                   [&](uint64_t begin, size_t len, const float* const* sources, float*,
                       const uint16_t* const* bits) {
                     double* chunk_partial = partial.data() + begin / kDefaultGrain * sums;
                     if (bits != nullptr) {
                       merge.chunk_sums_bf16(bits, len, chunk_partial);
                     } else {
                       merge.chunk_sums(sources, len, chunk_partial);
                     }
                     return size_t{0};
                   });
  }
  if (sums > 0) set_sums_in_chunk_order(merge, partial);
  const uint64_t out_bytes = dtype_bits(t.out_dtype) / 8;
  // The output goes to the writer one window at a time, so the bytes held are a window's, not the
  // tensor's. The chunks inside a window are those of the whole tensor wherever the window size is
  // a multiple of the grain (the default), and merge_chunk is element-wise given the prepared
  // state, so the bytes do not depend on the window. Each window is written (and hashed) behind,
  // while the next one is merged (write_behind.h). A tensor with non-finite or overflowing values
  // is refused after its last window, as before (its bytes went to the staged file, which is
  // removed).
  const uint64_t window = detail::output_window();
  const uint64_t window_bytes = std::min(n, window) * out_bytes;
  // Overflow into out_dtype is possible only when it is narrower than the compute dtype (the
  // methods round to the compute dtype, where an overflow is already a non-finite value).
  const bool narrowing = t.out_dtype != t.compute_dtype;
  std::atomic<size_t> overflows{0};
  // Every window's groups are tasks of one parallel loop, so no thread waits at the end of a window
  // for the others: a window's bytes go to the writer when its last group is merged (in window
  // order: a window done early waits for the ones before it), and each window takes the next
  // write-behind buffer when its first group starts (in order too: buffer() hands out slots in
  // turn). A window whose read failed is queued all the same; the error is rethrown after the
  // loop, and the staged file that holds its bytes is removed.
  const size_t windows = static_cast<size_t>((n + window - 1) / window);
  const size_t group = group_of(grain);
  std::vector<size_t> task_begin(windows + 1, 0);
  for (size_t w = 0; w < windows; ++w) {
    const uint64_t len = std::min<uint64_t>(window, n - w * window);
    const size_t chunks = static_cast<size_t>((len + grain - 1) / grain);
    task_begin[w + 1] = task_begin[w] + (chunks + group - 1) / group;
  }
  std::vector<uint8_t*> window_at(windows, nullptr);
  std::unique_ptr<std::atomic<size_t>[]> groups_left(new std::atomic<size_t>[windows]);
  for (size_t w = 0; w < windows; ++w) groups_left[w] = task_begin[w + 1] - task_begin[w];
  std::mutex buffer_mutex, queue_mutex, error_mutex;
  std::condition_variable buffer_ready;
  size_t handed_out = 0;     // windows [0, handed_out) have their buffers (buffer_mutex)
  bool handing_out = false;  // a thread is in behind.buffer() for the next window (buffer_mutex)
  size_t next_queue = 0;     // the next window to queue for writing (queue_mutex)
  std::atomic<bool> behind_failed{false};
  std::exception_ptr behind_error;
  const auto fail = [&] {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!behind_error) behind_error = std::current_exception();
    behind_failed = true;
  };
  // The window's buffer, taking the buffers of the windows before it first (null after an error).
  // behind.buffer() may wait for a slot that only an earlier window's task can free, so it is
  // called without the lock: a task whose window has its buffer never waits behind it.
  const auto buffer_of = [&](size_t w) -> uint8_t* {
    std::unique_lock<std::mutex> lock(buffer_mutex);
    buffer_ready.wait(lock, [&] { return behind_failed || w < handed_out || !handing_out; });
    if (behind_failed) return nullptr;
    if (w < handed_out) return window_at[w];
    handing_out = true;
    while (handed_out <= w && !behind_failed) {
      lock.unlock();
      uint8_t* bytes = nullptr;
      try {
        bytes = behind.buffer(window_bytes);
      } catch (...) {
        fail();
      }
      lock.lock();
      window_at[handed_out++] = bytes;
      buffer_ready.notify_all();
    }
    handing_out = false;
    buffer_ready.notify_all();
    return behind_failed ? nullptr : window_at[w];
  };
  // Window w is merged: queues the writes of the merged windows from the next to queue on (w's,
  // once those before it are merged). A window is merged when its last task's decrement of
  // groups_left reached 0; reading that 0 makes its tasks' bytes visible here.
  const auto finish = [&] {
    std::lock_guard<std::mutex> lock(queue_mutex);
    try {
      for (; next_queue < windows && groups_left[next_queue].load() == 0; ++next_queue) {
        const uint64_t first = next_queue * window, len = std::min<uint64_t>(window, n - first);
        behind.write([emit, bytes = window_at[next_queue], offset = first * out_bytes,
                      nbytes = len * out_bytes] { emit(offset, bytes, nbytes); });
      }
    } catch (...) {
      fail();
    }
  };
  size_t bad = parallel_reduce(
      task_begin[windows], 1, size_t{0},
      [&](size_t task, size_t) -> size_t {
        const size_t w = static_cast<size_t>(
            std::upper_bound(task_begin.begin(), task_begin.end(), task) - task_begin.begin() - 1);
        uint8_t* bytes = buffer_of(w);
        if (bytes == nullptr) return 0;
        const uint64_t first = w * window;
        const size_t len = static_cast<size_t>(std::min(window, n - first));
        const size_t cb = (task - task_begin[w]) * group,
                     ce = std::min(cb + group, (len + grain - 1) / grain);
        const size_t result = run_group(
            first, len, grain, cb, ce,
            [&](uint64_t begin, size_t count, const float* const* sources, float* out,
                const uint16_t* const* bits) {
              if (bits !=
                  nullptr) {  // bf16_bits: out_dtype is the compute dtype, so nothing can overflow
                return merge.merge_chunk_bf16(
                    bits, begin, count, reinterpret_cast<uint16_t*>(bytes + (begin - first) * 2));
              }
              const size_t chunk_bad = merge.merge_chunk(sources, begin, count, out);
              if (narrowing)
                overflows += overflow_on_store(t.out_dtype, out, count, clamp_overflow);
              store_from_f32(out, count, t.out_dtype, bytes + (begin - first) * out_bytes);
              return chunk_bad;
            });
        if (groups_left[w].fetch_sub(1) == 1) finish();
        return result;
      },
      [](size_t a, size_t b) { return a + b; });
  if (behind_error) std::rethrow_exception(behind_error);
  read_error.rethrow();
  if (n == 0) {  // an empty tensor is still written (its entry in the header)
    uint8_t* bytes = behind.buffer(0);
    behind.write([emit, bytes] { emit(0, bytes, 0); });
  }
  if (bad > 0) {
    detail::fail_non_finite(ctx, std::string(plan.method->name()).c_str(), bad,
                            "check the weights and the inputs");
  }
  check_overflow(t, overflows, clamp_overflow);
}

}  // namespace alloy::detail

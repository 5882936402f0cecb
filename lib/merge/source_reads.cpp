// Reading a planned tensor's sources: see source_reads.h.
#include "source_reads.h"

#include <algorithm>
#include <cstring>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "alloy/core/safetensors.h"

namespace alloy::detail {
namespace {

thread_local std::vector<uint8_t> t_byte_scratch;

}  // namespace

uint64_t numel(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

void crop(const float* in, const std::vector<uint64_t>& full, float* out,
          const std::vector<uint64_t>& shape) {
  if (full == shape) {
    std::memcpy(out, in, numel(shape) * sizeof(float));
    return;
  }
  const size_t rank = shape.size();
  const uint64_t inner = shape.back(), inner_full = full.back();
  const uint64_t rows = numel(shape) / std::max<uint64_t>(inner, 1);
  for (uint64_t r = 0; r < rows; ++r) {
    // Row r of the cropped tensor: map its multi-index to the full tensor.
    uint64_t rem = r, offset = 0, stride = inner_full;
    for (size_t d = rank - 1; d-- > 0;) {
      const uint64_t idx = rem % shape[d];
      rem /= shape[d];
      offset += idx * stride;
      stride *= full[d];
    }
    std::memcpy(out + r * inner, in + offset, inner * sizeof(float));
  }
}

const uint8_t* source_range_bytes(const SourceBytes& source, const std::vector<uint64_t>& shape,
                                  uint64_t begin, size_t len, uint8_t* scratch) {
  const TensorInfo& info = *source.input->info;
  if (info.shape != shape) return nullptr;
  const uint64_t element_bytes = dtype_bits(info.dtype) / 8;
  if (source.whole != nullptr) return source.whole + begin * element_bytes;
  source.input->shard->read(info, begin * element_bytes, len * element_bytes, scratch);
  return scratch;
}

void convert_range(DType dtype, const uint8_t* bytes, size_t len, DType compute_dtype, float* dst) {
  load_as_f32(dtype, bytes, len, dst);
  // "Each input tensor is cast to dtype when loaded."
  if (dtype != compute_dtype) round_to(compute_dtype, dst, len);
}

void load_range(const SourceBytes& source, const std::vector<uint64_t>& shape, DType compute_dtype,
                uint64_t begin, size_t len, float* dst) {
  const TensorInfo& info = *source.input->info;
  const uint64_t element_bytes = dtype_bits(info.dtype) / 8;
  if (info.shape == shape) {
    if (source.whole == nullptr && t_byte_scratch.size() < len * element_bytes) {
      t_byte_scratch.resize(len * element_bytes);
    }
    convert_range(info.dtype, source_range_bytes(source, shape, begin, len, t_byte_scratch.data()),
                  len, compute_dtype, dst);
    return;
  }
  const uint8_t* data = source.whole;
  const size_t rank = shape.size();
  const uint64_t inner = shape.back(), inner_full = info.shape.back();
  for (uint64_t i = begin, end = begin + len; i < end;) {
    const uint64_t row = i / inner, column = i % inner;
    const uint64_t run = std::min(inner - column, end - i);
    uint64_t rem = row, offset = column, stride = inner_full;
    for (size_t d = rank - 1; d-- > 0;) {
      offset += rem % shape[d] * stride;
      rem /= shape[d];
      stride *= info.shape[d];
    }
    load_as_f32(info.dtype, data + offset * element_bytes, static_cast<size_t>(run),
                dst + (i - begin));
    i += run;
  }
  if (info.dtype != compute_dtype) round_to(compute_dtype, dst, len);
}

const LoraAdapter* adapter_of(const MergePlan& plan, size_t m) {
  return m < plan.adapters.size() ? plan.adapters[m].get() : nullptr;
}

const LoraModule* lora_for(const MergePlan& plan, const PlannedSource& s) {
  const LoraAdapter* adapter = adapter_of(plan, s.model);
  return adapter ? adapter->find(s.tensor) : nullptr;
}

void read_whole(const MergePlan& plan, const PlannedSource& s, const ModelTensor& input,
                uint8_t* bytes, BufferPool& pool, size_t scratch_slot) {
  const TensorInfo& info = *input.info;
  input.shard->read(info, 0, info.nbytes(), bytes);  // pread: see SourceBytes
  if (const LoraModule* lora = lora_for(plan, s)) {
    adapter_of(plan, s.model)
        ->patch(*lora, info.dtype, bytes, pool.get(scratch_slot, info.numel()));
  }
}

bool hold_sources(const PlannedTensor& t, std::vector<SourceBytes>& inputs, uint64_t limit,
                  PageBuffer& held_buffer, FirstError& errors,
                  const std::function<void(size_t, size_t)>& on_chunks) {
  uint64_t total = 0, chunk_bytes = 0;
  for (const SourceBytes& source : inputs) {
    const TensorInfo& info = *source.input->info;
    if (source.whole != nullptr || info.shape != t.shape) return false;
    total += info.nbytes();
    chunk_bytes += dtype_bits(info.dtype) / 8 * kDefaultGrain;
  }
  if (total == 0 || total > limit) return false;
  uint8_t* held = held_buffer.reserve(static_cast<size_t>(total));
  std::vector<uint8_t*> dst;
  uint64_t at = 0;
  for (SourceBytes& source : inputs) {
    dst.push_back(held + at);
    source.whole = dst.back();
    at += source.input->info->nbytes();
  }
  const uint64_t n = numel(t.shape);
  const size_t chunks = static_cast<size_t>((n + kDefaultGrain - 1) / kDefaultGrain);
  parallel_for(
      chunks, chunks_per_read(static_cast<size_t>(chunk_bytes)), [&](size_t cb, size_t ce) {
        errors.run([&] {
          const uint64_t begin = cb * kDefaultGrain,
                         end = std::min<uint64_t>(n, ce * kDefaultGrain);
          for (size_t k = 0; k < inputs.size(); ++k) {
            const TensorInfo& info = *inputs[k].input->info;
            const uint64_t element_bytes = dtype_bits(info.dtype) / 8;
            inputs[k].input->shard->read(info, begin * element_bytes, (end - begin) * element_bytes,
                                         dst[k] + begin * element_bytes);
          }
          if (on_chunks) on_chunks(cb, ce);
        });
      });
  return true;
}

}  // namespace alloy::detail

// libFuzzer target: parse_safetensors over arbitrary bytes must either accept (and then every
// tensor must lie inside the buffer) or throw alloy::Error; never crash, hang or read out of
// bounds.
//
// Each input is tried twice: as a whole file, and as header text followed by a data buffer (split
// after the last '}'), with a correct length prefix, so the fuzzer reaches the JSON and offset
// validation instead of stopping at the length check.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/core/safetensors.h"

namespace {

void check(const uint8_t* data, size_t size) {
  try {
    const auto header = alloy::parse_safetensors(data, size, "fuzz");
    for (const auto& tensor : header.tensors) {
      if (header.data_start() + tensor.data_end > size) std::abort();  // a tensor escaped the file
      if (tensor.nbytes() * 8 != tensor.numel() * alloy::dtype_bits(tensor.dtype)) std::abort();
    }
  } catch (const alloy::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(data, size);
  size_t header_len = size;
  while (header_len > 0 && data[header_len - 1] != '}') --header_len;
  if (header_len == 0) header_len = size;
  std::vector<uint8_t> file(8 + size);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(uint64_t(header_len) >> (8 * i));
  if (size > 0) std::memcpy(file.data() + 8, data, size);
  check(file.data(), file.size());
  return 0;
}

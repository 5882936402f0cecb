// libFuzzer target: parse_torch_checkpoint over arbitrary bytes must either accept (and then every
// tensor must lie inside the file, its byte size matching its shape and dtype) or throw
// alloy::Error; never crash, hang, leak or read out of bounds; nothing is ever executed.
//
// Each input is tried twice: as a whole file (the zip reader), and as data.pkl inside a valid
// checkpoint whose storages data/0 .. data/3 hold 0, 8, 64 and 256 bytes, so the fuzzer reaches
// the unpickler and the tensor checks instead of stopping at the zip's structure.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../tests/torch_zip.h"
#include "alloy/core/error.h"
#include "alloy/core/torch_checkpoint.h"

namespace {

void check(const std::string& file) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(file.data());
  try {
    const auto header = alloy::parse_torch_checkpoint(bytes, file.size(), "fuzz");
    for (const auto& tensor : header.tensors) {
      if (tensor.data_begin > tensor.data_end || tensor.data_end > file.size()) std::abort();  // escaped the file
      if (tensor.nbytes() * 8 != tensor.numel() * alloy::dtype_bits(tensor.dtype)) std::abort();
    }
  } catch (const alloy::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  check(input);
  check(alloy::test::torch_checkpoint_bytes(
      input, {{"0", ""}, {"1", std::string(8, '\1')}, {"2", std::string(64, '\2')}, {"3", std::string(256, '\3')}}));
  return 0;
}

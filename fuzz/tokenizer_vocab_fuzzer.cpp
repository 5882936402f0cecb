// libFuzzer target: arbitrary bytes as a tokenizer.json through the vocabulary reader of the
// tokenizer merge (lib/merge/tokenizer_vocab.cpp). Either succeeds or throws alloy::Error; never
// crashes, hangs or grows without bound.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "../lib/merge/tokenizer_plan.h"
#include "alloy/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const alloy::Vocabulary v =
        alloy::parse_vocabulary(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    for (const auto& entry : v.by_id) {
      if (v.ids.at(entry.first) != entry.second) __builtin_trap();  // one id per token, both ways
    }
  } catch (const alloy::Error&) {
  }
  return 0;
}

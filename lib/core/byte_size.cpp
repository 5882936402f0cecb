// parse_byte_size: the --out-shard-size syntax (decimal suffixes, as mergekit).
#include <cctype>
#include <limits>

#include "alloy/core/error.h"
#include "alloy/core/writer.h"

namespace alloy {

uint64_t parse_byte_size(const std::string& text) {
  auto refuse = [&](const char* why) -> uint64_t {
    throw Error(ErrorCode::kInvalidArgument,
                "invalid byte size '" + text + "': " + why + " (examples: 5B, 500M, 1000000)");
  };
  if (text.empty()) return refuse("empty");
  size_t digits = 0;
  uint64_t value = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) {
    const uint64_t digit = static_cast<uint64_t>(text[digits] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return refuse("too large");
    value = value * 10 + digit;
    ++digits;
  }
  if (digits == 0) return refuse("must start with a whole number");
  uint64_t multiplier = 1;
  const std::string suffix = text.substr(digits);
  if (suffix.empty()) {
    multiplier = 1;
  } else if (suffix == "K" || suffix == "k") {
    multiplier = 1'000;
  } else if (suffix == "M" || suffix == "m") {
    multiplier = 1'000'000;
  } else if (suffix == "B" || suffix == "G" || suffix == "b" || suffix == "g") {
    multiplier = 1'000'000'000;
  } else if (suffix == "T" || suffix == "t") {
    multiplier = 1'000'000'000'000;
  } else {
    return refuse("unknown suffix (use K, M, B/G or T, powers of 1000)");
  }
  if (value > std::numeric_limits<uint64_t>::max() / multiplier) return refuse("too large");
  if (value == 0) return refuse("must be positive");
  return value * multiplier;
}

}  // namespace alloy

// The safetensors header's JSON, parsed with the checks that JSON itself does not make. Internal
// to lib/core (the reader's first step).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "alloy/core/error.h"

namespace alloy::detail {

// A header defect found while parsing; the reader adds the file's name.
struct ParseAbort {
  ErrorCode code;
  std::string message;
};

// Valid headers nest at most 3 levels ({name: {shape: [..]}}); anything deeper is refused early.
constexpr int kMaxHeaderDepth = 3;

// "tensor 'NAME': ", the prefix of a message about one tensor.
std::string tensor_label(const std::string& name);

// Called for each top-level entry of the header ("__metadata__" or a tensor name, and its value)
// as soon as the entry's value is complete, in file order.
using HeaderEntryHandler = std::function<void(const std::string& key, nlohmann::json&& value)>;

// Parses the header object [begin, end), one top-level entry at a time, with a SAX handler of our
// own that refuses while parsing: nesting deeper than kMaxHeaderDepth, and duplicate keys at any
// level (nlohmann would silently keep the last one, so two readers could disagree on what the
// same file holds). Linear in the header's size and never holding more than one entry's DOM:
// nlohmann's callback parser rescans the parent object each time a child object ends, which made
// a header of 80,000 tensors take minutes, and a DOM of a million entries takes seconds to build
// and free. Throws ParseAbort for a JSON defect; exceptions from `on_entry` pass through.
void parse_header_entries(const char* begin, const char* end, const HeaderEntryHandler& on_entry);

}  // namespace alloy::detail

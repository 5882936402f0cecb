// Text from untrusted files (safetensors headers, recipes) must be UTF-8 before it is parsed.
#pragma once

#include <string_view>

namespace alloy {

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view text);

}  // namespace alloy

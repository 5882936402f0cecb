// Small text helpers shared by the safetensors reader and the model directory code.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace alloy::detail {

// A name from an untrusted file, quoted for an error message: control bytes (a NUL would end
// what() early, an escape sequence could rewrite the terminal) are shown as \xNN.
inline std::string quote_name(std::string_view name) {
  std::string out = "'";
  for (const char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      char escaped[5];
      std::snprintf(escaped, sizeof(escaped), "\\x%02X", byte);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "'";
}

// nlohmann's lexer takes a NUL byte for the end of input, so "{}\0<anything>" would parse as "{}".
// JSON never contains a raw NUL, so texts holding one are refused before parsing.
inline bool contains_nul(std::string_view text) {
  return text.find('\0') != std::string_view::npos;
}

}  // namespace alloy::detail

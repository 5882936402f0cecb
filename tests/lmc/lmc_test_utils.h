// Helpers of the lmc tests: IDX bytes, gzip, synthetic data sets, the Fashion-MNIST files.
#pragma once

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "alloy/lmc/idx.h"
#include "alloy/lmc/mlp.h"

namespace alloy::test {

// The bytes of an IDX file of unsigned bytes: magic, big-endian dimensions, data.
inline std::string idx_bytes(const std::vector<uint32_t>& dims, const std::string& data,
                             uint8_t type = 0x08) {
  std::string out = {'\0', '\0', char(type), char(dims.size())};
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) out += char((d >> s) & 0xFF);
  }
  return out + data;
}

inline std::string gzip_bytes(const std::string& raw) {
  z_stream s{};
  deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&s, raw.size()) + 64, '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  s.avail_in = uInt(raw.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = uInt(out.size());
  deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

// A data set whose images have `features` pixels (1 x features) with random bytes and labels.
inline lmc::Split synthetic_split(size_t count, size_t features, uint32_t seed) {
  lmc::Split split;
  split.count = count;
  split.rows = 1;
  split.cols = features;
  uint32_t x = seed * 2654435761u + 1;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
  };
  for (size_t i = 0; i < count * features; ++i) split.pixels.push_back(uint8_t(next() & 0xFF));
  for (size_t i = 0; i < count; ++i) split.labels.push_back(uint8_t(next() % lmc::kIdxClasses));
  return split;
}

// The Debian Fashion-MNIST files, loaded once; fails the test with a clear message when missing.
inline const lmc::Dataset* fashion_mnist() {
  static const lmc::Dataset* data = []() -> const lmc::Dataset* {
    try {
      return new lmc::Dataset(lmc::load_dataset(lmc::kFashionMnistDir));
    } catch (const std::exception&) {
      return nullptr;
    }
  }();
  if (!data)
    ADD_FAILURE() << "Fashion-MNIST is missing from " << lmc::kFashionMnistDir
                  << ": run scripts/install-deps.sh (Debian package dataset-fashion-mnist)";
  return data;
}

}  // namespace alloy::test

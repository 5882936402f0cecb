#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "alloy/core/sha256.h"

namespace {

struct Vector {
  std::string input;
  const char* digest;
};

// FIPS 180-4 / NIST CSRC example vectors, plus boundary lengths around the 56- and 64-byte padding
// edges (digests from the portable path cross-checked with coreutils sha256sum).
std::vector<Vector> fips_vectors() {
  return {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
}

class Sha256Paths : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { alloy::detail::sha256_force_portable(GetParam()); }
  void TearDown() override { alloy::detail::sha256_force_portable(false); }
};

TEST_P(Sha256Paths, FipsVectors) {
  for (const auto& v : fips_vectors()) {
    EXPECT_EQ(alloy::sha256_hex(v.input.data(), v.input.size()), v.digest)
        << "input length " << v.input.size();
  }
}

TEST_P(Sha256Paths, IncrementalEqualsOneShot) {
  std::string data(4099, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char((i * 131 + 7) & 0xFF);
  const std::string whole = alloy::sha256_hex(data.data(), data.size());
  for (size_t step : {1u, 3u, 55u, 56u, 63u, 64u, 65u, 1000u}) {
    alloy::Sha256 hasher;
    for (size_t off = 0; off < data.size(); off += step) {
      hasher.update(data.data() + off, std::min(step, data.size() - off));
    }
    EXPECT_EQ(hasher.finish_hex(), whole) << "step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Sha256, Sha256Paths, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Portable" : "Native"; });

TEST(Sha256, NativeAndPortableAgreeOnAllLengths) {
  std::string data(300, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char(i ^ 0x5A);
  for (size_t n = 0; n <= data.size(); ++n) {
    alloy::detail::sha256_force_portable(true);
    const std::string portable = alloy::sha256_hex(data.data(), n);
    alloy::detail::sha256_force_portable(false);
    ASSERT_EQ(alloy::sha256_hex(data.data(), n), portable) << "length " << n;
  }
}

}  // namespace

// PageBuffer (alloy/core/page_buffer.h): 2 MiB aligned, grow-only, writable to its capacity, and
// moved without a double unmap.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "alloy/core/page_buffer.h"

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

TEST(PageBuffer, ReservesAlignedMemoryAndGrowsOnlyWhenAskedForMore) {
  alloy::PageBuffer buffer;
  EXPECT_EQ(buffer.capacity(), 0u);
  uint8_t* small = buffer.reserve(100);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % kHugePage, 0u);
  EXPECT_EQ(buffer.capacity(), kHugePage);
  std::memset(small, 0x5A, buffer.capacity());  // every byte of the capacity is writable
  EXPECT_EQ(buffer.reserve(kHugePage), small);  // within the capacity: the same memory
  EXPECT_EQ(buffer.reserve(0), small);
  uint8_t* large = buffer.reserve(kHugePage + 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(large) % kHugePage, 0u);
  EXPECT_EQ(buffer.capacity(), 2 * kHugePage);
  std::memset(large, 0xA5, buffer.capacity());
  EXPECT_EQ(large[2 * kHugePage - 1], 0xA5);
}

TEST(PageBuffer, MovesOwnership) {
  alloy::PageBuffer a;
  uint8_t* p = a.reserve(10);
  p[9] = 7;
  alloy::PageBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(a.capacity(), 0u);
  alloy::PageBuffer c;
  c.reserve(1);
  c = std::move(b);  // c's own range is unmapped, b's taken
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.data()[9], 7);
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move)
}

}  // namespace

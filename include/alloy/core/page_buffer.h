// A grow-only byte buffer of anonymous memory advised for transparent huge pages, for buffers that
// live across tensors (the merge's write-behind windows). Memory a process touches for the first
// time costs a page fault per 4 KiB page, about 2.6 s per GiB on the benchmark machines; with
// MADV_HUGEPAGE (their kernels run transparent huge pages in "madvise" mode) one fault maps 2 MiB,
// measured at 0.07 s per GiB once the host backs the memory (docs/performance.md). Where the
// kernel has no huge page to give, the buffer has 4 KiB pages: the advice changes the cost, never
// the contents.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy {

class PageBuffer {
 public:
  PageBuffer() = default;
  ~PageBuffer();
  PageBuffer(PageBuffer&& other) noexcept;
  PageBuffer& operator=(PageBuffer&& other) noexcept;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;

  // At least `bytes` bytes, 2 MiB aligned. Growing maps a new range: the old contents are not
  // kept (callers fill the buffer after asking for it). Throws std::bad_alloc when the memory
  // cannot be mapped.
  uint8_t* reserve(size_t bytes);
  uint8_t* data() const { return data_; }
  size_t capacity() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace alloy

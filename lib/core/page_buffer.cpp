// PageBuffer: mmap'd, 2 MiB aligned, advised for transparent huge pages (see page_buffer.h).
#include "alloy/core/page_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <new>
#include <utility>

namespace alloy {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

PageBuffer::~PageBuffer() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

PageBuffer::PageBuffer(PageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

PageBuffer& PageBuffer::operator=(PageBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

uint8_t* PageBuffer::reserve(size_t bytes) {
  if (data_ != nullptr && bytes <= size_) return data_;
  if (bytes > SIZE_MAX - 2 * kHugePage) throw std::bad_alloc();
  const size_t size = (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage;
  // One huge page more than needed, both ends trimmed: a huge page backs only an aligned 2 MiB.
  void* mapped = ::mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  auto* raw = static_cast<uint8_t*>(mapped);
  const size_t skew = reinterpret_cast<uintptr_t>(raw) % kHugePage;
  const size_t head = skew == 0 ? 0 : kHugePage - skew;
  if (head > 0) ::munmap(raw, head);
  ::munmap(raw + head + size, kHugePage - head);
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = raw + head;
  size_ = size;
#ifdef MADV_HUGEPAGE
  ::madvise(data_, size_, MADV_HUGEPAGE);  // advice: where it fails, the pages are 4 KiB
#endif
  return data_;
}

}  // namespace alloy

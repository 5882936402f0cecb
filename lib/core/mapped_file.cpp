// MappedFile: a read-only mmap of a whole file, with page-granular release/prefetch hints.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "alloy/core/error.h"
#include "alloy/core/safetensors.h"

namespace alloy {
namespace {

uint64_t page_size() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

// End of [offset, offset + length) clamped to the mapping (length may be anything a caller passes).
uint64_t clamped_end(uint64_t offset, uint64_t length, size_t size) {
  return length > size - offset ? size : offset + length;
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO planted where a shard should be must fail, not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(ErrorCode::kIo, path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kIo, path + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  // mmap refuses length 0; an empty file keeps data_ == nullptr and the parser reports it as too
  // small to hold a header.
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(ErrorCode::kIo, path + ": cannot map: " + std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// Only whole pages inside the range are dropped: a page shared with a neighbouring tensor may still
// be in use. The file's last partial page counts as whole (nothing else lives in it).
void MappedFile::release(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  const uint64_t page = page_size();
  const uint64_t stop = clamped_end(offset, length, size_);
  const uint64_t begin = (offset + page - 1) / page * page;
  const uint64_t end = stop == size_ ? stop : stop / page * page;
  if (begin >= end) return;
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

// Read-ahead may cover more than asked, so the range is widened to page boundaries.
void MappedFile::prefetch(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  const uint64_t begin = offset / page_size() * page_size();
  const uint64_t end = clamped_end(offset, length, size_);
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_WILLNEED);
}

}  // namespace alloy

// MappedFile: a read-only mmap of a whole file, with page-granular release/prefetch hints.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/core/safetensors.h"
#include "io_util.h"

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

FileIdentity identity_of(const struct stat& st) {
  FileIdentity id;
  id.device = st.st_dev;
  id.inode = st.st_ino;
  id.size = static_cast<uint64_t>(st.st_size);
  id.links = static_cast<uint64_t>(st.st_nlink);
  id.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  id.ctime_ns = int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec;
  return id;
}

// Every open model file keeps its descriptor, and an assay of 64 sharded candidates holds
// thousands: the soft limit on descriptors (often 1024) is raised to the hard one, once.
void raise_descriptor_limit() {
  static const bool raised = [] {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
      limit.rlim_cur = limit.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
    return true;
  }();
  (void)raised;
}

int open_regular(const std::string& path) {
  raise_descriptor_limit();
  // O_NONBLOCK: opening a FIFO planted where a shard should be must fail, not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
  return fd;
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) { map(open_regular(path)); }

MappedFile::MappedFile(int fd, const std::string& path) : path_(path) { map(fd); }

std::unique_ptr<MappedFile> MappedFile::open_inside(const std::filesystem::path& real_dir,
                                                    const std::filesystem::path& path) {
  const int fd = open_regular(path.string());
  char link[4096];
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(proc.c_str(), link, sizeof(link) - 1);
  if (n <= 0) {
    ::close(fd);
    throw Error(ErrorCode::kIo, path.string() + ": cannot tell which file was opened (" + proc + ")");
  }
  const std::filesystem::path real(std::string(link, static_cast<size_t>(n)));
  const auto rel = real.lexically_relative(real_dir);
  if (rel.empty() || *rel.begin() == ".." || rel.is_absolute()) {
    ::close(fd);
    throw Error(ErrorCode::kSymlinkEscape,
                path.string() + " resolves outside the model directory (to " + real.string() + ")");
  }
  return std::unique_ptr<MappedFile>(new MappedFile(fd, path.string()));
}

void MappedFile::map(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(ErrorCode::kIo, path_ + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kIo, path_ + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  identity_ = identity_of(st);
  // mmap refuses length 0; an empty file keeps data_ == nullptr and the parser reports it as too
  // small to hold a header.
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(ErrorCode::kIo, path_ + ": cannot map: " + std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  fd_ = fd;
}

void MappedFile::copy_to(const std::filesystem::path& dest) const {
  if (identity_.links > 1) {
    throw Error(ErrorCode::kSymlinkEscape,
                path_ + " has " + std::to_string(identity_.links) +
                    " hard links: it may be a file from outside the model directory, which alloy will not copy "
                    "into an output (replace it with a plain copy, or do not copy it)");
  }
  const int out = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) throw Error(ErrorCode::kIo, dest.string() + ": cannot create: " + std::strerror(errno));
  constexpr uint64_t kWindow = uint64_t{8} << 20;
  std::vector<uint8_t> window(static_cast<size_t>(std::min<uint64_t>(kWindow, size_)));
  try {
    for (uint64_t offset = 0; offset < size_; offset += kWindow) {
      const uint64_t length = std::min<uint64_t>(kWindow, size_ - offset);
      read(offset, length, window.data());
      if (const int err = detail::pwrite_all(out, window.data(), length, offset))
        throw Error(ErrorCode::kIo, dest.string() + ": cannot write: " + std::strerror(err));
    }
    check_unchanged();
  } catch (...) {
    ::close(out);
    throw;
  }
  if (::close(out) != 0) throw Error(ErrorCode::kIo, dest.string() + ": cannot write: " + std::strerror(errno));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::read(uint64_t offset, uint64_t length, void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  while (length > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, uint64_t{1} << 30));
    const ssize_t n = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::kIo, path_ + ": cannot read: " + std::strerror(errno));
    if (n == 0) {
      struct stat st {};
      const long long now = ::fstat(fd_, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
      throw Error(ErrorCode::kInputChanged,
                  path_ + ": changed while alloy was reading it: it had " + std::to_string(size_) +
                      " bytes when opened and now has " + std::to_string(now) + "; nothing was written");
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
}

void MappedFile::check_unchanged() const {
  struct stat st {}, named {};
  if (::fstat(fd_, &st) != 0 || !(identity_of(st) == identity_)) {
    throw Error(ErrorCode::kInputChanged,
                path_ + ": was modified while alloy was reading it (size, modification or change time differ "
                        "from when it was opened); the bytes read and the file's hash may disagree, so nothing "
                        "was written");
  }
  if (::stat(path_.c_str(), &named) != 0 || named.st_dev != st.st_dev || named.st_ino != st.st_ino) {
    throw Error(ErrorCode::kInputChanged,
                path_ + ": was replaced by another file while alloy was reading it; what was read is not what "
                        "the path holds now, so nothing was written");
  }
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

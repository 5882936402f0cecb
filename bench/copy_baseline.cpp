// copy_baseline: the yardstick for merge and assay benchmarks.
//
// Reads every tensor byte of the given models the way alloy-merge does (mmap, page release after
// use) and, if OUT is given, writes OUT_BYTES bytes to it in 64 MiB pwrite chunks: the least work
// any merge of those inputs into an output of that size must do. Prints one JSON line.
//
// Usage: copy_baseline [--out FILE --out-bytes N] MODEL [MODEL ...]
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/core/model.h"

int main(int argc, char** argv) {
  std::string out_path;
  uint64_t out_bytes = 0;
  std::vector<std::string> models;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) {
      out_path = argv[++i];
    } else if (arg == "--out-bytes" && i + 1 < argc) {
      out_bytes = std::stoull(argv[++i]);
    } else {
      models.push_back(arg);
    }
  }
  if (models.empty()) {
    std::fprintf(stderr, "usage: copy_baseline [--out FILE --out-bytes N] MODEL [MODEL ...]\n");
    return 2;
  }
  try {
    const auto start = std::chrono::steady_clock::now();
    constexpr size_t kChunk = size_t{64} << 20;
    std::vector<unsigned char> buffer(kChunk);
    uint64_t checksum = 0, read_bytes = 0;
    for (const auto& path : models) {
      const alloy::Model model = alloy::Model::open(path);
      for (const auto& tensor : model.tensors()) {
        const uint8_t* data = tensor.data();
        for (uint64_t off = 0; off < tensor.info->nbytes(); off += kChunk) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, tensor.info->nbytes() - off));
          std::memcpy(buffer.data(), data + off, n);
          checksum += buffer[n / 2];
        }
        read_bytes += tensor.info->nbytes();
        tensor.shard->release(*tensor.info);
      }
    }
    if (!out_path.empty()) {
      const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) throw alloy::Error(alloy::ErrorCode::kIo, out_path + ": cannot create");
      for (uint64_t off = 0; off < out_bytes; off += kChunk) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, out_bytes - off));
        if (::pwrite(fd, buffer.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
          ::close(fd);
          throw alloy::Error(alloy::ErrorCode::kIo, out_path + ": write failed");
        }
      }
      ::close(fd);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"read_bytes\": %llu, \"written_bytes\": %llu, \"seconds\": %.3f, \"checksum\": %llu}\n",
                static_cast<unsigned long long>(read_bytes),
                static_cast<unsigned long long>(out_bytes), seconds,
                static_cast<unsigned long long>(checksum));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "copy_baseline: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

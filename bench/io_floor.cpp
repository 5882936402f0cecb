// io_floor: the honest floor for the merge and assay benchmarks.
//
// Reads every byte of the given inputs (model directories: every *.safetensors / *.bin file in
// them; or plain files) with read() into one reused buffer, and, if OUT is given, writes OUT_BYTES
// bytes to it with write() from one reused buffer: the least I/O any merge of those inputs into an
// output of that size must do, done the fastest way this machine allows. Which buffer size that is
// was measured, not assumed: on the 2-core development VMs a reused 4 MiB buffer wrote 10-20x
// faster than 64 MiB pwrite chunks from fresh memory (every fresh page costs a fault, ~2.6 s/GiB),
// and read() from the page cache beat first-touch mmap 5x. `--sweep` re-measures it on this
// machine: it times reading the inputs and writing OUT at each buffer size from 64 KiB to 64 MiB
// and prints the fastest of each, which the benchmarks then pass back as --read-buffer and
// --write-buffer.
//
// On 2 cores a merge reads and writes at once (its write-behind thread), and a linear merge once
// beat the serial floor (0.39 s against 0.45 s): `--overlap` reads on one thread while a second
// writes, and the benchmarks take the faster of the two floors.
//
// Usage: io_floor [--overlap] [--out FILE --out-bytes N] [--read-buffer B] [--write-buffer B]
//                 INPUT...
//        io_floor --sweep [--out FILE --out-bytes N] INPUT...
// Prints one JSON line per run (seconds, bytes), and for --sweep one line per buffer size and a
// final {"best_read_buffer": ..., "best_write_buffer": ...} line.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string out_path;
  uint64_t out_bytes = 0;
  size_t read_buffer = size_t{4} << 20;
  size_t write_buffer = size_t{4} << 20;
  bool sweep = false;
  bool overlap = false;  // --overlap: the reads and the write on two threads at once
  std::vector<std::string> inputs;
};

// The files a merge or an assay of INPUT reads: the weight files of a model directory, or the
// file itself. Sorted, so that runs read in the same order.
std::vector<fs::path> input_files(const std::vector<std::string>& inputs) {
  std::vector<fs::path> files;
  for (const auto& input : inputs) {
    if (!fs::is_directory(input)) {
      files.emplace_back(input);
      continue;
    }
    std::vector<fs::path> in_dir;
    for (const auto& entry : fs::directory_iterator(input)) {
      const auto ext = entry.path().extension();
      if (entry.is_regular_file() && (ext == ".safetensors" || ext == ".bin")) in_dir.push_back(entry.path());
    }
    if (in_dir.empty()) throw std::runtime_error(input + ": no .safetensors or .bin file");
    std::sort(in_dir.begin(), in_dir.end());
    files.insert(files.end(), in_dir.begin(), in_dir.end());
  }
  return files;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Reads every byte of FILES through one reused buffer; returns the bytes read. The checksum of
// one byte per buffer keeps the reads from being optimised away.
uint64_t read_all(const std::vector<fs::path>& files, std::vector<unsigned char>& buffer, uint64_t& checksum) {
  uint64_t total = 0;
  for (const auto& path : files) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path.string() + ": cannot open");
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (;;) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0) {
        ::close(fd);
        throw std::runtime_error(path.string() + ": read failed");
      }
      if (n == 0) break;
      checksum += buffer[static_cast<size_t>(n) / 2];
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  return total;
}

// Writes BYTES bytes to PATH from one reused buffer.
void write_all(const std::string& path, uint64_t bytes, const std::vector<unsigned char>& buffer) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create");
  for (uint64_t off = 0; off < bytes;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), bytes - off));
    const ssize_t w = ::write(fd, buffer.data(), n);
    if (w <= 0) {
      ::close(fd);
      throw std::runtime_error(path + ": write failed");
    }
    off += static_cast<uint64_t>(w);
  }
  if (::close(fd) != 0) throw std::runtime_error(path + ": close failed");
}

// One floor run: read everything, then write the output; with `overlap`, the reads on this thread
// and the write on a second one at the same time. Buffers are allocated and touched before the
// clock starts, as a merge's bounded pool would be after its first tensor.
double run_floor(const Options& options, const std::vector<fs::path>& files, size_t read_size,
                 size_t write_size, uint64_t& read_bytes, bool overlap = false) {
  std::vector<unsigned char> read_buffer(read_size, 1);
  std::vector<unsigned char> write_buffer(write_size, 1);
  uint64_t checksum = 0;
  // A new output file, as a merge writes one: truncating a previous run's synced output frees its
  // blocks on the clock (0.3-2 s per GB here), which once inflated the floor 2-3x.
  if (!options.out_path.empty()) ::unlink(options.out_path.c_str());
  const bool writes = !options.out_path.empty();
  const auto start = std::chrono::steady_clock::now();
  if (overlap && writes) {
    std::exception_ptr write_error;
    std::thread writer([&] {
      try {
        write_all(options.out_path, options.out_bytes, write_buffer);
      } catch (...) {
        write_error = std::current_exception();
      }
    });
    try {
      read_bytes = read_all(files, read_buffer, checksum);
    } catch (...) {
      writer.join();
      throw;
    }
    writer.join();
    if (write_error) std::rethrow_exception(write_error);
  } else {
    read_bytes = read_all(files, read_buffer, checksum);
    if (writes) write_all(options.out_path, options.out_bytes, write_buffer);
  }
  const double seconds = seconds_since(start);
  if (checksum == UINT64_MAX) std::fprintf(stderr, "(checksum %llu)\n", static_cast<unsigned long long>(checksum));
  return seconds;
}

// Times reading alone and writing alone at each buffer size (fastest of two tries each, after a
// sync so that earlier dirty pages do not throttle the writes), then whole floor runs with the
// fastest read buffer and each write buffer, and prints the fastest sizes.
void sweep(const Options& options, const std::vector<fs::path>& files) {
  double best_read = 1e300, best_write = 1e300;
  size_t best_read_size = 0, best_write_size = 0;
  for (size_t size = size_t{64} << 10; size <= (size_t{64} << 20); size *= 4) {
    std::vector<unsigned char> buffer(size, 1);
    uint64_t checksum = 0, read_bytes = 0;
    double read_s = 1e300, write_s = options.out_path.empty() ? 0 : 1e300;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto start = std::chrono::steady_clock::now();
      read_bytes = read_all(files, buffer, checksum);
      read_s = std::min(read_s, seconds_since(start));
      if (options.out_path.empty()) continue;
      ::sync();
      start = std::chrono::steady_clock::now();
      write_all(options.out_path, options.out_bytes, buffer);
      write_s = std::min(write_s, seconds_since(start));
      ::unlink(options.out_path.c_str());
    }
    std::printf("{\"buffer\": %zu, \"read_s\": %.3f, \"read_GBps\": %.2f, \"write_s\": %.3f, \"write_GBps\": %.2f}\n",
                size, read_s, read_bytes / 1e9 / std::max(read_s, 1e-9), write_s,
                options.out_bytes / 1e9 / std::max(write_s, 1e-9));
    if (read_s < best_read) best_read = read_s, best_read_size = size;
  }
  // The write buffer is chosen by whole floor runs (the reads, then the write, as the benchmarks
  // time them), each after a sync: timed alone, the writes differ by less than their noise (64
  // MiB once won by 0.154 s against 0.167 s), and the 64 MiB buffer then made the floor runs
  // 0.74-0.84 s against 0.28-0.32 s with 1 MiB, flattering every ratio.
  if (!options.out_path.empty()) {
    for (size_t size = size_t{64} << 10; size <= (size_t{64} << 20); size *= 4) {
      double floor_s = 1e300;
      uint64_t read_bytes = 0;
      for (int attempt = 0; attempt < 2; ++attempt) {
        ::sync();
        floor_s = std::min(floor_s, run_floor(options, files, best_read_size, size, read_bytes));
      }
      ::unlink(options.out_path.c_str());
      std::printf("{\"read_buffer\": %zu, \"write_buffer\": %zu, \"floor_s\": %.3f}\n", best_read_size, size,
                  floor_s);
      if (floor_s < best_write) best_write = floor_s, best_write_size = size;
    }
  }
  std::printf("{\"best_read_buffer\": %zu, \"best_write_buffer\": %zu}\n", best_read_size,
              options.out_path.empty() ? best_read_size : best_write_size);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--out" && has_value) {
      options.out_path = argv[++i];
    } else if (arg == "--out-bytes" && has_value) {
      options.out_bytes = std::stoull(argv[++i]);
    } else if (arg == "--read-buffer" && has_value) {
      options.read_buffer = std::stoull(argv[++i]);
    } else if (arg == "--write-buffer" && has_value) {
      options.write_buffer = std::stoull(argv[++i]);
    } else if (arg == "--sweep") {
      options.sweep = true;
    } else if (arg == "--overlap") {
      options.overlap = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw std::runtime_error("unknown option " + arg);
    } else {
      options.inputs.push_back(arg);
    }
  }
  if (options.inputs.empty()) throw std::runtime_error("no input given");
  if (options.read_buffer == 0 || options.write_buffer == 0) throw std::runtime_error("a buffer size must be > 0");
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    const auto files = input_files(options.inputs);
    if (options.sweep) {
      sweep(options, files);
      return 0;
    }
    uint64_t read_bytes = 0;
    const double seconds = run_floor(options, files, options.read_buffer, options.write_buffer,
                                     read_bytes, options.overlap);
    std::printf(
        "{\"read_bytes\": %llu, \"written_bytes\": %llu, \"read_buffer\": %zu, "
        "\"write_buffer\": %zu, \"overlap\": %s, \"seconds\": %.3f}\n",
        static_cast<unsigned long long>(read_bytes),
        static_cast<unsigned long long>(options.out_bytes), options.read_buffer,
        options.write_buffer, options.overlap ? "true" : "false", seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "io_floor: error: %s\n"
                 "usage: io_floor [--sweep] [--overlap] [--out FILE --out-bytes N] [--read-buffer "
                 "B] [--write-buffer B] INPUT...\n",
                 e.what());
    return 2;
  }
  return 0;
}

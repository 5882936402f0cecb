// Shared helpers for alloy's tests: temporary directories and handcrafted safetensors bytes.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace alloy::test {

// How many seeds a statistical sweep runs: all of them in the Release suite, where the sweep's claim
// ("never a merge in N runs") is measured, and an eighth of them (at least two, so that a sweep
// alternating dense and MoE families still runs both) in the sanitizer build, whose job is to find
// memory errors and undefined behaviour on every code path the sweep takes, not to repeat its
// statistics five times slower (CI runs both builds within its time limit).
constexpr int sweep_seeds(int n) {
#ifdef ALLOY_SANITIZED
  return n / 8 > 2 ? n / 8 : (n < 2 ? n : 2);
#else
  return n;
#endif
}

// A fresh directory for one test, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("alloy-test-") + std::to_string(::getpid()) + "-" +
                       (info ? std::string(info->test_suite_name()) + "." + info->name() : "x") +
                       "-" + std::to_string(counter()++);
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::filesystem::path path_;
};

// The bytes of a safetensors file: 8-byte little-endian length, the header text as given, data.
inline std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

// One header entry, `"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}`, for building
// headers by hand (the name and dtype are written as given, unescaped).
inline std::string tensor_entry(const std::string& name, const std::string& dtype,
                                const std::vector<uint64_t>& shape, uint64_t begin, uint64_t end) {
  std::string out = "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Writes a safetensors file from header text and data (see safetensors_bytes).
inline void write_safetensors(const std::filesystem::path& path, const std::string& header,
                              const std::string& data) {
  write_bytes(path, safetensors_bytes(header, data));
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs a shell command and captures its standard output; *status gets the exit code.
inline std::string run_command(const std::string& command, int* status) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *status = -1;
    return output;
  }
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int raw = ::pclose(pipe);
  *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return output;
}

inline std::string bin(const std::string& tool) {
  return std::string(ALLOY_BIN_DIR) + "/" + tool;
}
inline std::string data_dir() {
  return ALLOY_TEST_DATA_DIR;
}

}  // namespace alloy::test

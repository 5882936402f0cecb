#include "alloy/core/test_hooks.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

namespace alloy {

void test_pause_point(const char* point) {
#ifdef ALLOY_TEST_HOOKS
  const char* at = std::getenv("ALLOY_TEST_PAUSE_AT");
  const char* file = std::getenv("ALLOY_TEST_PAUSE_FILE");
  if (at == nullptr || file == nullptr || std::strcmp(at, point) != 0) return;
  { std::ofstream(file) << point << "\n"; }
  std::error_code ec;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::filesystem::exists(file, ec) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
#else
  (void)point;
#endif
}

}  // namespace alloy

#include "alloy/core/notice.h"

#include <cstdio>
#include <mutex>

namespace alloy {
namespace {

std::mutex g_mutex;
std::function<void(const std::string&)> g_sink;  // empty: standard error

}  // namespace

void notice(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_sink) {
    g_sink(message);
  } else {
    std::fprintf(stderr, "alloy: notice: %s\n", message.c_str());
  }
}

std::function<void(const std::string&)> set_notice_sink(std::function<void(const std::string&)> sink) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto previous = std::move(g_sink);
  g_sink = std::move(sink);
  return previous;
}

}  // namespace alloy

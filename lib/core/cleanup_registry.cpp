// The signal side of staging: a thread that waits for SIGINT/SIGTERM/SIGHUP, removes what the
// registry holds and dies of the signal. Waiting in a normal thread (sigwait) instead of a
// handler lets the cleanup use ordinary code: a handler may only call async-signal-safe functions.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#include "alloy/core/file_util.h"
#include "cleanup_registry.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

std::mutex g_mutex;
std::vector<fs::path> g_paths;

sigset_t fatal_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
  return set;
}

[[noreturn]] void wait_and_clean(sigset_t set) {
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  {
    std::lock_guard<std::mutex> lock(g_mutex);  // held to the end: nothing registers meanwhile
    for (const auto& path : g_paths) {
      std::error_code ec;
      // Writer threads may still be creating files in it: a few passes empty it.
      for (int pass = 0; pass < 5 && fs::exists(fs::symlink_status(path, ec)); ++pass) fs::remove_all(path, ec);
    }
    ::signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(sig);  // blocked everywhere else, so delivered here: the process dies of it
  }
  std::_Exit(128 + sig);
}

}  // namespace

namespace detail {

void register_for_cleanup(const fs::path& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_paths.push_back(path);
}

void unregister_for_cleanup(const fs::path& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_paths.erase(std::remove(g_paths.begin(), g_paths.end(), path), g_paths.end());
}

}  // namespace detail

void remove_staging_on_signals() {
  static std::once_flag once;
  std::call_once(once, [] {
    const sigset_t set = fatal_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(wait_and_clean, set).detach();
  });
}

}  // namespace alloy

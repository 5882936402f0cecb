// What every alloy tool's command line shares: --version, and one set of exit statuses.
//
// Exit statuses (README.md, "Exit statuses"):
//   0  success (also --help and --version)
//   1  a check the user asked for failed (alloy-assay --fail-on)
//   2  a usage error (unknown flag, missing argument: CLI11 reports it) or an error in the input:
//      a recipe, a model, a file; one line on stderr names it
//   128 + N  killed by signal N (staging is removed first on SIGINT, SIGTERM, SIGHUP)
// Not a public header: the tools include it as "../common/cli.h"; CLI11 stays out of include/.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace alloy::tool {

inline constexpr int kExitOk = 0;
inline constexpr int kExitCheckFailed = 1;
inline constexpr int kExitError = 2;

// The first call of every tool's main(): OpenMP's idle threads sleep instead of spinning, so that
// they never take a core from other work (this process's hashing threads, or other processes).
// libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it is loaded, before main() runs, so
// setting them here would change nothing: the tool executes itself again (same pid, arguments and
// descriptors) with OMP_WAIT_POLICY=passive in its environment. A user who set either variable
// keeps it, and nothing is re-executed; if the exec fails the tool goes on with the default.
inline void wait_passively_in_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("OMP_WAIT_POLICY");  // exec failed: run as we are, and children get the user's environment
}

// Adds --version, which prints "<tool> (alloy VERSION)" and exits 0.
inline void add_version_flag(CLI::App& app, const std::string& tool) {
  app.set_version_flag("--version", tool + " (alloy " ALLOY_VERSION ")",
                       "print the version and exit");
}

// Adds --hash-cache DIR (alloy/core/hash_cache.h), whose default is $ALLOY_HASH_CACHE when set.
inline void add_hash_cache_option(CLI::App& app, std::string& dir) {
  app.add_option("--hash-cache", dir,
                 "look up and store the input files' sha256 in DIR, keyed by device, inode, size, mtime and ctime "
                 "(the record marks digests taken from it; trust DIR as you would the digests; default: "
                 "$ALLOY_HASH_CACHE, else none)")
      ->type_name("DIR")
      ->envname("ALLOY_HASH_CACHE");
}

// Prints what the library noted on the run (a plan's or a result's notices, AssayAudit::notices) as
// "<tool>: note: ..." lines on standard error.
inline void print_notes(const char* tool, const std::vector<std::string>& notes) {
  for (const auto& note : notes) std::fprintf(stderr, "%s: note: %s\n", tool, note.c_str());
}

// Parses the command line. Returns nothing when the tool should go on, else the status to exit
// with: 0 after --help or --version, kExitError after a usage error (CLI11's own codes, 105 to
// 115, are not used).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // --version first: CLI11 2.1 checks a required subcommand before the flag's callback runs.
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--version") {
      const std::string path = argv[0];
      std::printf("%s (alloy " ALLOY_VERSION ")\n",
                  path.substr(path.find_last_of('/') + 1).c_str());
      return kExitOk;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int status = app.exit(e);  // prints help, the version or the error
    return status == 0 ? kExitOk : kExitError;
  }
  return std::nullopt;
}

}  // namespace alloy::tool

// What the CPU supports: see alloy/core/cpu_features.h.
#include "alloy/core/cpu_features.h"

namespace alloy {

bool cpu_has_x86_64_v4() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }();
  return supported;
#else
  return false;
#endif
}

bool cpu_has_avx512_vbmi2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi2");
  }();
  return supported;
#else
  return false;
#endif
}

}  // namespace alloy

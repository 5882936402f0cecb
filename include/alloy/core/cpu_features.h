// alloy/core/cpu_features.h: what the CPU running alloy supports, for kernels written for one
// instruction set and chosen at run time (the element loops' target clones choose by themselves).
#pragma once

namespace alloy {

// Whether this CPU (and OS) runs x86-64-v4 code: AVX-512 F, BW, DQ and VL. Detected once (CPUID is
// a VM exit under a hypervisor, tens of microseconds); false off x86.
bool cpu_has_x86_64_v4();
// Whether it has AVX-512 VBMI2 (vpcompressw and the other word and byte packing instructions).
bool cpu_has_avx512_vbmi2();

}  // namespace alloy

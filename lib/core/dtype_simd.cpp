// Vectorised bf16/f16 <-> float32 conversions with run-time dispatch (see dtype_simd.h). Each
// vector path is compiled for its instruction set with __attribute__((target)) and runs only when
// __builtin_cpu_supports says the CPU has it; the elements past the last whole vector use the
// scalar functions, which are the reference every path is tested against.
#include "dtype_simd.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <cstring>

#include "alloy/core/dtype.h"

namespace alloy::detail {
namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

void bf16_to_f32_scalar(const uint8_t* src, size_t count, float* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
}
void f16_to_f32_scalar(const uint8_t* src, size_t count, float* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(load_u16(src + 2 * i));
}
void f32_to_bf16_scalar(const float* src, size_t count, uint8_t* dst) {
  for (size_t i = 0; i < count; ++i) store_u16(dst + 2 * i, f32_to_bf16(src[i]));
}
void f32_to_f16_scalar(const float* src, size_t count, uint8_t* dst) {
  for (size_t i = 0; i < count; ++i) store_u16(dst + 2 * i, f32_to_f16(src[i]));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ALLOY_X86_SIMD 1

// --- AVX2 + F16C: 8 lanes ---
#define ALLOY_AVX2 __attribute__((target("avx2,f16c")))

ALLOY_AVX2 void bf16_to_f32_avx2(const uint8_t* src, size_t count, float* dst) {
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
  }
  bf16_to_f32_scalar(src + 2 * i, count - i, dst + i);
}

ALLOY_AVX2 void f16_to_f32_avx2(const uint8_t* src, size_t count, float* dst) {
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));  // exact; a NaN is made quiet, payload kept
  }
  f16_to_f32_scalar(src + 2 * i, count - i, dst + i);
}

// 8 x 32-bit lanes holding values 0..0xFFFF -> 8 x 16 bits, in order.
ALLOY_AVX2 __m128i narrow_avx2(__m256i v) {
  const __m256i packed = _mm256_packus_epi32(v, v);  // per 128-bit lane: a0..a3 a0..a3 b0..b3 b0..b3
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));  // a0..a3 b0..b3
}
// 8 x 32-bit lane masks (0 or all ones) -> 8 x 16-bit masks.
ALLOY_AVX2 __m128i narrow_mask_avx2(__m256i mask) {
  const __m256i packed = _mm256_packs_epi32(mask, mask);  // signed saturation keeps -1
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// The scalar integer trick, lane by lane: (u + 0x7FFF + ((u >> 16) & 1)) >> 16, NaN -> 0x7FC0.
ALLOY_AVX2 __m256i bf16_round_avx2(__m256i u) {
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}

ALLOY_AVX2 void f32_to_bf16_avx2(const float* src, size_t count, uint8_t* dst) {
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), narrow_avx2(bf16_round_avx2(u)));
  }
  f32_to_bf16_scalar(src + i, count - i, dst + 2 * i);
}

ALLOY_AVX2 void f32_to_f16_avx2(const float* src, size_t count, uint8_t* dst) {
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // A NaN: 0x7E00 | sign (the instruction keeps the payload's top bits).
    const __m256i u = _mm256_castps_si256(x);
    const __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F800000));
    const __m256i quiet = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
                                          _mm256_set1_epi32(0x7E00));
    const __m128i nan16 = narrow_mask_avx2(nan);
    h = _mm_blendv_epi8(h, narrow_avx2(quiet), nan16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
  f32_to_f16_scalar(src + i, count - i, dst + 2 * i);
}

// --- AVX-512 (F, BW, VL, BF16) + F16C: 16 lanes ---
// GCC 12 warns "'__Y' may be used uninitialized" inside its own AVX-512 headers (their unmasked
// intrinsics pass _mm512_undefined_* as the unused merge source: GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define ALLOY_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,f16c")))

ALLOY_AVX512 void bf16_to_f32_avx512(const uint8_t* src, size_t count, float* dst) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
    const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(w));
  }
  bf16_to_f32_scalar(src + 2 * i, count - i, dst + i);
}

ALLOY_AVX512 void f16_to_f32_avx512(const uint8_t* src, size_t count, float* dst) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
  }
  f16_to_f32_scalar(src + 2 * i, count - i, dst + i);
}

ALLOY_AVX512 void f32_to_bf16_avx512(const float* src, size_t count, uint8_t* dst) {
  size_t i = 0;
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  for (; i + 16 <= count; i += 16) {
    const __m512 x = _mm512_loadu_ps(src + i);
    const __m512i u = _mm512_castps_si512(x);
    __m256i h = (__m256i)_mm512_cvtneps_pbh(x);  // round to nearest even
    const __m512i magnitude = _mm512_and_si512(u, abs_mask);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7F800000));
    h = _mm256_mask_mov_epi16(h, nan, _mm256_set1_epi16(0x7FC0));
    // Subnormal inputs (exponent 0, not zero): the instruction flushes them; round them as scalar.
    const __mmask16 subnormal = _mm512_mask_cmplt_epi32_mask(_mm512_test_epi32_mask(u, abs_mask), magnitude,
                                                             _mm512_set1_epi32(0x00800000));
    if (subnormal != 0) {
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      const __m512i rounded =
          _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
      h = _mm256_mask_mov_epi16(h, subnormal, _mm512_cvtepi32_epi16(rounded));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * i), h);
  }
  f32_to_bf16_scalar(src + i, count - i, dst + 2 * i);
}

ALLOY_AVX512 void f32_to_f16_avx512(const float* src, size_t count, uint8_t* dst) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 x = _mm512_loadu_ps(src + i);
    __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    if (nan != 0) {
      const __m512i quiet = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
                                            _mm512_set1_epi32(0x7E00));
      h = _mm256_mask_mov_epi16(h, nan, _mm512_cvtepi32_epi16(quiet));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * i), h);
  }
  f32_to_f16_scalar(src + i, count - i, dst + 2 * i);
}

#endif  // x86-64

struct Kernels {
  void (*bf16_to_f32)(const uint8_t*, size_t, float*);
  void (*f16_to_f32)(const uint8_t*, size_t, float*);
  void (*f32_to_bf16)(const float*, size_t, uint8_t*);
  void (*f32_to_f16)(const float*, size_t, uint8_t*);
};

const Kernels& kernels(SimdPath path) {
  static const Kernels scalar{bf16_to_f32_scalar, f16_to_f32_scalar, f32_to_bf16_scalar, f32_to_f16_scalar};
#ifdef ALLOY_X86_SIMD
  static const Kernels avx2{bf16_to_f32_avx2, f16_to_f32_avx2, f32_to_bf16_avx2, f32_to_f16_avx2};
  static const Kernels avx512{bf16_to_f32_avx512, f16_to_f32_avx512, f32_to_bf16_avx512, f32_to_f16_avx512};
  if (path == SimdPath::kAvx512 && simd_path_supported(path)) return avx512;
  if (path == SimdPath::kAvx2 && simd_path_supported(path)) return avx2;
#endif
  (void)path;
  return scalar;
}

}  // namespace

const char* simd_path_name(SimdPath path) {
  switch (path) {
    case SimdPath::kAvx512: return "avx512";
    case SimdPath::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool simd_path_supported(SimdPath path) {
#ifdef ALLOY_X86_SIMD
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (clang's __builtin_cpu_supports does not know "f16c"); the AVX state
  // being enabled by the OS is part of __builtin_cpu_supports("avx2").
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && f16c;
  if (path == SimdPath::kAvx2) return avx2;
  if (path == SimdPath::kAvx512) {
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }
#endif
  return path == SimdPath::kScalar;
}

SimdPath best_simd_path() {
  static const SimdPath best = simd_path_supported(SimdPath::kAvx512) ? SimdPath::kAvx512
                               : simd_path_supported(SimdPath::kAvx2) ? SimdPath::kAvx2
                                                                      : SimdPath::kScalar;
  return best;
}

void bf16_to_f32_with(SimdPath path, const uint8_t* src, size_t count, float* dst) {
  kernels(path).bf16_to_f32(src, count, dst);
}
void f16_to_f32_with(SimdPath path, const uint8_t* src, size_t count, float* dst) {
  kernels(path).f16_to_f32(src, count, dst);
}
void f32_to_bf16_with(SimdPath path, const float* src, size_t count, uint8_t* dst) {
  kernels(path).f32_to_bf16(src, count, dst);
}
void f32_to_f16_with(SimdPath path, const float* src, size_t count, uint8_t* dst) {
  kernels(path).f32_to_f16(src, count, dst);
}

}  // namespace alloy::detail

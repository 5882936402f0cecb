// The task-arithmetic family's combine of bf16 rows written for AVX-512 (x86-64-v4): every step of
// an element in registers, 16 elements at a time. Its own file because it is compiled for one
// instruction set and chosen at run time.
//
// The loops of task_arithmetic_family.cpp's Combiner run one step at a time over blocks of 256
// elements held on the stack (each loop vectorises on its own, and the same code serves every
// instruction set and dtype). On a 1 GB TIES merge that combine was a third of the CPU time: each
// of its ~20 loops stores and reloads its block, and bf16's round-to-nearest-even carries its NaN
// test at every one of the ~10 roundings of an element. Here the element's chain stays in
// registers, eight groups of 16 elements side by side, the roundings in the middle of it leave
// the NaN test out (see the .cpp for why that gives the same bits), the tie test of a cut is left
// out in the calls that hold none of its ties, the consensus's divisor is looked up by the set of
// agreeing models, and the roundings a power-of-two weight or divisor makes exact are left out
// where they would change nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparsify.h"

namespace alloy::detail {

// One model's contribution to the combine: its input rows (the whole-tensor form's float32
// values; unused by the bf16 kernel, which takes rows of bits), its mask rule and its weight
// wD(weight).
struct TaskVectorInput {
  const float* x;
  DeltaMask mask;
  float weight;
};

// The combine's options, the same for every element (task_arithmetic_family.cpp, Combiner).
struct TaskVectorCombine {
  bool consensus = false;      // TIES sign election and disjoint sum
  bool normalize = false;      // divide by the weights that took part (or plain_divisor)
  bool scaled = false;         // lambda != 1: multiply by lambda
  float lambda = 1.0f;         // wD(lambda)
  float plain_divisor = 1.0f;  // the divisor without consensus
};

// The most models the AVX-512 kernel combines (their values are held in registers).
inline constexpr size_t kMaxCombineLanesModels = 8;

// Whether combine_task_vectors_bf16_avx512 can run here: an x86-64-v4 CPU and at most
// kMaxCombineLanesModels models.
bool can_combine_task_vectors_avx512(size_t models);

// out[0, len) = the combine of output elements [first, first + len): from base[0, len) and
// xs[m][0, len) (bf16 bits) for the models of inputs[0, count), each element
//   v_m = rnd(rnd(sparsified(rnd(x_m - base)) [* ratio_m]) * w_m),
//   mixed = sum of v_m (consensus: those whose sign agrees with rnd(sum v_m)'s, divided by the
//           rounded sum of their weights when normalizing), out = rnd(base + rnd(mixed...)),
// bit for bit as Combiner<RoundBF16>::combine_bf16_bits. Returns how many outputs are NaN or
// infinite. Only where can_combine_task_vectors_avx512(count).
size_t combine_task_vectors_bf16_avx512(const TaskVectorInput* inputs, size_t count,
                                        const TaskVectorCombine& options, const uint16_t* base,
                                        const uint16_t* const* xs, size_t first, size_t len,
                                        uint16_t* out);

}  // namespace alloy::detail

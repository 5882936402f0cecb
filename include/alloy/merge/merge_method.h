// alloy/merge/merge_method.h: the interface every merge method implements, and the method registry.
//
// A method is one small unit registered by name (lib/method_<name>.cpp) with its declared
// parameters and defaults, as in mergekit. The executor resolves every parameter for one output
// tensor (alloy/merge/recipe.h), loads each source tensor into float32 buffers holding values already
// representable in the compute dtype D (the recipe's `dtype`, else the stored dtype), crops them
// as the method's crop policy says, and calls merge(). The method writes float32 values that are
// representable in D (it applies rnd(), alloy::round_to, after each operation as mergekit's torch
// code does; see docs/methods.md); the executor then converts them to the output dtype.
//
// Element-wise methods (linear, slerp, task_arithmetic without sparsification) also have a chunked
// form (ChunkedMerge, MergeMethod::chunked): the executor then never builds whole-tensor float32
// buffers; it converts each fixed chunk of every source into small per-thread scratch, merges it
// and stores the chunk's output bytes (lib/merge/executor.cpp, docs/performance.md). Both forms
// run the same element code and give the same bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/dtype.h"

namespace alloy {

struct MethodParameter {
  std::string name;
  bool per_model = false;               // true: set per source model (weight, density, ...)
  std::optional<double> default_value;  // nullopt + required=false: optional, may stay unset
  bool required = false;
  // Every value the recipe gives (each scalar, gradient point and filter value) must be finite
  // and inside [lowest, highest]; checked when the recipe is parsed, before any tensor is read.
  double lowest = -std::numeric_limits<double>::infinity();
  double highest = std::numeric_limits<double>::infinity();
};

// How sources with differing shapes (embeddings, lm_head) are reconciled before merging.
enum class CropPolicy {
  kCommonPrefix,  // linear, slerp, nuslerp, model_stock: the common top-left sub-tensor of all
  kToBase,        // task-arithmetic family: each source cropped to the base shape; for tensors
                  // other than embeddings/lm_head a mismatching source is skipped
  kNone,          // passthrough: one source, no reconciliation
};

struct MergeSource {
  const float* values = nullptr;            // numel(shape) float32 values, representable in D
  std::map<std::string, double> params;     // resolved per-model parameters; absent = unset
  bool is_base = false;
  std::string model;                        // model path, for messages
};

struct MergeContext {
  std::string tensor_name;                  // output tensor name, for messages and seeding
  DType compute_dtype = DType::F32;         // D
  std::vector<uint64_t> shape;              // shape of every source (after cropping) and output
  std::vector<MergeSource> sources;         // in mergekit's source order
  int base_index = -1;                      // index into sources, -1 without a base model
  std::map<std::string, double> params;     // resolved method-level parameters (t, normalize, ...)
  uint64_t seed = 0;                        // for random methods: from --random-seed and the name
  uint64_t numel() const;
};

// The chunked form of a merge of one tensor, for methods whose output element i depends only on
// element i of each source and on per-tensor scalars. Made by MergeMethod::chunked() from the
// context and its parameters; then, over the fixed chunks [c * kDefaultGrain, (c + 1) *
// kDefaultGrain) of the tensor (alloy/core/parallel.h):
//   0. prepare() once, with a loader of any element range of any source: the streaming passes of
//      the sparsified task-arithmetic methods (TIES, DARE, breadcrumbs, DELLA) build their masks
//      and rescale factors there, reading the sources range by range (lib/merge/methods/sparsify.h);
//   1. if sum_count() > 0, chunk_sums() for every chunk (concurrently); the caller adds the partial
//      sums in chunk order, starting from 0.0, and passes the totals to set_sums() once;
//   2. merge_chunk() for every chunk (concurrently).
// The chunking and the order of the combine are fixed, so the sums, and the result, do not depend
// on the number of threads. sources[k] points at the chunk's first element of source k (its values
// representable in D, as in MergeSource).
// Reads elements [begin, begin + len) of source k into dst as float32 values representable in D.
// Called concurrently; never throws (a read error is recorded and rethrown after prepare()).
using SourceRangeLoader = std::function<void(size_t k, uint64_t begin, size_t len, float* dst)>;
// Elements [begin, begin + len) of source k as bfloat16 bits: a pointer to them, in memory the
// caller holds or in `scratch` (room for len values) after reading them. Offered only where every
// source is bfloat16 with the tensor's shape and the compute dtype is bfloat16, so that the
// SourceRangeLoader's float32 rows are exactly these bits widened. Concurrent; never throws (a
// read error is recorded, and scratch comes back zero-filled).
using SourceBitsLoader =
    std::function<const uint16_t*(size_t k, uint64_t begin, size_t len, uint16_t* scratch)>;

class ChunkedMerge {
 public:
  virtual ~ChunkedMerge() = default;
  // Whole-tensor work done before the chunks, through `load` (may be called again for another
  // tensor's merge object; not concurrently). Throws Error naming the tensor on bad parameters.
  virtual void prepare(const SourceRangeLoader& /*load*/) {}
  // prepare() where the sources' bf16 bits are on offer (SourceBitsLoader): a merge whose passes
  // can read the bits skips converting every element to float32 first. Gives what prepare(load)
  // gives; the default calls it.
  virtual void prepare_bf16(const SourceRangeLoader& load, const SourceBitsLoader& /*bits*/) {
    prepare(load);
  }
  // Whether prepare() reads the sources through `load` (the sparsified task-arithmetic methods'
  // selection and L1 passes): the executor then holds a tensor's sources in memory when they fit
  // (detail::held_source_bytes), so that prepare() and the chunks read them from the file once.
  virtual bool prepare_reads_sources() const { return false; }
  // How many double sums over the whole tensor the merge needs before its first output element
  // (slerp: 3, the squared norms and the dot product); 0 when none.
  virtual size_t sum_count() const { return 0; }
  // Writes the chunk's sum_count() partial sums to partial.
  virtual void chunk_sums(const float* const* /*sources*/, size_t /*len*/, double* /*partial*/) const {}
  virtual void set_sums(const double* /*sums*/) {}
  // Writes out[0, len), the output elements [begin, begin + len); returns how many of them are NaN
  // or infinite (the caller refuses the tensor then).
  virtual size_t merge_chunk(const float* const* sources, size_t begin, size_t len,
                             float* out) const = 0;

  // Steps 1 and 2 on bfloat16 bits, for a tensor whose sources, compute dtype and output dtype are
  // all bfloat16: the executor hands over the sources' bytes as read and takes the output's bytes,
  // with no float32 rows in between (converting them in and out cost as much as a linear merge's
  // arithmetic). Each gives the bits of its float32 form: a bf16 value is the float32 with a zero
  // low half, and merge_chunk's outputs, rounded to bf16, are stored by dropping that zero half
  // (NaN as 0x7FC0 either way). merges_bf16(): whether the merge has these forms; the executor
  // calls them only then (the defaults throw std::logic_error).
  virtual bool merges_bf16() const { return false; }
  virtual void chunk_sums_bf16(const uint16_t* const* sources, size_t len, double* partial) const;
  // chunk_sums_bf16 of two chunks of the same length at once (a and b: each chunk's sources),
  // writing the same doubles to partial_a and partial_b; a merge whose sums are bound by their
  // chains of additions runs the two chunks' chains side by side. The default calls
  // chunk_sums_bf16 twice.
  virtual void chunk_pair_sums_bf16(const uint16_t* const* a, const uint16_t* const* b, size_t len,
                                    double* partial_a, double* partial_b) const {
    chunk_sums_bf16(a, len, partial_a);
    chunk_sums_bf16(b, len, partial_b);
  }
  virtual size_t merge_chunk_bf16(const uint16_t* const* sources, size_t begin, size_t len, uint16_t* out) const;
};

// Step 1's combine: adds the per-chunk partial sums (sum_count() values per chunk, chunk after
// chunk) in chunk order, starting from 0.0, and passes the totals to merge.set_sums(). Every runner
// of a ChunkedMerge (run_chunked, the executor, the assay's rebuild check) adds them this way, so
// their results are the same bits. A merge without sums (sum_count() == 0) gets no call.
void set_sums_in_chunk_order(ChunkedMerge& merge, const std::vector<double>& partial);

// Runs `merge` over whole-tensor buffers (ctx.sources[k].values) into out, as the executor runs it
// over chunks: the merge() of a method that has a chunked form. Throws kNonFinite naming the tensor
// and `method` when an output value is NaN or infinite.
// `grain`: the length of the chunks of the merge (not of the sums pass, which is fixed); changes no
// bit of the result (tests set small odd values).
void run_chunked(ChunkedMerge& merge, const MergeContext& ctx, const char* method, float* out,
                 size_t grain = 0);

class MergeMethod {
 public:
  virtual ~MergeMethod() = default;
  virtual std::string_view name() const = 0;
  virtual std::vector<MethodParameter> parameters() const = 0;
  virtual bool requires_base_model() const { return false; }
  virtual CropPolicy crop_policy() const { return CropPolicy::kCommonPrefix; }
  // The dtype the merge's result has in mergekit when the recipe sets no out_dtype: the compute
  // dtype, except for a method whose torch code promotes it (arcee_fusion multiplies by a float32
  // mask, so its tensors are float32 although config.json keeps the compute dtype's name).
  virtual DType result_dtype(DType compute) const { return compute; }
  // Writes numel() values to out. Throws Error naming ctx.tensor_name on bad parameters.
  virtual void merge(const MergeContext& ctx, float* out) const = 0;
  // True when merge() gives the same bits with `out` equal to sources[0].values: element i of out
  // is written only after the last read of element i of every source, and no source element is
  // read after its index in out has been written. The executor then merges in place and holds one
  // whole-tensor float32 buffer fewer (see docs/performance.md).
  virtual bool merges_in_place() const { return false; }
  // The chunked form of this tensor's merge, or nullptr when the method (or these parameters:
  // TIES or DARE sparsification, for example) needs whole tensors. ctx is complete except that the
  // sources' `values` may be null. Throws Error naming ctx.tensor_name on bad parameters, as merge()
  // does.
  virtual std::unique_ptr<ChunkedMerge> chunked(const MergeContext& /*ctx*/) const { return nullptr; }
};

// The registry. find_merge_method returns nullptr for an unknown name.
const MergeMethod* find_merge_method(std::string_view name);
std::vector<std::string> merge_method_names();  // sorted

}  // namespace alloy

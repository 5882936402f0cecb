// The generalized task-arithmetic family (mergekit/merge_methods/generalized_task_arithmetic.py):
// task vectors delta_i = x_i - base, each sparsified with its own density, weighted, optionally
// combined by TIES sign consensus, optionally divided by the weights that took part, scaled by
// lambda and added back to the base. The eight registered methods are configurations of it:
//
//   method            consensus  sparsification      normalize  rescale
//   task_arithmetic   -          -                   false      false
//   ties              sum        magnitude           true       false
//   dare_ties         sum        random              false      true
//   dare_linear       -          random              false      true
//   breadcrumbs       -          magnitude_outliers  false      false
//   breadcrumbs_ties  sum        magnitude_outliers  false      false
//   della             sum        della_magprune      true       true
//   della_linear      -          della_magprune      false      true
//
// Papers: task arithmetic, Ilharco et al. 2022, arXiv:2212.04089; TIES, Yadav et al. 2023,
// arXiv:2306.01708; DARE, Yu et al. 2023, arXiv:2311.03099; Model Breadcrumbs, Davari &
// Belilovsky 2023, arXiv:2312.06795; DELLA, Deep et al. 2024, arXiv:2406.11617.
//
// Memory: no copy of any task vector is kept. Each model's sparsification is a mask rule
// (sparsify.h): two rank cuts for the magnitude selections, a bit mask for the random ones (n/8
// bytes, thread_local scratch); the combine pass recomputes rnd(x_i - base) per element, which is
// cheaper than storing it, applies the rule to it, and works on blocks so that its loops vectorise.
//
// Streaming: every method of the family has a chunked form, sparsified or not. Its prepare()
// builds each model's mask rule and rescale factor from ranges of the sources that the executor
// reads from the input bytes (sparsify.h: histogram, boundary and L1 passes over runs of
// stream_grain() elements, and the one chunk that holds a cut's last kept tie), then the chunks
// combine as for task_arithmetic; no whole-tensor float32 buffer is built. merge() (whole tensors)
// remains for the executor's whole-tensor path (embeddings remapped by a tokenizer spec, dtypes
// without a chunk conversion) and as the reference the streaming form is tested against bit for bit
// (tests/merge/test_streaming_ties.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "alloy/core/parallel.h"
#include "method_util.h"
#include "sparsify.h"
#include "task_vector_combine.h"

namespace alloy::detail {
namespace {

struct FamilyConfig {
  const char* name;
  bool sum_consensus;
  Sparsification sparsification;
  bool default_normalize;
  bool default_rescale;
};

thread_local std::vector<std::vector<uint64_t>> t_mask_words;  // one mask per model, reused

class TaskArithmeticMethod final : public MergeMethod {
 public:
  explicit TaskArithmeticMethod(FamilyConfig config) : config_(config) {}
  std::string_view name() const override { return config_.name; }
  bool requires_base_model() const override { return true; }
  CropPolicy crop_policy() const override { return CropPolicy::kToBase; }
  std::vector<MethodParameter> parameters() const override {
    std::vector<MethodParameter> p = {
        {"weight", true, std::nullopt, true},
        {"density", true, 1.0, false, 0.0, 1.0},  // a share of the task vector's entries
    };
    if (config_.sparsification == Sparsification::kMagnitudeOutliers)
      p.push_back({"gamma", true, 0.01, false, 0.0, 1.0});
    if (config_.sparsification == Sparsification::kDellaMagprune)
      p.push_back({"epsilon", true, 0.15, false, 0.0, 1.0});
    p.push_back({"int8_mask", false, 0.0, false});  // accepted; changes no bit of the result
    p.push_back({"normalize", false, config_.default_normalize ? 1.0 : 0.0, false});
    p.push_back({"rescale", false, config_.default_rescale ? 1.0 : 0.0, false});
    p.push_back({"lambda", false, 1.0, false});
    return p;
  }

  // The masks are built before any output is written; combine() reads each block of every
  // source before it writes that block.
  bool merges_in_place() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    const size_t base_index = require_base(ctx, config_.name);
    const float* base = ctx.sources[base_index].values;
    const size_t n = ctx.numel();
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.empty()) {  // mergekit returns the base when there is no task vector
      copy_source(ctx, base_index, out);
      return;
    }
    const Rounder rounder{ctx.compute_dtype};

    std::vector<std::vector<uint64_t>>& mask_words = t_mask_words;
    std::vector<TaskVectorInput> inputs;
    TaskVectorSet set{base, {}, others.size(), n, ctx.compute_dtype, ctx.shape, {}, {}};
    std::vector<SparsifyOptions> options;
    std::vector<std::string> models;
    for (size_t m = 0; m < others.size(); ++m) {
      const MergeSource& source = ctx.sources[others[m]];
      const float weight = rounder.param(require_source_param(ctx, source, "weight"));
      inputs.push_back({source.values, DeltaMask{}, weight});
      set.xs.push_back(source.values);
      options.push_back(sparsify_options(ctx, others[m]));
      models.push_back(source.model);
    }
    const std::vector<DeltaMask> masks =
        build_masks(set, options, mask_words, ctx.tensor_name, models);
    for (size_t m = 0; m < others.size(); ++m) inputs[m].mask = masks[m];
    with_rounding(ctx.compute_dtype, [&](auto rnd) {
      const Combiner<decltype(rnd)> combiner(ctx, config_, base_index, std::move(inputs));
      parallel_for_checked(ctx, config_.name, n, [&](size_t begin, size_t end) {
        return combiner.combine(base + begin, combiner.inputs_at(begin).data(), begin,
                                end - begin, out + begin);
      });
    });
  }

  // The chunked form, for every method and density: prepare() streams the sparsification, then
  // each output element needs only that element of every source and the masks.
  // Defined after Chunk: clang instantiates the generic lambda where it stands.
  std::unique_ptr<ChunkedMerge> chunked(const MergeContext& ctx) const override;

 private:
  // The sparsification of source `index` (a non-base source of ctx).
  SparsifyOptions sparsify_options(const MergeContext& ctx, size_t index) const {
    const MergeSource& source = ctx.sources[index];
    SparsifyOptions options;
    options.method = config_.sparsification;
    options.rescale = method_flag(ctx, "rescale", config_.default_rescale);
    options.density = source_param(source, "density", 1.0);
    options.gamma = source_param(source, "gamma", 0.01);
    options.epsilon = source_param(source, "epsilon", 0.15);
    options.seed = mix_bits(ctx.seed ^ mix_bits(index + 1));  // one stream per source position
    return options;
  }

  // The combine of the task vectors for a range of elements, shared by merge() (whole tensors,
  // with masks) and the chunked form (no masks).
  template <class R>
  class Combiner {
   public:
    Combiner(const MergeContext& ctx, const FamilyConfig& config, size_t base_index,
             std::vector<TaskVectorInput> inputs)
        : inputs_(std::move(inputs)), base_index_(base_index) {
      const R rnd;
      options_.consensus = config.sum_consensus;
      options_.normalize = method_flag(ctx, "normalize", config.default_normalize);
      const double lambda = method_param(ctx, "lambda", 1.0);
      options_.scaled = lambda != 1.0;
      options_.lambda = rnd.param(lambda);
      // Without consensus the divisor is the same everywhere: rnd(sum of the weights), or 1 when
      // its magnitude is below 1e-8.
      float weight_sum = 0.0f;
      for (const auto& in : inputs_) weight_sum += in.weight;
      weight_sum = rnd(weight_sum);
      options_.plain_divisor = std::fabs(weight_sum) < rnd.param(1e-8) ? 1.0f : weight_sum;
      lanes_ = std::is_same_v<R, RoundBF16> && can_combine_task_vectors_avx512(inputs_.size());
    }
    const std::vector<TaskVectorInput>& inputs() const { return inputs_; }
    void set_mask(size_t m, DeltaMask mask) { inputs_[m].mask = mask; }
    size_t base_index() const { return base_index_; }
    // inputs()[m].x + begin, for every model m.
    std::vector<const float*> inputs_at(size_t begin) const {
      std::vector<const float*> xs;
      for (const auto& in : inputs_) xs.push_back(in.x + begin);
      return xs;
    }

    // Writes out[0, len), output elements [first, first + len), from base[0, len) and xs[m][0,
    // len); returns the number of non-finite values written. One clone per instruction set
    // (ALLOY_ELEMENT_KERNEL); combine_bf16_bits: bf16 rows in, bf16 bits out
    // (ChunkedMerge::merge_chunk_bf16).
    ALLOY_ELEMENT_KERNEL size_t combine(const float* base, const float* const* xs, size_t first,
                                        size_t len, float* out) const {
      return combine_blocks(base, xs, first, len, out);
    }
    // The same on bf16 rows: in registers where the CPU has AVX-512 (task_vector_combine.h),
    // else combine_bf16_bits.
    size_t combine_bf16(const uint16_t* base, const uint16_t* const* xs, size_t first, size_t len,
                        uint16_t* out) const {
      if (lanes_) {
        return combine_task_vectors_bf16_avx512(inputs_.data(), inputs_.size(), options_, base, xs,
                                                first, len, out);
      }
      return combine_bf16_bits(base, xs, first, len, out);
    }
    ALLOY_BF16_BITS_KERNEL size_t combine_bf16_bits(const uint16_t* base, const uint16_t* const* xs, size_t first,
                                                    size_t len, uint16_t* out) const {
      return combine_blocks(base, xs, first, len, out);
    }

   private:
    // combine's blocks of elements; every loop runs over the elements of the block (models outer),
    // so the loops vectorise, and the float32 sums still add the models in source order. Rows of
    // float32 values or of bf16 bits (source_value); bf16 outputs are combined into a float32
    // block on the stack and stored from it.
    template <class In, class Out>
    [[gnu::always_inline]] inline size_t combine_blocks(const In* base, const In* const* xs, size_t first,
                                                        size_t len, Out* out) const {
      const R rnd;
      constexpr size_t kBlock = 256;
      const size_t count = inputs_.size();
      const bool consensus = options_.consensus, normalize = options_.normalize,
                 scaled = options_.scaled;
      const float lambda_d = options_.lambda, plain_divisor = options_.plain_divisor;
      // v_m for the block, model-major: on the stack for up to kInlineModels models. Nothing is
      // zero-filled: each sum below starts as +0 + its first term (the same bits as adding to a
      // zeroed buffer, which cost a memset per buffer and block, 9% of the combine).
      constexpr size_t kInlineModels = 8;
      float inline_weighted[kInlineModels * kBlock];
      std::unique_ptr<float[]> many_weighted;
      if (count > kInlineModels) many_weighted.reset(new float[count * kBlock]);
      float* const weighted = count > kInlineModels ? many_weighted.get() : inline_weighted;
      float sign[kBlock], mixed[kBlock], divisor[kBlock], merged[kBlock];
      uint32_t keep[kBlock];  // a model's mask rule for the block, as all-ones / zero words
      size_t bad = 0;
      for (size_t b0 = 0; b0 < len; b0 += kBlock) {
        const size_t block = std::min(kBlock, len - b0);
        const In* b = base + b0;
        // v_m = rnd(sparsified(delta_m) * wD(w_m)), delta_m = rnd(x_m - base).
        for (size_t m = 0; m < count; ++m) {
          const TaskVectorInput& in = inputs_[m];
          const In* x = xs[m] + b0;
          float* v = weighted + m * kBlock;
          for (size_t j = 0; j < block; ++j) v[j] = rnd(source_value(x, j) - source_value(b, j));
          if (in.mask.active) {
            in.mask.keep_words(v, first + b0, block, keep);
            for (size_t j = 0; j < block; ++j) v[j] = and_bits(v[j], keep[j]);
            if (in.mask.rescaled) {
              const float ratio = in.mask.ratio;
              for (size_t j = 0; j < block; ++j) v[j] = rnd(v[j] * ratio);
            }
          }
          const float w = in.weight;
          for (size_t j = 0; j < block; ++j) v[j] = rnd(v[j] * w);
        }
        if (consensus) {
          // The elected sign is that of rnd(sum_m v_m) (zero votes +); an entry takes part when
          // v_m * sign > 0, so zeros (dropped entries, weight-0 models) never do. Adding +0 for
          // the others changes no bit: the sums start at +0 and never become -0.
          for (size_t j = 0; j < block; ++j) sign[j] = 0.0f + weighted[j];
          for (size_t m = 1; m < count; ++m) {
            const float* v = weighted + m * kBlock;
            for (size_t j = 0; j < block; ++j) sign[j] += v[j];
          }
          for (size_t j = 0; j < block; ++j) sign[j] = rnd(sign[j]) >= 0.0f ? 1.0f : -1.0f;
          for (size_t m = 0; m < count; ++m) {
            const float* v = weighted + m * kBlock;
            const float w = inputs_[m].weight;
            if (m == 0) {
              for (size_t j = 0; j < block; ++j) {
                const bool agrees = v[j] * sign[j] > 0.0f;
                mixed[j] = 0.0f + keep_or_zero(v[j], agrees);
                divisor[j] = 0.0f + keep_or_zero(w, agrees);
              }
              continue;
            }
            for (size_t j = 0; j < block; ++j) {
              const bool agrees = v[j] * sign[j] > 0.0f;
              mixed[j] += keep_or_zero(v[j], agrees);
              divisor[j] += keep_or_zero(w, agrees);
            }
          }
          for (size_t j = 0; j < block; ++j) {
            const float d = rnd(divisor[j]);
            divisor[j] = d == 0.0f ? 1.0f : d;
          }
        } else {
          for (size_t j = 0; j < block; ++j) mixed[j] = 0.0f + weighted[j];
          for (size_t m = 1; m < count; ++m) {
            const float* v = weighted + m * kBlock;
            for (size_t j = 0; j < block; ++j) mixed[j] += v[j];
          }
          for (size_t j = 0; j < block; ++j) divisor[j] = plain_divisor;
        }
        // The same operations per element as rnd(b + rnd(rnd(rnd(mixed) / divisor) * lambda)),
        // one loop per step so that each vectorises (a branch inside the loop kept it scalar).
        float* o = merged;
        if constexpr (std::is_same_v<Out, float>) o = out + b0;
        for (size_t j = 0; j < block; ++j) mixed[j] = rnd(mixed[j]);
        if (normalize) {
          for (size_t j = 0; j < block; ++j) mixed[j] = rnd(mixed[j] / divisor[j]);
        }
        if (scaled) {
          for (size_t j = 0; j < block; ++j) mixed[j] = rnd(mixed[j] * lambda_d);
        }
        for (size_t j = 0; j < block; ++j) o[j] = rnd(source_value(b, j) + mixed[j]);
        bad += chunk_non_finite(o, block);
        if constexpr (std::is_same_v<Out, uint16_t>) store_rounded_bf16(o, block, out + b0);
      }
      return bad;
    }

    std::vector<TaskVectorInput> inputs_;
    size_t base_index_;
    TaskVectorCombine options_;  // the same for every element; read by both kernels
    bool lanes_ = false;         // combine_bf16 runs the AVX-512 kernel
  };

  template <class R>
  class Chunk final : public ChunkedMerge {
   public:
    Chunk(Combiner<R> combiner, std::vector<size_t> others, const MergeContext& ctx,
          std::vector<SparsifyOptions> options)
        : combiner_(std::move(combiner)),
          others_(std::move(others)),
          options_(std::move(options)),
          tensor_(ctx.tensor_name),
          n_(ctx.numel()),
          dtype_(ctx.compute_dtype),
          shape_(ctx.shape) {
      for (size_t m : others_) models_.push_back(ctx.sources[m].model);
    }
    // Each model's mask and rescale factor, streamed through `load` (sparsify.h; its passes read
    // the base once for all models). The masks live in this (the calling) thread's t_mask_words
    // until its next tensor.
    void prepare(const SourceRangeLoader& load) override { prepare_from(load, nullptr); }
    // The selection and L1 passes on the sources' bf16 bits (TaskVectorSet::bits).
    void prepare_bf16(const SourceRangeLoader& load, const SourceBitsLoader& bits) override {
      prepare_from(load, dtype_ == DType::BF16 ? &bits : nullptr);
    }
    void prepare_from(const SourceRangeLoader& load, const SourceBitsLoader* bits) {
      const size_t count = others_.size(), base = combiner_.base_index();
      const auto source_index = [&](size_t source) {
        return source == count ? base : others_[source];
      };
      TaskVectorSet set{nullptr, {}, count, n_, dtype_, shape_, {}, {}};
      set.load = [&](size_t source, size_t begin, size_t len, float* dst) {
        load(source_index(source), begin, len, dst);
      };
      if (bits != nullptr) {
        set.bits = [&](size_t source, size_t begin, size_t len, uint16_t* scratch) {
          return (*bits)(source_index(source), begin, len, scratch);
        };
      }
      const std::vector<DeltaMask> masks =
          build_masks(set, options_, t_mask_words, tensor_, models_);
      for (size_t m = 0; m < count; ++m) combiner_.set_mask(m, masks[m]);
    }
    bool prepare_reads_sources() const override { return masks_read_sources(options_); }
    size_t merge_chunk(const float* const* sources, size_t begin, size_t len,
                       float* out) const override {
      const float* base = sources[combiner_.base_index()];
      if (others_.empty()) {  // mergekit returns the base when there is no task vector
        if (base != out) std::memcpy(out, base, len * sizeof(float));
        return chunk_non_finite(out, len);
      }
      return with_others(sources, [&](const float* const* x) { return combiner_.combine(base, x, begin, len, out); });
    }
    // Without task vectors the base passes through merge_chunk alone.
    bool merges_bf16() const override { return std::is_same_v<R, RoundBF16> && !others_.empty(); }
    size_t merge_chunk_bf16(const uint16_t* const* sources, size_t begin, size_t len, uint16_t* out) const override {
      if (!merges_bf16()) return ChunkedMerge::merge_chunk_bf16(sources, begin, len, out);
      const uint16_t* base = sources[combiner_.base_index()];
      return with_others(sources, [&](const uint16_t* const* x) {
        return combiner_.combine_bf16(base, x, begin, len, out);
      });
    }

   private:
    static constexpr size_t kMaxInline = 16;
    // fn(rows of the other models among `sources`, in others_' order), on the stack up to
    // kMaxInline models.
    template <class T, class Fn>
    size_t with_others(const T* const* sources, Fn&& fn) const {
      const T* inline_rows[kMaxInline];
      std::vector<const T*> many(others_.size() > kMaxInline ? others_.size() : 0);
      const T** x = many.empty() ? inline_rows : many.data();
      for (size_t m = 0; m < others_.size(); ++m) x[m] = sources[others_[m]];
      return fn(x);
    }
    Combiner<R> combiner_;
    std::vector<size_t> others_;
    std::vector<SparsifyOptions> options_;  // per model in others_
    std::string tensor_;
    std::vector<std::string> models_;
    size_t n_;
    DType dtype_;
    std::vector<uint64_t> shape_;
  };

  FamilyConfig config_;
};

std::unique_ptr<ChunkedMerge> TaskArithmeticMethod::chunked(const MergeContext& ctx) const {
  const size_t base_index = require_base(ctx, config_.name);
  const std::vector<size_t> others = non_base_sources(ctx);
  std::vector<TaskVectorInput> inputs;
  std::vector<SparsifyOptions> options;
  const Rounder rounder{ctx.compute_dtype};
  for (size_t m : others) {
    const MergeSource& source = ctx.sources[m];
    const float weight = rounder.param(require_source_param(ctx, source, "weight"));
    options.push_back(sparsify_options(ctx, m));
    inputs.push_back({nullptr, DeltaMask{}, weight});
  }
  return with_rounding(ctx.compute_dtype, [&](auto rnd) -> std::unique_ptr<ChunkedMerge> {
    return std::make_unique<Chunk<decltype(rnd)>>(
        Combiner<decltype(rnd)>(ctx, config_, base_index, std::move(inputs)), others, ctx,
        std::move(options));
  });
}

}  // namespace

std::vector<const MergeMethod*> task_arithmetic_family() {
  static const TaskArithmeticMethod methods[] = {
      TaskArithmeticMethod({"task_arithmetic", false, Sparsification::kNone, false, false}),
      TaskArithmeticMethod({"ties", true, Sparsification::kMagnitude, true, false}),
      TaskArithmeticMethod({"dare_ties", true, Sparsification::kRandom, false, true}),
      TaskArithmeticMethod({"dare_linear", false, Sparsification::kRandom, false, true}),
      TaskArithmeticMethod(
          {"breadcrumbs", false, Sparsification::kMagnitudeOutliers, false, false}),
      TaskArithmeticMethod(
          {"breadcrumbs_ties", true, Sparsification::kMagnitudeOutliers, false, false}),
      TaskArithmeticMethod({"della", true, Sparsification::kDellaMagprune, true, true}),
      TaskArithmeticMethod({"della_linear", false, Sparsification::kDellaMagprune, false, true}),
  };
  std::vector<const MergeMethod*> list;
  for (const auto& m : methods) list.push_back(&m);
  return list;
}

}  // namespace alloy::detail

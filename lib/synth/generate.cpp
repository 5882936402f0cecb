// Writing synthetic base models, fine-tunes and families (see alloy/synth/synth.h).
//
// Memory stays bounded by a few tensors: all TensorSpecs are declared to a ShardedWriter first,
// then each tensor is generated into buffers sized once for the largest tensor and reused (fresh
// allocations per tensor would page-fault on every tensor), and handed to a background thread that
// writes it while the next tensor is generated (two byte buffers alternate). The work inside a
// tensor is parallel over fixed chunks, so the bytes do not depend on the thread count.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")  // see synth_rng.cpp: no FMA, identical bytes everywhere
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <future>
#include <optional>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/model.h"
#include "alloy/core/parallel.h"
#include "alloy/synth/synth.h"
#include "alloy/core/writer.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

constexpr const char* kRngName = "alloy-synth-v1: splitmix64 (two rounds) + Box-Muller, float32";

// A buffer that grows but never shrinks, without zero-filling (the caller overwrites it).
template <class T>
class Buffer {
 public:
  T* get(size_t n) {
    if (n > capacity_) {
      data_.reset(new T[n]);
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

// Hands each finished tensor to a background thread that writes it while the caller generates the
// next one into the other byte buffer.
class WritePipeline {
 public:
  // `specs` sizes the progress reports (output.progress, called as each tensor is submitted).
  WritePipeline(ShardedWriter& writer, const std::vector<TensorSpec>& specs, const SynthOutput& output)
      : writer_(writer), progress_(output.progress) {
    for (const auto& spec : specs) {
      uint64_t n = 1;
      for (const uint64_t d : spec.shape) n *= d;
      total_bytes_ += n * dtype_bits(spec.dtype) / 8;
    }
  }
  ~WritePipeline() {
    if (pending_.valid()) pending_.wait();  // an exception is already on its way out
  }
  // A buffer of at least n bytes that no write is reading.
  uint8_t* buffer(size_t n) { return buffers_[current_].get(n); }
  // Writes the current buffer's first nbytes as tensor `name` in the background.
  void submit(const std::string& name, uint64_t nbytes) {
    drain();
    const uint8_t* data = buffers_[current_].get(nbytes);
    pending_ = std::async(std::launch::async, [this, name, data, nbytes] { writer_.write(name, data, nbytes); });
    current_ ^= 1;
    done_bytes_ += nbytes;
    if (progress_) progress_(done_bytes_, total_bytes_);
  }
  // Waits for the write in flight; rethrows its error.
  void drain() {
    if (pending_.valid()) pending_.get();
  }

 private:
  ShardedWriter& writer_;
  std::function<void(uint64_t, uint64_t)> progress_;
  uint64_t total_bytes_ = 0, done_bytes_ = 0;
  std::array<Buffer<uint8_t>, 2> buffers_;
  int current_ = 0;
  std::future<void> pending_;
};

uint64_t byte_size(uint64_t elements, DType dtype) { return elements * dtype_bits(dtype) / 8; }

void check_storable(DType dtype, const std::string& what) {
  if (dtype != DType::BF16 && dtype != DType::F16 && dtype != DType::F32) {
    throw Error(ErrorCode::kInvalidArgument,
                what + " has dtype " + dtype_name(dtype) + "; alloy-synth writes BF16, F16 or F32");
  }
}

void write_json(const fs::path& path, const nlohmann::json& value) { write_file_atomic(path, value.dump(2) + "\n"); }

// A small but valid tokenizers JSON (WordLevel over the vocabulary) and its companions.
void write_tokenizer_files(const fs::path& dir, int vocab) {
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  nlohmann::json vocab_map = nlohmann::json::object();
  for (int i = 0; i < vocab; ++i) vocab_map[i < 3 ? specials[i] : "tok" + std::to_string(i)] = i;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < std::min(vocab, 3); ++i) {
    added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  write_json(dir / "tokenizer.json",
             {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
              {"normalizer", nullptr}, {"pre_tokenizer", {{"type", "Whitespace"}}}, {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "WordLevel"}, {"vocab", vocab_map}, {"unk_token", "<unk>"}}}});
  nlohmann::json config = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"model_max_length", 2048},
                           {"clean_up_tokenization_spaces", false}};
  const char* roles[] = {"unk_token", "bos_token", "eos_token"};
  for (int i = 0; i < std::min(vocab, 3); ++i) config[roles[i]] = specials[i];
  write_json(dir / "tokenizer_config.json", config);
  nlohmann::json generation = {{"_from_model_config", true}, {"do_sample", false}};
  if (vocab > 2) generation.update({{"bos_token_id", 1}, {"eos_token_id", 2}});
  write_json(dir / "generation_config.json", generation);
}

nlohmann::json generator_record(const char* kind) {
  return {{"generator", "alloy-synth"}, {"version", ALLOY_VERSION}, {"rng", kRngName}, {"kind", kind}};
}

// A per-thread float buffer of one chunk (kDefaultGrain elements), reused for every chunk.
float* chunk_scratch() {
  static thread_local Buffer<float> scratch;
  return scratch.get(kDefaultGrain);
}

// The low-rank part L = U Vt of a fine-tune delta, U [rows, rank] and Vt [rank, cols] drawn from
// the fine-tune's streams; elements are computed on demand, in a fixed order (k = 0..rank-1).
class LowRankPart {
 public:
  LowRankPart(uint64_t seed, const std::string& name, uint64_t rows, uint64_t cols, uint64_t rank,
              Buffer<float>& factors)
      : rows_(rows), cols_(cols), rank_(rank) {
    u_ = factors.get((rows + cols) * rank);
    vt_ = u_ + rows * rank;
    synth_normal(seed, synth_stream_id("finetune.u:" + name), 0, rows * rank, u_);
    synth_normal(seed, synth_stream_id("finetune.v:" + name), 0, cols * rank, vt_);
  }

  // out[i - begin] = L[i / cols, i % cols] for flat indices i in [begin, end).
  void fill(uint64_t begin, uint64_t end, float* out) const {
    for (uint64_t i = begin; i < end;) {
      const uint64_t row = i / cols_, col = i % cols_;
      const uint64_t stop = std::min(end, (row + 1) * cols_);
      const uint64_t width = stop - i;
      const float* u = u_ + row * rank_;
      float* dst = out + (i - begin);
      const float* v0 = vt_ + col;
      for (uint64_t j = 0; j < width; ++j) dst[j] = u[0] * v0[j];
      for (uint64_t k = 1; k < rank_; ++k) {
        const float uk = u[k];
        const float* vk = vt_ + k * cols_ + col;
        for (uint64_t j = 0; j < width; ++j) dst[j] = dst[j] + uk * vk[j];
      }
      i = stop;
    }
  }

  // ||U Vt||_F^2 = sum_kl (U^T U)_kl (Vt Vt^T)_kl, without forming L (double, fixed order).
  double squared_norm() const {
    const auto gram = [&](const float* m, uint64_t count, bool rows_are_rank) {
      std::vector<double> g(rank_ * rank_, 0.0);
      for (uint64_t k = 0; k < rank_; ++k) {
        for (uint64_t l = 0; l < rank_; ++l) {
          double acc = 0;
          for (uint64_t i = 0; i < count; ++i) {
            const double a = rows_are_rank ? m[k * count + i] : m[i * rank_ + k];
            const double b = rows_are_rank ? m[l * count + i] : m[i * rank_ + l];
            acc += a * b;
          }
          g[k * rank_ + l] = acc;
        }
      }
      return g;
    };
    const auto gu = gram(u_, rows_, false), gv = gram(vt_, cols_, true);
    double total = 0;
    for (uint64_t i = 0; i < rank_ * rank_; ++i) total += gu[i] * gv[i];
    return total;
  }

 private:
  uint64_t rows_, cols_, rank_;
  float* u_ = nullptr;
  float* vt_ = nullptr;
};

void validate(const FineTuneOptions& o) {
  if (!(std::isfinite(o.relative_delta) && o.relative_delta >= 0)) {
    throw Error(ErrorCode::kInvalidArgument, "fine-tune: --delta must be a finite number >= 0");
  }
  if (!(o.sibling_correlation >= 0 && o.sibling_correlation < 1)) {
    throw Error(ErrorCode::kInvalidArgument, "fine-tune: --sibling-correlation must be in [0, 1)");
  }
  if (!(o.low_rank_fraction >= 0 && o.low_rank_fraction <= 1)) {
    throw Error(ErrorCode::kInvalidArgument, "fine-tune: --low-rank-fraction must be in [0, 1]");
  }
  if (o.rank < 1) throw Error(ErrorCode::kInvalidArgument, "fine-tune: --rank must be at least 1");
}

}  // namespace

namespace detail {
namespace {

// A uniform draw in [0, 1) per (seed, tensor): the normal of that stream through its CDF.
double shared_fraction_draw(uint64_t seed, const std::string& name) {
  float z = 0;
  synth_normal(seed, synth_stream_id("finetune.shared-fraction:" + name), 0, 1, &z);
  return std::min(0.5 * std::erfc(-double(z) / std::sqrt(2.0)), 1.0 - 1e-12);
}

}  // namespace

// Writes the weights of a fine-tune of `base` into `dir`. Per tensor, three passes over fixed
// chunks: (1) D and the sums ||base||^2, ||D||^2; (2) delta0 = a0 D + b0 L in place, and
// ||delta0||^2; (3) base + (target / ||delta0||) delta0, stored in the base's dtype. Memory: one
// float buffer and two output buffers of the largest tensor, plus U and V.
void write_fine_tune_weights(const Model& base, const fs::path& dir, const FineTuneOptions& options) {
  std::vector<TensorSpec> specs;
  uint64_t largest = 0, largest_bytes = 0;
  for (const auto& t : base.tensors()) {
    check_storable(t.info->dtype, base.path().string() + ": tensor '" + t.name() + "'");
    specs.push_back({t.name(), t.info->dtype, t.info->shape});
    largest = std::max(largest, t.info->numel());
    largest_bytes = std::max(largest_bytes, t.info->nbytes());
  }
  ShardedWriter writer(dir, specs, options.output.shard_bytes, {{"generator", "alloy-synth"}});
  WritePipeline pipeline(writer, specs, options.output);
  Buffer<float> delta_buffer, shared_buffer, factors;
  const double f = options.low_rank_fraction;
  const bool correlated = options.sibling_correlation > 0;
  struct Sums {
    double base = 0, other = 0, shared = 0;
  };
  const auto add = [](Sums a, const Sums& b) {
    return Sums{a.base + b.base, a.other + b.other, a.shared + b.shared};
  };
  for (const auto& t : base.tensors()) {
    const uint64_t n = t.info->numel();
    const DType dtype = t.info->dtype;
    const unsigned width = dtype_bits(dtype) / 8;
    const uint8_t* stored = t.data();
    const auto& shape = t.info->shape;
    std::optional<LowRankPart> low_rank;
    if (shape.size() == 2 && n > 0 && f > 0) {
      const uint64_t rank = std::min<uint64_t>({uint64_t(options.rank), shape[0], shape[1]});
      low_rank.emplace(options.seed, t.name(), shape[0], shape[1], rank, factors);
    }
    const bool dense = !low_rank || f < 1;
    const uint64_t dense_stream = synth_stream_id("finetune.dense:" + t.name());
    float* delta = delta_buffer.get(largest);
    float* shared = correlated ? shared_buffer.get(largest) : nullptr;
    const uint64_t shared_stream = synth_stream_id("finetune.shared:" + t.name());

    // Pass 1: ||base||^2, D with ||D||^2, and the siblings' shared direction with its norm.
    const Sums first = parallel_reduce(n, kDefaultGrain, Sums{}, [&](size_t b, size_t e) {
      Sums s;
      float* x = chunk_scratch();
      load_as_f32(dtype, stored + b * width, e - b, x);
      for (size_t i = 0; i < e - b; ++i) s.base += double(x[i]) * x[i];
      if (dense) {
        synth_normal(options.seed, dense_stream, b, e - b, delta + b);
        for (size_t i = b; i < e; ++i) s.other += double(delta[i]) * delta[i];
      }
      if (correlated) {
        synth_normal(options.shared_seed, shared_stream, b, e - b, shared + b);
        for (size_t i = b; i < e; ++i) s.shared += double(shared[i]) * shared[i];
      }
      return s;
    }, add);
    // ||a0 D||^2 : ||b0 L||^2 = (1 - f) : f (all of it to whichever part exists alone).
    const double low_norm2 = low_rank ? low_rank->squared_norm() : 0.0;
    const float a0 = dense && first.other > 0 ? float((low_rank ? std::sqrt(1 - f) : 1.0) / std::sqrt(first.other)) : 0.0f;
    const float b0 = low_rank && low_norm2 > 0 ? float((dense ? std::sqrt(f) : 1.0) / std::sqrt(low_norm2)) : 0.0f;

    // Pass 2: delta0 = a0 D + b0 L in place, and ||delta0||^2.
    const Sums second = parallel_reduce(n, kDefaultGrain, Sums{}, [&](size_t b, size_t e) {
      Sums s;
      float* l = chunk_scratch();
      if (low_rank) low_rank->fill(b, e, l);
      for (size_t i = b; i < e; ++i) {
        float v = dense ? a0 * delta[i] : 0.0f;
        if (low_rank) v = v + b0 * l[i - b];
        delta[i] = v;
        s.other += double(v) * v;
      }
      return s;
    }, add);
    const double target = options.relative_delta * std::sqrt(first.base);
    const double rho = correlated ? options.sibling_correlation * shared_fraction_draw(options.shared_seed, t.name())
                                  : 0.0;
    const float scale = second.other > 0 ? float(std::sqrt(1 - rho) * target / std::sqrt(second.other)) : 0.0f;
    const float shared_scale = correlated && first.shared > 0 ? float(std::sqrt(rho) * target / std::sqrt(first.shared))
                                                              : 0.0f;

    // Pass 3: base + scale * delta0 (+ shared_scale * shared), stored in the base's dtype.
    uint8_t* out = pipeline.buffer(largest_bytes);
    parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
      float* x = chunk_scratch();
      load_as_f32(dtype, stored + b * width, e - b, x);
      if (correlated) {
        for (size_t i = 0; i < e - b; ++i) x[i] = x[i] + (scale * delta[b + i] + shared_scale * shared[b + i]);
      } else {
        for (size_t i = 0; i < e - b; ++i) x[i] = x[i] + scale * delta[b + i];
      }
      store_from_f32(x, e - b, dtype, out + b * width);
    });
    t.shard->release(*t.info);
    pipeline.submit(t.name(), byte_size(n, dtype));
  }
  pipeline.drain();
  writer.finish();
}

}  // namespace detail

InitStats base_init(const SynthTensor& t) {
  if (t.component == Component::kNorm) return {t.offset_one ? 0.0f : 1.0f, 0.05f};
  if (t.component == Component::kEmbedding || t.component == Component::kLmHead || t.shape.size() < 2) {
    return {0.0f, 0.02f};  // embeddings, lm_head, biases
  }
  return {0.0f, 1.0f / std::sqrt(static_cast<float>(std::max<uint64_t>(t.shape.back(), 1)))};
}

void base_tensor_values(const SynthTensor& t, uint64_t seed, uint64_t first, size_t count, float* out) {
  const InitStats init = base_init(t);
  synth_normal(seed, synth_stream_id(t.name), first, count, out, init.std_dev, init.mean);
}

void synth_base_model(const fs::path& out, const BaseModelOptions& options) {
  check_storable(options.dtype, "the requested model");
  const auto tensors = architecture_tensors(options.arch);
  StagingDirectory staging(out, options.output.overwrite);
  std::vector<TensorSpec> specs;
  uint64_t largest = 0;
  for (const auto& t : tensors) {
    specs.push_back({t.name, options.dtype, t.shape});
    largest = std::max(largest, t.numel());
  }
  {
    ShardedWriter writer(staging.path(), specs, options.output.shard_bytes, {{"generator", "alloy-synth"}});
    WritePipeline pipeline(writer, specs, options.output);
    const unsigned width = dtype_bits(options.dtype) / 8;
    for (const auto& t : tensors) {
      const uint64_t n = t.numel();
      uint8_t* bytes = pipeline.buffer(byte_size(largest, options.dtype));
      // Each chunk is generated into a per-thread buffer and converted while it is in cache.
      parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
        float* v = chunk_scratch();
        base_tensor_values(t, options.seed, b, e - b, v);
        store_from_f32(v, e - b, options.dtype, bytes + b * width);
      });
      pipeline.submit(t.name, byte_size(n, options.dtype));
    }
    pipeline.drain();
    writer.finish();
  }
  write_json(staging.path() / "config.json", architecture_config(options.arch, options.dtype));
  write_tokenizer_files(staging.path(), options.arch.vocab);
  nlohmann::json record = generator_record("base");
  record.update({{"seed", options.seed}, {"dtype", dtype_name(options.dtype)},
                 {"architecture", architecture_json(options.arch)}});
  write_json(staging.path() / "alloy_synth.json", record);
  staging.publish();
}

void synth_fine_tune(const fs::path& base_dir, const fs::path& out, const FineTuneOptions& options) {
  validate(options);
  const Model base = Model::open(base_dir);
  StagingDirectory staging(out, options.output.overwrite);
  detail::write_fine_tune_weights(base, staging.path(), options);
  if (base.has_config()) write_json(staging.path() / "config.json", base.config());
  for (const auto& file : base.auxiliary_files()) {
    if (file == "alloy_synth.json") continue;
    fs::create_directories((staging.path() / file).parent_path());
    fs::copy_file(base_dir / file, staging.path() / file);
  }
  nlohmann::json record = generator_record("fine-tune");
  record.update({{"base", fs::absolute(base_dir).lexically_normal().filename().string()},
                 {"seed", options.seed},
                 {"relative_delta", options.relative_delta},
                 {"low_rank_fraction", options.low_rank_fraction},
                 {"rank", options.rank}});
  if (options.sibling_correlation > 0) {
    record.update({{"sibling_correlation", options.sibling_correlation}, {"shared_seed", options.shared_seed}});
  }
  if (fs::exists(base_dir / "alloy_synth.json")) {
    try {
      record["base_generator"] = nlohmann::json::parse(read_text_file(base_dir / "alloy_synth.json"));
    } catch (const nlohmann::json::exception&) {
      // Not ours after all: the record simply lacks the base's parameters.
    }
  }
  write_json(staging.path() / "alloy_synth.json", record);
  staging.publish();
}

void synth_family(const fs::path& out, const BaseModelOptions& base, int fine_tunes, int unrelated,
                  const FineTuneOptions& fine_tune) {
  if (fine_tunes < 0 || unrelated < 0) {
    throw Error(ErrorCode::kInvalidArgument, "family: --fine-tunes and --unrelated must be >= 0");
  }
  validate(fine_tune);
  base.arch.validate();
  StagingDirectory staging(out, base.output.overwrite);
  BaseModelOptions inner = base;
  inner.output.overwrite = false;
  synth_base_model(staging.path() / "base", inner);
  nlohmann::json record = generator_record("family");
  record["base"] = {{"dir", "base"}, {"seed", base.seed}};
  record["fine_tunes"] = nlohmann::json::array();
  record["unrelated"] = nlohmann::json::array();
  for (int i = 1; i <= fine_tunes; ++i) {
    FineTuneOptions ft = fine_tune;
    ft.seed = base.seed + 1000 + static_cast<uint64_t>(i);
    if (ft.sibling_correlation > 0 && ft.shared_seed == 0) ft.shared_seed = base.seed + 3000;
    ft.output = inner.output;
    const std::string dir = "ft_" + std::to_string(i);
    synth_fine_tune(staging.path() / "base", staging.path() / dir, ft);
    record["fine_tunes"].push_back({{"dir", dir}, {"parent", "base"}, {"seed", ft.seed}});
  }
  for (int i = 1; i <= unrelated; ++i) {
    BaseModelOptions other = inner;
    other.seed = base.seed + 2000 + static_cast<uint64_t>(i);
    const std::string dir = "unrelated_" + std::to_string(i);
    synth_base_model(staging.path() / dir, other);
    record["unrelated"].push_back({{"dir", dir}, {"seed", other.seed}});
  }
  record["fine_tune"] = {{"relative_delta", fine_tune.relative_delta},
                         {"low_rank_fraction", fine_tune.low_rank_fraction},
                         {"rank", fine_tune.rank}};
  if (fine_tune.sibling_correlation > 0) {
    record["fine_tune"]["sibling_correlation"] = fine_tune.sibling_correlation;
    record["fine_tune"]["shared_seed"] = fine_tune.shared_seed;
  }
  write_json(staging.path() / "alloy_synth.json", record);
  staging.publish();
}

}  // namespace alloy

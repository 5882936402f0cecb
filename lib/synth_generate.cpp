// Writing synthetic base models, fine-tunes and families (see alloy/synth.h).
#include <cmath>

#include "alloy/error.h"
#include "alloy/file_util.h"
#include "alloy/kernels.h"
#include "alloy/model.h"
#include "alloy/parallel.h"
#include "alloy/synth.h"
#include "alloy/writer.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

// Buffers reused across tensors: allocating fresh memory per tensor costs page faults.
struct Scratch {
  std::vector<float> values, delta, low_rank, factors;
  std::vector<uint8_t> bytes;
  static void fit(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  }
};

uint64_t element_count(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

// Initial values with the statistics of a freshly initialised transformer.
void base_values(const SynthTensor& t, uint64_t seed, float* out) {
  const uint64_t n = element_count(t.shape);
  synth_normal(seed, synth_stream_id(t.name), 0, n, out);
  float std_dev;
  float offset = 0.0f;
  if (t.component == Component::kNorm) {
    std_dev = 0.05f;
    offset = 1.0f;
  } else if (t.component == Component::kEmbedding || t.component == Component::kLmHead) {
    std_dev = 0.02f;
  } else {
    std_dev = 1.0f / std::sqrt(static_cast<float>(t.shape.back()));
  }
  parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) out[i] = offset + std_dev * out[i];
  });
}

void write_json(const fs::path& path, const nlohmann::json& value) { write_file_atomic(path, value.dump(2) + "\n"); }

// A small but valid tokenizers JSON (WordLevel over the vocabulary) and its companions.
void write_tokenizer_files(const fs::path& dir, int vocab) {
  nlohmann::json vocab_map = nlohmann::json::object();
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < vocab; ++i) vocab_map[i < 3 ? specials[i] : "tok" + std::to_string(i)] = i;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < std::min(vocab, 3); ++i) {
    added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  write_json(dir / "tokenizer.json", {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
                                      {"added_tokens", added}, {"normalizer", nullptr},
                                      {"pre_tokenizer", {{"type", "Whitespace"}}}, {"post_processor", nullptr},
                                      {"decoder", nullptr},
                                      {"model", {{"type", "WordLevel"}, {"vocab", vocab_map}, {"unk_token", "<unk>"}}}});
  write_json(dir / "tokenizer_config.json", {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"bos_token", "<s>"},
                                             {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                                             {"model_max_length", 2048}});
  write_json(dir / "generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
}

nlohmann::json architecture_json(const Architecture& a) {
  return {{"family", a.family == ModelFamily::kMoe ? "moe" : "llama"}, {"layers", a.layers}, {"hidden", a.hidden},
          {"intermediate", a.intermediate}, {"heads", a.heads}, {"kv_heads", a.kv_heads}, {"vocab", a.vocab},
          {"experts", a.experts}, {"experts_per_token", a.experts_per_token},
          {"moe_intermediate", a.moe_intermediate}, {"shared_expert", a.shared_expert},
          {"tie_embeddings", a.tie_embeddings}};
}

void store_tensor(ShardedWriter& writer, const std::string& name, const float* values, uint64_t n, DType dtype,
                  Scratch& scratch) {
  const uint64_t nbytes = n * dtype_bits(dtype) / 8;
  if (scratch.bytes.size() < nbytes) scratch.bytes.resize(nbytes);
  store_from_f32(values, n, dtype, scratch.bytes.data());
  writer.write(name, scratch.bytes.data(), nbytes);
}

// delta <- a rank-`rank` matrix U V^T / sqrt(rank) with U, V pseudo-normal (rows x cols).
void low_rank_matrix(uint64_t seed, uint64_t stream, uint64_t rows, uint64_t cols, int rank, Scratch& scratch,
                     float* out) {
  const uint64_t r = static_cast<uint64_t>(rank);
  Scratch::fit(scratch.factors, (rows + cols) * r);
  float* u = scratch.factors.data();
  float* v = u + rows * r;
  synth_normal(seed, stream ^ 0x55AA55AA55AA55AAull, 0, rows * r, u);
  synth_normal(seed, stream ^ 0xAA55AA55AA55AA55ull, 0, cols * r, v);
  const float inv = 1.0f / std::sqrt(static_cast<float>(rank));
  parallel_for(rows, 64, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const float* ui = u + i * r;
      float* row = out + i * cols;
      for (uint64_t j = 0; j < cols; ++j) {
        const float* vj = v + j * r;
        float acc = 0.0f;
        for (uint64_t k = 0; k < r; ++k) acc += ui[k] * vj[k];
        row[j] = acc * inv;
      }
    }
  });
}

}  // namespace

void synth_base_model(const fs::path& out, const BaseModelOptions& options) {
  const auto tensors = architecture_tensors(options.arch);
  if (!can_store_from_f32(options.dtype) || options.dtype == DType::F64) {
    throw Error(ErrorCode::kInvalidArgument, std::string("alloy-synth writes bf16, f16 or f32, not ") +
                                                 dtype_name(options.dtype));
  }
  StagingDirectory staging(out, options.output.overwrite);
  std::vector<TensorSpec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, options.dtype, t.shape});
  ShardedWriter writer(staging.path(), specs, options.output.shard_bytes, {{"generator", "alloy-synth"}});
  Scratch scratch;
  for (const auto& t : tensors) {
    const uint64_t n = element_count(t.shape);
    Scratch::fit(scratch.values, n);
    base_values(t, options.seed, scratch.values.data());
    store_tensor(writer, t.name, scratch.values.data(), n, options.dtype, scratch);
  }
  writer.finish();
  write_json(staging.path() / "config.json", architecture_config(options.arch, options.dtype));
  write_tokenizer_files(staging.path(), options.arch.vocab);
  write_json(staging.path() / "alloy_synth.json",
             {{"kind", "base"}, {"seed", options.seed}, {"dtype", dtype_name(options.dtype)},
              {"architecture", architecture_json(options.arch)}});
  staging.publish();
}

void synth_fine_tune(const fs::path& base_dir, const fs::path& out, const FineTuneOptions& options) {
  if (!(options.relative_delta >= 0) || !(options.low_rank_fraction >= 0 && options.low_rank_fraction <= 1) ||
      options.rank < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "fine-tune: need delta >= 0, low-rank fraction in [0, 1] and rank >= 1");
  }
  const Model base = Model::open(base_dir);
  StagingDirectory staging(out, options.output.overwrite);
  std::vector<TensorSpec> specs;
  for (const auto& t : base.tensors()) {
    if (!can_store_from_f32(t.info->dtype)) {
      throw Error(ErrorCode::kInvalidArgument, base_dir.string() + ": tensor '" + t.name() + "' has dtype " +
                                                   dtype_name(t.info->dtype) + ", which alloy-synth cannot write");
    }
    specs.push_back({t.name(), t.info->dtype, t.info->shape});
  }
  ShardedWriter writer(staging.path(), specs, options.output.shard_bytes, {{"generator", "alloy-synth"}});
  Scratch scratch;
  const double low_share = std::sqrt(options.low_rank_fraction);
  const double dense_share = std::sqrt(1.0 - options.low_rank_fraction);
  for (const auto& t : base.tensors()) {
    const uint64_t n = t.info->numel();
    Scratch::fit(scratch.values, n);
    Scratch::fit(scratch.delta, n);
    float* values = scratch.values.data();
    float* delta = scratch.delta.data();
    load_as_f32(t.info->dtype, t.data(), n, values);
    t.shard->release(*t.info);
    const uint64_t stream = synth_stream_id(t.name());
    synth_normal(options.seed, stream, 0, n, delta);
    const double target = options.relative_delta * norm2(n, values);
    double dense_norm = norm2(n, delta);
    if (dense_norm > 0) scale(n, static_cast<float>(dense_share / dense_norm), delta);
    if (t.info->shape.size() == 2 && options.low_rank_fraction > 0 && n > 0) {
      Scratch::fit(scratch.low_rank, n);
      low_rank_matrix(options.seed, stream, t.info->shape[0], t.info->shape[1], options.rank, scratch,
                      scratch.low_rank.data());
      const double low_norm = norm2(n, scratch.low_rank.data());
      if (low_norm > 0) axpy(n, static_cast<float>(low_share / low_norm), scratch.low_rank.data(), delta);
    } else if (dense_norm > 0) {
      scale(n, static_cast<float>(1.0 / dense_share), delta);  // 1-D: the whole delta is dense
    }
    const double delta_norm = norm2(n, delta);
    if (delta_norm > 0) axpy(n, static_cast<float>(target / delta_norm), delta, values);
    store_tensor(writer, t.name(), values, n, t.info->dtype, scratch);
  }
  writer.finish();
  if (base.has_config()) write_json(staging.path() / "config.json", base.config());
  for (const auto& file : base.auxiliary_files()) fs::copy_file(base_dir / file, staging.path() / file);
  nlohmann::json record = {{"kind", "fine-tune"}, {"base", base_dir.filename().string()},
                            {"seed", options.seed}, {"relative_delta", options.relative_delta},
                            {"low_rank_fraction", options.low_rank_fraction}, {"rank", options.rank}};
  if (fs::exists(base_dir / "alloy_synth.json")) {
    record["base_generator"] = nlohmann::json::parse(read_text_file(base_dir / "alloy_synth.json"));
  }
  write_json(staging.path() / "alloy_synth.json", record);
  staging.publish();
}

void synth_family(const fs::path& out, const BaseModelOptions& base, int fine_tunes, int unrelated,
                  const FineTuneOptions& fine_tune) {
  StagingDirectory staging(out, base.output.overwrite);
  BaseModelOptions inner = base;
  inner.output.overwrite = false;
  synth_base_model(staging.path() / "base", inner);
  for (int i = 1; i <= fine_tunes; ++i) {
    FineTuneOptions ft = fine_tune;
    ft.seed = base.seed + 1000 + static_cast<uint64_t>(i);
    ft.output = inner.output;
    synth_fine_tune(staging.path() / "base", staging.path() / ("ft_" + std::to_string(i)), ft);
  }
  for (int i = 1; i <= unrelated; ++i) {
    BaseModelOptions other = inner;
    other.seed = base.seed + 2000 + static_cast<uint64_t>(i);
    synth_base_model(staging.path() / ("unrelated_" + std::to_string(i)), other);
  }
  staging.publish();
}

}  // namespace alloy

// LoRA extraction (alloy-extract-lora): a PEFT adapter whose change approximates FINETUNED - BASE
// module by module, by truncated SVD (docs/methods.md, "LoRA extraction").
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "alloy/core/random.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/writer.h"
#include "alloy/merge/lora.h"

namespace alloy {
namespace fs = std::filesystem;
using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;

namespace {

// A Gaussian stream (splitmix64 and Box-Muller) from a seed: the randomized SVD's probes, the same
// on every machine and thread count.
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : state_(seed) {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(bits() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(bits() >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return radius * std::cos(2.0 * M_PI * u2);
  }

 private:
  uint64_t bits() { return splitmix64_next(state_); }
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

Matrix orthonormal_columns(const Matrix& m) {
  Eigen::HouseholderQR<Matrix> qr(m);
  return qr.householderQ() * Matrix::Identity(m.rows(), m.cols());
}

// The leading `rank` singular triplets of `d`: exact (BDCSVD) or randomized (Halko et al. 2011,
// algorithm 4.4 with the exact SVD of the small projection).
struct Truncated {
  Matrix u, v;
  Eigen::VectorXd s;
  bool exact = true;
};

Truncated truncated_svd(const Matrix& d, Eigen::Index rank, const LoraExtractOptions& options,
                        const std::string& name) {
  Truncated out;
  const Eigen::Index small = std::min(d.rows(), d.cols());
  const Eigen::Index probes = std::min<Eigen::Index>(small, rank + static_cast<Eigen::Index>(options.oversample));
  if (static_cast<uint64_t>(small) <= options.exact_limit || probes == small) {
    Eigen::BDCSVD<Matrix> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
    out.u = svd.matrixU().leftCols(rank);
    out.v = svd.matrixV().leftCols(rank);
    out.s = svd.singularValues().head(rank);
    return out;
  }
  out.exact = false;
  Gaussian gaussian(fnv1a(name));
  Matrix omega(d.cols(), probes);
  for (Eigen::Index j = 0; j < probes; ++j) {
    for (Eigen::Index i = 0; i < d.cols(); ++i) omega(i, j) = gaussian.next();
  }
  Matrix q = orthonormal_columns(d * omega);
  for (int i = 0; i < options.power_iterations; ++i) {
    q = orthonormal_columns(d * orthonormal_columns(d.transpose() * q));
  }
  const Matrix projected = q.transpose() * d;  // probes x cols
  Eigen::BDCSVD<Matrix> svd(projected, Eigen::ComputeThinU | Eigen::ComputeThinV);
  out.u = q * svd.matrixU().leftCols(rank);
  out.v = svd.matrixV().leftCols(rank);
  out.s = svd.singularValues().head(rank);
  return out;
}

bool is_embedding_table(const std::string& name) {
  return name.find("embed") != std::string::npos || name.find("wte.") != std::string::npos;
}

// The difference FINETUNED - BASE of one tensor, in double precision.
Matrix difference(const ModelTensor& base, const ModelTensor& tuned) {
  const uint64_t rows = base.info->shape[0], columns = base.info->shape[1], n = rows * columns;
  std::vector<float> b(n), t(n);
  std::vector<uint8_t> raw(std::max(base.info->nbytes(), tuned.info->nbytes()));
  base.shard->read(*base.info, 0, base.info->nbytes(), raw.data());
  load_as_f32(base.info->dtype, raw.data(), n, b.data());
  tuned.shard->read(*tuned.info, 0, tuned.info->nbytes(), raw.data());
  load_as_f32(tuned.info->dtype, raw.data(), n, t.data());
  Matrix d(rows, columns);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < columns; ++j) d(i, j) = double(t[i * columns + j]) - double(b[i * columns + j]);
  }
  return d;
}

// Row-major values of `m` rounded to `dtype` and back (what the written factor holds).
std::vector<float> rounded(const Matrix& m, DType dtype) {
  std::vector<float> values(static_cast<size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) values[i * m.cols() + j] = static_cast<float>(m(i, j));
  }
  round_to(dtype, values.data(), values.size());
  return values;
}

struct Factors {
  std::string a_name, b_name;
  std::vector<uint64_t> a_shape, b_shape;
  std::vector<float> a, b;  // row-major, already rounded to the output dtype
};

// Restores Eigen's thread count on scope exit: extraction runs Eigen single-threaded, since its
// products' blocking (and so their rounding) depends on the thread count.
class EigenSingleThread {
 public:
  EigenSingleThread() : saved_(Eigen::nbThreads()) { Eigen::setNbThreads(1); }
  ~EigenSingleThread() { Eigen::setNbThreads(saved_); }

 private:
  int saved_;
};

}  // namespace

LoraExtractResult extract_lora(const fs::path& base_path, const fs::path& tuned_path, const fs::path& out,
                               const LoraExtractOptions& options) {
  if (options.rank == 0 || options.rank > (1u << 20)) {
    throw Error(ErrorCode::kInvalidArgument, "--rank must be between 1 and 1048576, not " + std::to_string(options.rank));
  }
  if (!can_store_from_f32(options.dtype)) {
    throw Error(ErrorCode::kInvalidArgument, std::string("cannot write LoRA factors as ") + dtype_name(options.dtype));
  }
  EigenSingleThread single_thread;
  const Model base = Model::open(base_path);
  const Model tuned = Model::open(tuned_path);
  LoraExtractResult result;
  std::vector<Factors> factors;
  const Eigen::Index r = static_cast<Eigen::Index>(options.rank);
  for (const ModelTensor& b : base.tensors()) {
    const std::string& name = b.name();
    const ModelTensor* t = tuned.find(name);
    auto skip = [&](const std::string& why) { result.skipped.push_back("'" + name + "': " + why); };
    if (t == nullptr) { skip("not in the fine-tuned model"); continue; }
    if (b.info->shape.size() != 2) continue;  // norms and biases: not LoRA targets, not worth a line
    if (t->info->shape != b.info->shape) { skip("its shape differs between the models"); continue; }
    const size_t suffix = name.size() >= 7 ? name.size() - 7 : 0;
    if (name.compare(suffix, std::string::npos, ".weight") != 0) { skip("not a module's weight"); continue; }
    const bool embedding = is_embedding_table(name), head = name.find("lm_head") != std::string::npos;
    if ((embedding || head) && !options.embeddings) { skip("an embedding (use --embeddings)"); continue; }
    if (!can_load_as_f32(b.info->dtype) || !can_load_as_f32(t->info->dtype)) {
      skip(std::string("dtype ") + dtype_name(t->info->dtype) + " cannot be read as float32");
      continue;
    }
    const Matrix d = difference(b, *t);
    if (d.isZero(0.0)) { skip("identical in both models"); continue; }
    LoraExtractModule m;
    m.module = name.substr(0, suffix);
    m.shape = b.info->shape;
    const Eigen::Index rank = std::min<Eigen::Index>({r, d.rows(), d.cols()});
    m.rank = static_cast<uint64_t>(rank);
    const Truncated svd = truncated_svd(d, rank, options, name);
    m.exact = svd.exact;
    // change = U S V^T = (U sqrt(S)) (sqrt(S) V^T); the factors are padded with zeros to the
    // requested rank (every module of a PEFT adapter has rank r). An embedding's change is
    // (B A)^T, so there B = V sqrt(S) and A = sqrt(S) U^T.
    const Eigen::VectorXd root = svd.s.cwiseSqrt();
    const Matrix& left = embedding ? svd.v : svd.u;    // B's columns
    const Matrix& right = embedding ? svd.u : svd.v;   // A's rows (transposed)
    Matrix b_factor = Matrix::Zero(left.rows(), r), a_factor = Matrix::Zero(r, right.rows());
    b_factor.leftCols(rank) = left * root.asDiagonal();
    a_factor.topRows(rank) = root.asDiagonal() * right.transpose();
    Factors f;
    const std::string key = "base_model.model." + m.module;
    f.a_name = key + (embedding ? ".lora_embedding_A" : ".lora_A.weight");
    f.b_name = key + (embedding ? ".lora_embedding_B" : ".lora_B.weight");
    f.a_shape = {options.rank, static_cast<uint64_t>(a_factor.cols())};
    f.b_shape = {static_cast<uint64_t>(b_factor.rows()), options.rank};
    f.a = rounded(a_factor, options.dtype);
    f.b = rounded(b_factor, options.dtype);
    // The residual of the factors as written: || D - (B A) || (or (B A)^T).
    const Matrix a_written = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                                 f.a.data(), a_factor.rows(), a_factor.cols()).cast<double>();
    const Matrix b_written = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                                 f.b.data(), b_factor.rows(), b_factor.cols()).cast<double>();
    const Matrix product = b_written * a_written;
    m.delta_norm = d.norm();
    m.residual_norm = embedding ? (d - product.transpose()).norm() : (d - product).norm();
    m.discarded_energy = std::sqrt(std::max(0.0, d.squaredNorm() - svd.s.squaredNorm()));
    result.modules.push_back(m);
    factors.push_back(std::move(f));
  }
  if (result.modules.empty()) {
    throw Error(ErrorCode::kMissingTensor, "no 2-D tensor differs between " + base_path.string() + " and " +
                                               tuned_path.string() + ": there is nothing to extract");
  }

  nlohmann::ordered_json config;
  config["peft_type"] = "LORA";
  const auto& arch = base.config().value("architectures", nlohmann::json::array());
  const bool causal = arch.is_array() && !arch.empty() && arch[0].is_string() &&
                      arch[0].get<std::string>().find("ForCausalLM") != std::string::npos;
  config["task_type"] = causal ? nlohmann::ordered_json("CAUSAL_LM") : nlohmann::ordered_json();
  config["base_model_name_or_path"] = base_path.string();
  config["r"] = options.rank;
  config["lora_alpha"] = options.rank;  // scale alpha / r = 1: the factors carry the whole change
  config["lora_dropout"] = 0.0;
  config["use_rslora"] = false;
  config["use_dora"] = false;
  config["fan_in_fan_out"] = false;
  config["bias"] = "none";
  config["modules_to_save"] = nullptr;
  config["rank_pattern"] = nlohmann::ordered_json::object();
  config["alpha_pattern"] = nlohmann::ordered_json::object();
  config["init_lora_weights"] = true;
  config["inference_mode"] = true;
  std::vector<std::string> targets;
  for (const auto& m : result.modules) targets.push_back(m.module);
  std::sort(targets.begin(), targets.end());
  config["target_modules"] = targets;

  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> bytes;
  for (const Factors& f : factors) {
    for (const auto* part : {&f.a, &f.b}) {
      const bool is_a = part == &f.a;
      specs.push_back({is_a ? f.a_name : f.b_name, options.dtype, is_a ? f.a_shape : f.b_shape});
      bytes.emplace_back(specs.back().nbytes());
      store_from_f32(part->data(), part->size(), options.dtype, bytes.back().data());
    }
  }
  std::vector<const void*> data;
  for (const auto& b : bytes) data.push_back(b.data());
  StagingDirectory staging(out, options.overwrite, {base_path, tuned_path});
  write_safetensors_file(staging.path() / kAdapterWeightsFile, specs, data, {{"format", "pt"}});
  write_file_atomic(staging.path() / kAdapterConfigFile, config.dump(2) + "\n");
  staging.publish();
  return result;
}

}  // namespace alloy

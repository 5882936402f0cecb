// Models stored as PyTorch .bin checkpoints merge and assay exactly as the same tensors in
// safetensors: a merge with a .bin copy of one parent writes the same shards, byte for byte, as
// the all-safetensors merge, and the assay reads a .bin candidate.
#include <gtest/gtest.h>

#include <map>

#include <nlohmann/json.hpp>

#include "alloy/core/model.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"
#include "torch_zip.h"

namespace {

namespace fs = std::filesystem;

const char* storage_class(alloy::DType dtype) {
  switch (dtype) {
    case alloy::DType::F32: return "FloatStorage";
    case alloy::DType::F16: return "HalfStorage";
    case alloy::DType::BF16: return "BFloat16Storage";
    default: throw std::runtime_error("no storage class in this test");
  }
}

// Writes `from`'s tensors as DIR/pytorch_model.bin (one storage per tensor, in reverse order so
// that nothing lines up with the safetensors layout by accident) with its config.json.
void write_bin_copy(const fs::path& from, const fs::path& dir) {
  const auto model = alloy::Model::open(from);
  std::vector<alloy::test::TorchTensor> tensors;
  std::vector<std::pair<std::string, std::string>> storages;
  for (size_t i = model.tensors().size(); i-- > 0;) {
    const auto& t = model.tensors()[i];
    const std::string key = std::to_string(storages.size());
    std::vector<int64_t> size(t.info->shape.begin(), t.info->shape.end());
    const int64_t element = alloy::dtype_bits(t.info->dtype) / 8;
    tensors.push_back({t.name(), storage_class(t.info->dtype), key, static_cast<int64_t>(t.info->nbytes()) / element, 0,
                       size, {}});
    storages.emplace_back(key, std::string(reinterpret_cast<const char*>(t.data()), t.info->nbytes()));
  }
  fs::create_directories(dir);
  alloy::test::write_bytes(dir / "pytorch_model.bin",
                           alloy::test::torch_checkpoint_bytes(alloy::test::state_dict_pickle(tensors), storages));
  fs::copy_file(from / "config.json", dir / "config.json");
}

std::map<std::string, std::string> shards(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") out[entry.path().filename().string()] = alloy::test::read_bytes(entry.path());
  }
  return out;
}

TEST(BinCheckpoints, MergeIsBitExactAndAssayReadsThem) {
  alloy::test::TempDir dir;
  alloy::BaseModelOptions base;
  base.arch.layers = 2;
  base.arch.hidden = 64;
  base.arch.intermediate = 96;
  alloy::synth_family(dir / "fam", base, 2, 0, {});
  write_bin_copy(dir / "fam" / "base", dir / "fam" / "base_bin");
  write_bin_copy(dir / "fam" / "ft_1", dir / "fam" / "ft_1_bin");
  ASSERT_FALSE(fs::exists(dir / "fam" / "ft_1_bin" / "model.safetensors"));

  const std::string recipe = "merge_method: ties\nbase_model: BASE\nmodels:\n"
                             "  - model: FT1\n    parameters: {weight: 0.6, density: 0.7}\n"
                             "  - model: ft_2\n    parameters: {weight: 0.4, density: 0.5}\n"
                             "parameters: {normalize: true}\ndtype: float32\nout_dtype: bfloat16\n";
  auto write_recipe = [&](const std::string& name, const std::string& base_name, const std::string& ft1) {
    std::string text = recipe;
    text.replace(text.find("BASE"), 4, base_name);
    text.replace(text.find("FT1"), 3, ft1);
    alloy::test::write_bytes(dir / "fam" / name, text);
  };
  write_recipe("st.yml", "base", "ft_1");
  write_recipe("bin.yml", "base_bin", "ft_1_bin");
  for (const char* name : {"st", "bin"}) {
    int status = -1;
    const std::string log = alloy::test::run_command("cd '" + (dir / "fam").string() + "' && '" +
                                                         alloy::test::bin("alloy-merge") + "' -q " + name + ".yml '" +
                                                         (dir / name).string() + "' 2>&1",
                                                     &status);
    ASSERT_EQ(status, 0) << log;
  }
  const auto expected = shards(dir / "st");
  ASSERT_FALSE(expected.empty());
  EXPECT_TRUE(expected == shards(dir / "bin")) << "the .bin merge's shards differ from the safetensors merge's";

  int status = -1;
  const std::string log = alloy::test::run_command(
      "cd '" + (dir / "fam").string() + "' && '" + alloy::test::bin("alloy-assay") + "' -q '" + (dir / "bin").string() +
          "' base_bin ft_1_bin ft_2 --json '" + (dir / "assay.json").string() + "' 2>&1",
      &status);
  ASSERT_EQ(status, 0) << log;
  const auto assay = nlohmann::json::parse(alloy::test::read_bytes(dir / "assay.json"));
  EXPECT_EQ(assay["verdict"], "merge") << log;
}

TEST(BinCheckpoints, LazyUnpickleIsAcceptedWithAnHonestNote) {
  int status = -1;
  const std::string log =
      alloy::test::run_command("'" + alloy::test::bin("alloy-merge") + "' --lazy-unpickle /nonexistent.yml /tmp/x 2>&1", &status);
  EXPECT_NE(log.find("--lazy-unpickle changes nothing: alloy always reads .bin checkpoints lazily"), std::string::npos)
      << log;
}

}  // namespace

// The PyTorch checkpoint reader: round trips through checkpoints written by tests/torch_zip.h, a
// file torch 1.13 wrote, model directories of .bin files, and a table of corrupt and hostile
// checkpoints, each refused with its code and a message naming the file and the defect.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/torch_checkpoint.h"
#include "test_utils.h"
#include "torch_zip.h"

namespace {

namespace fs = std::filesystem;
using alloy::ErrorCode;
using alloy::test::PickleWriter;
using alloy::test::TorchTensor;

std::string floats(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

alloy::SafetensorsHeader parse(const std::string& bytes) {
  return alloy::parse_torch_checkpoint(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "t.bin");
}

const alloy::TensorInfo& tensor(const alloy::SafetensorsHeader& header, const std::string& name) {
  const long i = header.find(name);
  if (i < 0) throw std::runtime_error("no tensor " + name);
  return header.tensors[static_cast<size_t>(i)];
}

std::vector<float> read_floats(const std::string& file, const alloy::TensorInfo& info) {
  std::vector<float> out(info.numel());
  std::memcpy(out.data(), file.data() + info.data_begin, info.nbytes());
  return out;
}

// Two storages: "0" holds 8 floats (a 2x3 weight, tied, and a row view at offset 6 of 2), "1" two bf16.
std::vector<TorchTensor> sample_tensors() {
  return {
      {"w", "FloatStorage", "0", 8, 0, {2, 3}, {}},
      {"tied", "FloatStorage", "0", 8, 0, {2, 3}, {}},
      {"tail", "FloatStorage", "0", 8, 6, {2}, {}},
      {"scalar", "FloatStorage", "0", 8, 7, {}, {}},
      {"empty", "FloatStorage", "0", 8, 0, {0, 4}, {}},
      {"h", "BFloat16Storage", "1", 2, 0, {1, 2}, {7, 1}},  // stride of a size-1 dimension is free
  };
}

std::string sample_checkpoint(const alloy::test::ZipOptions& options = {}) {
  const std::string bf16 = std::string("\xC0\x3F\x00\xC0", 4);  // 1.5, -2.0
  return alloy::test::torch_checkpoint_bytes(alloy::test::state_dict_pickle(sample_tensors()),
                                             {{"0", floats({0, 1, 2, 3, 4, 5, 6, 7})}, {"1", bf16}}, options);
}

void expect_sample(const std::string& file) {
  const auto header = parse(file);
  EXPECT_EQ(header.format, alloy::WeightsFormat::kTorchZip);
  EXPECT_EQ(header.data_start(), 0u);
  ASSERT_EQ(header.tensors.size(), 6u);
  const auto& w = tensor(header, "w");
  EXPECT_EQ(w.dtype, alloy::DType::F32);
  EXPECT_EQ(w.shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(w.data_begin % 64, 0u);  // the writer aligns records as torch does
  EXPECT_EQ(read_floats(file, w), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(tensor(header, "tied").data_begin, w.data_begin);
  EXPECT_EQ(read_floats(file, tensor(header, "tail")), (std::vector<float>{6, 7}));
  EXPECT_EQ(read_floats(file, tensor(header, "scalar")), (std::vector<float>{7}));
  EXPECT_TRUE(tensor(header, "scalar").shape.empty());
  EXPECT_EQ(tensor(header, "empty").nbytes(), 0u);
  const auto& h = tensor(header, "h");
  EXPECT_EQ(h.dtype, alloy::DType::BF16);
  EXPECT_EQ(file.substr(h.data_begin, h.nbytes()), std::string("\xC0\x3F\x00\xC0", 4));
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    EXPECT_LE(header.tensors[i - 1].data_begin, header.tensors[i].data_begin);  // file order
  }
}

TEST(TorchCheckpoint, ReadsTheTensorsOfAStateDict) { expect_sample(sample_checkpoint()); }

TEST(TorchCheckpoint, ReadsZip64Records) {
  alloy::test::ZipOptions options;
  options.zip64 = true;
  expect_sample(sample_checkpoint(options));
}

// tests/data/torch/torch_1_13_state_dict.bin: written by torch.save (see the README there), with
// the memo, a tensor pickled twice by reference, a view at an offset and _metadata.
TEST(TorchCheckpoint, ReadsAFileTorchWrote) {
  const std::string file = alloy::test::read_bytes(fs::path(alloy::test::data_dir()) / "torch" / "torch_1_13_state_dict.bin");
  const auto header = parse(file);
  ASSERT_EQ(header.tensors.size(), 4u);
  EXPECT_EQ(read_floats(file, tensor(header, "a")), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(tensor(header, "a").shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(tensor(header, "tied").data_begin, tensor(header, "a").data_begin);
  EXPECT_EQ(read_floats(file, tensor(header, "view")), (std::vector<float>{3, 4, 5}));
  const auto& b = tensor(header, "b");
  EXPECT_EQ(b.dtype, alloy::DType::BF16);
  EXPECT_EQ(file.substr(b.data_begin, 4), std::string("\xC0\x3F\x00\xC0", 4));
}

// ---- the corrupt-checkpoint table ----

std::string with_pickle(const std::string& pickle) {
  return alloy::test::torch_checkpoint_bytes(pickle, {{"0", floats({0, 1, 2, 3, 4, 5, 6, 7})}});
}

// A state dict of one tensor `t`, pickled the torch way, with the tensor's spec changed by `edit`.
std::string with_tensor(const std::function<void(TorchTensor&)>& edit) {
  TorchTensor t{"t", "FloatStorage", "0", 8, 0, {2, 4}, {}};
  edit(t);
  return with_pickle(alloy::test::state_dict_pickle({t}));
}

// A pickle whose body is `body`, framed by PROTO 2 and STOP.
std::string program(const std::function<void(PickleWriter&)>& body) {
  PickleWriter p;
  p.proto();
  body(p);
  return with_pickle(p.stop().bytes());
}

std::string replace_once(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  if (at == std::string::npos) throw std::runtime_error("replace_once: not found");
  return text.replace(at, from.size(), to);
}

struct CorruptCase {
  const char* name;
  std::function<std::string()> make;
  ErrorCode code;
  const char* message;  // a fragment the error must contain
};

std::vector<CorruptCase> corrupt_cases() {
  const std::string good = sample_checkpoint();
  return {
      {"os_system_global", [] { return program([](PickleWriter& p) {
         p.global("os", "system").unicode("touch /tmp/pwned").op(0x85).op('R'); }); },
       ErrorCode::kPickleForbidden, "global 'os.system' is not on the allow-list"},
      {"builtins_eval_stack_global", [] { return program([](PickleWriter& p) {
         p.unicode("builtins").unicode("eval").op(0x93).unicode("1").op(0x85).op('R'); }); },
       ErrorCode::kPickleForbidden, "'builtins.eval'"},
      {"reduce_on_storage_class", [] { return program([](PickleWriter& p) {
         p.global("torch", "FloatStorage").op(')').op('R'); }); },
       ErrorCode::kPickleForbidden, "REDUCE on torch.FloatStorage is not allowed"},
      {"reduce_on_a_string", [] { return program([](PickleWriter& p) { p.unicode("x").op(')').op('R'); }); },
       ErrorCode::kPickleForbidden, "REDUCE on a str"},
      {"inst_opcode", [] { return program([](PickleWriter& p) { p.mark().raw("ios\nsystem\n"); }); },
       ErrorCode::kPickleForbidden, "(INST) is not on the allow-list"},
      {"newobj_opcode", [] { return program([](PickleWriter& p) {
         p.global("collections", "OrderedDict").op(')').op(0x81); }); },
       ErrorCode::kPickleForbidden, "(NEWOBJ)"},
      {"build_on_a_tensor", [] {
         PickleWriter p;
         p.proto().op('}').unicode("t");
         alloy::test::write_tensor(p, {"t", "FloatStorage", "0", 8, 0, {8}, {}});
         p.op('}').op('b').op('s').stop();
         return with_pickle(p.bytes()); },
       ErrorCode::kPickleForbidden, "BUILD on a tensor"},
      {"unknown_storage_type", [] { return with_tensor([](TorchTensor& t) { t.storage_type = "QInt8Storage"; }); },
       ErrorCode::kPickleForbidden, "'torch.QInt8Storage'"},
      {"truncated_zip", [good] { return good.substr(0, good.size() / 2); },
       ErrorCode::kBadZip, "no end of central directory record"},
      {"not_a_zip", [] { return std::string(200, 'x'); }, ErrorCode::kBadZip, "no end of central directory"},
      {"legacy_bare_pickle", [] { return std::string("\x80\x02\x8a\x0a", 4) + std::string(60, '\0'); },
       ErrorCode::kBadZip, "bare pickle"},
      {"directory_offset_past_end", [good] {
         std::string bad = good;
         const size_t end = bad.size() - 22;
         bad[end + 16] = '\xF0';
         bad[end + 19] = '\x0F';
         return bad; },
       ErrorCode::kBadZip, "lies outside the file"},
      {"local_header_offset_wrong", [good] {
         // the first central entry's local header offset points into data.pkl's bytes
         std::string bad = good;
         const size_t central = bad.find(std::string("PK\1\2", 4));
         bad[central + 42] = '\x05';
         return bad; },
       ErrorCode::kBadZip, "no local header where the directory points"},
      {"compressed_entry", [] {
         alloy::test::ZipOptions options;
         options.method = 8;
         return alloy::test::torch_checkpoint_bytes("x", {}, options); },
       ErrorCode::kBadZip, "is compressed (method 8)"},
      {"encrypted_entry", [] {
         alloy::test::ZipOptions options;
         options.flags = 1;
         return alloy::test::torch_checkpoint_bytes("x", {}, options); },
       ErrorCode::kBadZip, "is encrypted"},
      {"duplicate_entry", [] {
         return alloy::test::zip_bytes({{"archive/data.pkl", "x"}, {"archive/data.pkl", "y"}}); },
       ErrorCode::kBadZip, "'archive/data.pkl' appears twice"},
      {"missing_data_pkl", [] { return alloy::test::zip_bytes({{"archive/version", "3\n"}}); },
       ErrorCode::kBadZip, "no <archive>/data.pkl"},
      {"two_data_pkls", [] { return alloy::test::zip_bytes({{"a/data.pkl", "x"}, {"b/data.pkl", "y"}}); },
       ErrorCode::kBadZip, "two data.pkl records"},
      {"zip64_locator_missing", [good] {
         std::string bad = good;
         const size_t end = bad.size() - 22;
         bad[end + 10] = bad[end + 11] = '\xFF';
         bad[end + 8] = bad[end + 9] = '\xFF';
         return bad; },
       ErrorCode::kBadZip, "ZIP64 end record locator missing"},
      {"big_endian", [] {
         return alloy::test::zip_bytes({{"archive/data.pkl", alloy::test::state_dict_pickle({})},
                                        {"archive/byteorder", "big"}}); },
       ErrorCode::kBadPickle, "only little-endian"},
      {"storage_too_short", [] { return with_tensor([](TorchTensor& t) { t.storage_numel = 9; }); },
       ErrorCode::kBadPickle, "declares 9 elements of F32 but its record holds 32 bytes"},
      {"storage_record_missing", [] { return with_tensor([](TorchTensor& t) { t.key = "7"; }); },
       ErrorCode::kBadPickle, "storage record 'archive/data/7' is missing"},
      {"negative_size", [] { return with_tensor([](TorchTensor& t) { t.size = {-2, -4}; t.stride = {4, 1}; }); },
       ErrorCode::kBadPickle, "size -2 is negative"},
      {"negative_offset", [] { return with_tensor([](TorchTensor& t) { t.offset = -1; }); },
       ErrorCode::kBadPickle, "storage offset -1 is negative"},
      {"numel_overflows", [] { return with_tensor([](TorchTensor& t) {
         t.size = {int64_t{1} << 40, int64_t{1} << 40}; t.stride = {int64_t{1} << 40, 1}; }); },
       ErrorCode::kBadPickle, "element count overflows 64 bits"},
      {"huge_size", [] { return with_tensor([](TorchTensor& t) { t.size = {int64_t{1} << 40}; t.stride = {1}; }); },
       ErrorCode::kBadPickle, "run past its storage"},
      {"offset_past_storage", [] { return with_tensor([](TorchTensor& t) { t.offset = 1; }); },
       ErrorCode::kBadPickle, "offset 1 + 8 elements run past its storage '0' of 8 elements"},
      {"offset_overflows", [] { return with_tensor([](TorchTensor& t) { t.offset = INT64_MAX; }); },
       ErrorCode::kBadPickle, "run past its storage"},
      {"not_contiguous", [] { return with_tensor([](TorchTensor& t) { t.stride = {1, 2}; }); },
       ErrorCode::kBadPickle, "is not contiguous"},
      {"stride_huge", [] { return with_tensor([](TorchTensor& t) { t.stride = {INT64_MAX, 1}; }); },
       ErrorCode::kBadPickle, "is not contiguous"},
      {"size_stride_lengths_differ", [] { return with_tensor([](TorchTensor& t) { t.stride = {4}; }); },
       ErrorCode::kBadPickle, "size and stride differ in length"},
      {"memo_index_never_stored", [] { return program([](PickleWriter& p) { p.binget(7); }); },
       ErrorCode::kBadPickle, "memo index 7 was never stored"},
      {"stack_underflow", [] { return program([](PickleWriter& p) { p.integer(1).op(0x86); }); },
       ErrorCode::kBadPickle, "stack underflow"},
      {"pop_below_mark", [] { return program([](PickleWriter& p) { p.op('}').mark().integer(1).op('s'); }); },
       ErrorCode::kBadPickle, "stack underflow"},
      {"deep_nesting", [] { return program([](PickleWriter& p) { for (int i = 0; i < 300; ++i) p.mark(); }); },
       ErrorCode::kBadPickle, "nests deeper than 256 MARKs"},
      {"no_stop", [] { return with_pickle(PickleWriter().proto().op('}').bytes()); },
       ErrorCode::kBadPickle, "ends without STOP"},
      {"truncated_opcode", [] { return with_pickle(PickleWriter().proto().op('X').le(100, 4).raw("ab").bytes()); },
       ErrorCode::kBadPickle, "truncated"},
      {"long_integer", [] { return program([](PickleWriter& p) { p.op(0x8a).byte(9).raw(std::string(9, '\1')); }); },
       ErrorCode::kBadPickle, "integer of 9 bytes is too large"},
      {"duplicate_tensor_name", [] {
         TorchTensor t{"t", "FloatStorage", "0", 8, 0, {8}, {}};
         return with_pickle(alloy::test::state_dict_pickle({t, t})); },
       ErrorCode::kDuplicateTensor, "tensor 't' appears twice"},
      {"value_not_a_tensor", [] { return program([](PickleWriter& p) { p.op('}').unicode("n").integer(3).op('s'); }); },
       ErrorCode::kBadPickle, "entry 'n' is a int, not a tensor"},
      {"top_is_a_list", [] { return program([](PickleWriter& p) { p.op(']'); }); },
       ErrorCode::kBadPickle, "holds a list, not a state dict"},
      {"name_not_utf8", [] { return program([](PickleWriter& p) { p.op('}').unicode("\xFF\xFE"); }); },
       ErrorCode::kBadPickle, "not valid UTF-8"},
      {"storage_key_two_dtypes", [] {
         return with_pickle(alloy::test::state_dict_pickle(
             {{"a", "FloatStorage", "0", 8, 0, {8}, {}}, {"b", "HalfStorage", "0", 16, 0, {16}, {}}})); },
       ErrorCode::kBadPickle, "storage '0' is named twice with different types or sizes"},
      {"persistent_id_shape", [] { return program([](PickleWriter& p) { p.unicode("storage").op(0x85).op('Q'); }); },
       ErrorCode::kBadPickle, "persistent id is not ('storage', type, key, location, numel)"},
      {"tensor_with_hooks", [] {
         return with_pickle(replace_once(alloy::test::state_dict_pickle({{"t", "FloatStorage", "0", 8, 0, {8}, {}}}),
                                         std::string("\x89", 1) + "ccollections\nOrderedDict\n)R",
                                         std::string("\x89}", 2) + std::string("X\1\0\0\0kK\1s", 9))); },
       ErrorCode::kBadPickle, "backward_hooks must be an empty dict"},
      {"unknown_protocol", [] { return with_pickle(PickleWriter().proto(9).stop().bytes()); },
       ErrorCode::kBadPickle, "pickle protocol 9 is unknown"},
  };
}

TEST(TorchCheckpoint, RefusesEveryCorruptCase) {
  const auto cases = corrupt_cases();
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string bytes = c.make();
    try {
      parse(bytes);
      ADD_FAILURE() << "accepted";
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), c.code) << e.what();
      EXPECT_NE(std::string(e.what()).find("t.bin: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
}

// ---- model directories of .bin files ----

void write_sample_shards(const fs::path& dir) {
  alloy::test::write_bytes(dir / "pytorch_model-00001-of-00002.bin",
                           alloy::test::torch_checkpoint_bytes(alloy::test::state_dict_pickle(
                                                                   {{"a", "FloatStorage", "0", 4, 0, {4}, {}}}),
                                                               {{"0", floats({1, 2, 3, 4})}}));
  alloy::test::write_bytes(dir / "pytorch_model-00002-of-00002.bin",
                           alloy::test::torch_checkpoint_bytes(alloy::test::state_dict_pickle(
                                                                   {{"b", "FloatStorage", "0", 2, 0, {2}, {}}}),
                                                               {{"0", floats({5, 6})}}));
  alloy::test::write_bytes(dir / "pytorch_model.bin.index.json",
                           R"({"metadata":{"total_size":24},"weight_map":{"a":"pytorch_model-00001-of-00002.bin",)"
                           R"("b":"pytorch_model-00002-of-00002.bin"}})");
}

TEST(TorchCheckpoint, OpensModelDirectoriesOfBinFiles) {
  alloy::test::TempDir dir;
  fs::create_directories(dir / "single");
  alloy::test::write_bytes(dir / "single" / "pytorch_model.bin", sample_checkpoint());
  alloy::test::write_bytes(dir / "single" / "training_args.bin", "not a checkpoint");
  const auto single = alloy::Model::open(dir / "single");
  ASSERT_EQ(single.tensors().size(), 6u);
  std::vector<float> w(6);
  single.find("w")->shard->read(*single.find("w")->info, 0, 24, w.data());
  EXPECT_EQ(w, (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(single.shards()[0]->format(), alloy::WeightsFormat::kTorchZip);
  EXPECT_EQ(alloy::Model::open(dir / "single" / "pytorch_model.bin").tensors().size(), 6u);  // a lone file

  fs::create_directories(dir / "sharded");
  write_sample_shards(dir / "sharded");
  const auto sharded = alloy::Model::open(dir / "sharded");
  ASSERT_EQ(sharded.tensors().size(), 2u);
  float b[2];
  sharded.find("b")->shard->read(*sharded.find("b")->info, 0, 8, b);
  EXPECT_EQ(b[1], 6.0f);

  // A pytorch_model*.bin the index does not name is the orphan-shard ambiguity, as for safetensors.
  alloy::test::write_bytes(dir / "sharded" / "pytorch_model-00003-of-00002.bin", sample_checkpoint());
  try {
    alloy::Model::open(dir / "sharded");
    ADD_FAILURE() << "accepted an unlisted shard";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIndexUnlistedShard) << e.what();
  }
}

TEST(TorchCheckpoint, ModelOpenNamesTheFileOfABadCheckpoint) {
  alloy::test::TempDir dir;
  alloy::test::write_bytes(dir / "pytorch_model.bin",
                           program([](PickleWriter& p) { p.global("os", "system"); }));
  try {
    alloy::Model::open(dir.path());
    ADD_FAILURE() << "accepted";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kPickleForbidden);
    EXPECT_NE(std::string(e.what()).find((dir / "pytorch_model.bin").string() + ": data.pkl byte 2: global 'os.system'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace

// Writes PyTorch zip checkpoints (the format torch.save has used since 1.6) without Python, for
// the tests and the pickle fuzzer: a pickle writer with one method per opcode, the pickle of a
// state dict the way torch.save lays it out, and a ZIP writer (stored entries, 64-byte aligned
// data, optionally ZIP64 records). Layout: alloy/core/torch_checkpoint.h.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace alloy::test {

class PickleWriter {
 public:
  PickleWriter& op(uint8_t opcode) {
    out_ += static_cast<char>(opcode);
    return *this;
  }
  PickleWriter& proto(uint8_t version = 2) { return op(0x80).byte(version); }
  PickleWriter& mark() { return op('('); }
  PickleWriter& stop() { return op('.'); }
  PickleWriter& global(const std::string& module, const std::string& name) {
    op('c');
    out_ += module + "\n" + name + "\n";
    return *this;
  }
  PickleWriter& unicode(const std::string& text) {  // BINUNICODE
    op('X').le(text.size(), 4);
    out_ += text;
    return *this;
  }
  // As Python's pickler writes an int: BININT1, BININT2, BININT, else LONG1 in as few bytes as hold it.
  PickleWriter& integer(int64_t value) {
    if (value >= 0 && value < 256) return op('K').byte(static_cast<uint8_t>(value));
    if (value >= 0 && value < 65536) return op('M').le(static_cast<uint64_t>(value), 2);
    if (value >= INT32_MIN && value <= INT32_MAX) return op('J').le(static_cast<uint32_t>(value), 4);
    int n = 1;
    while (n < 8 && !(value >= -(int64_t{1} << (8 * n - 1)) && value < (int64_t{1} << (8 * n - 1)))) ++n;
    return op(0x8a).byte(static_cast<uint8_t>(n)).le(static_cast<uint64_t>(value), n);
  }
  PickleWriter& int_tuple(const std::vector<int64_t>& values) {
    if (values.empty()) return op(')');
    if (values.size() > 3) mark();
    for (int64_t v : values) integer(v);
    return values.size() > 3 ? op('t') : op(static_cast<uint8_t>(0x84 + values.size()));
  }
  PickleWriter& binput(uint8_t index) { return op('q').byte(index); }
  PickleWriter& binget(uint8_t index) { return op('h').byte(index); }
  PickleWriter& byte(uint8_t value) {
    out_ += static_cast<char>(value);
    return *this;
  }
  PickleWriter& le(uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out_ += static_cast<char>((value >> (8 * i)) & 0xFF);
    return *this;
  }
  PickleWriter& raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

// One tensor of a state dict: a view of storage `key` (storage_numel elements of storage_type).
struct TorchTensor {
  std::string name;
  std::string storage_type = "FloatStorage";
  std::string key;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;  // stride empty: row-major contiguous
};

inline std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& size) {
  std::vector<int64_t> stride(size.size());
  int64_t s = 1;
  for (size_t d = size.size(); d-- > 0;) {
    stride[d] = s;
    s *= size[d];
  }
  return stride;
}

// REDUCE(_rebuild_tensor_v2, (persistent storage id, offset, size, stride, False, OrderedDict())).
inline void write_tensor(PickleWriter& p, const TorchTensor& t) {
  p.global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().unicode("storage").global("torch", t.storage_type).unicode(t.key).unicode("cpu");
  p.integer(t.storage_numel).op('t').op('Q');
  p.integer(t.offset).int_tuple(t.size).int_tuple(t.stride.empty() ? contiguous_strides(t.size) : t.stride);
  p.op(0x89).global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
}

// The pickle torch.save writes for an OrderedDict state dict: OrderedDict(), SETITEMS of
// name -> tensor, then BUILD with the _metadata attribute.
inline std::string state_dict_pickle(const std::vector<TorchTensor>& tensors) {
  PickleWriter p;
  p.proto().global("collections", "OrderedDict").op(')').op('R').mark();
  for (const auto& t : tensors) {
    p.unicode(t.name);
    write_tensor(p, t);
  }
  p.op('u').op('}').unicode("_metadata").op('}').op('s').op('b').stop();
  return p.bytes();
}

inline uint32_t crc32(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFF;
  for (const char c : bytes) {
    crc ^= static_cast<uint8_t>(c);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

struct ZipOptions {
  bool zip64 = false;      // sizes and offsets in ZIP64 extra fields and end records
  uint16_t method = 0;     // written as given (0 stored; the bytes are never compressed)
  uint16_t flags = 0;
};

// A ZIP archive of the given (name, bytes) entries, in order, data aligned to 64 bytes as
// PyTorch's writer does (padding in an extra field).
inline std::string zip_bytes(const std::vector<std::pair<std::string, std::string>>& entries,
                             const ZipOptions& options = {}) {
  std::string out, directory;
  auto le = [](std::string& s, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) s += static_cast<char>((value >> (8 * i)) & 0xFF);
  };
  for (const auto& [name, data] : entries) {
    const uint64_t local = out.size();
    const uint32_t crc = crc32(data);
    size_t padding = (64 - (local + 30 + name.size() + 4) % 64) % 64;
    le(out, 0x04034b50, 4);
    le(out, options.zip64 ? 45 : 20, 2);
    le(out, options.flags, 2);
    le(out, options.method, 2);
    le(out, 0, 4);  // time, date
    le(out, crc, 4);
    le(out, data.size(), 4);
    le(out, data.size(), 4);
    le(out, name.size(), 2);
    le(out, 4 + padding, 2);
    out += name;
    le(out, 0x4246, 2);  // "FB", PyTorch's padding field
    le(out, padding, 2);
    out += std::string(padding, 'Z');
    out += data;

    std::string extra;
    if (options.zip64) {
      le(extra, 0x0001, 2);
      le(extra, 24, 2);
      le(extra, data.size(), 8);
      le(extra, data.size(), 8);
      le(extra, local, 8);
    }
    le(directory, 0x02014b50, 4);
    le(directory, 0x031e, 2);
    le(directory, options.zip64 ? 45 : 20, 2);
    le(directory, options.flags, 2);
    le(directory, options.method, 2);
    le(directory, 0, 4);
    le(directory, crc, 4);
    le(directory, options.zip64 ? 0xFFFFFFFF : data.size(), 4);
    le(directory, options.zip64 ? 0xFFFFFFFF : data.size(), 4);
    le(directory, name.size(), 2);
    le(directory, extra.size(), 2);
    le(directory, 0, 2);  // comment
    le(directory, 0, 2);  // disk
    le(directory, 0, 2);  // internal attributes
    le(directory, 0, 4);  // external attributes
    le(directory, options.zip64 ? 0xFFFFFFFF : local, 4);
    directory += name + extra;
  }
  const uint64_t directory_offset = out.size();
  out += directory;
  if (options.zip64) {
    const uint64_t record = out.size();
    le(out, 0x06064b50, 4);
    le(out, 44, 8);
    le(out, 45, 2);
    le(out, 45, 2);
    le(out, 0, 4);
    le(out, 0, 4);
    le(out, entries.size(), 8);
    le(out, entries.size(), 8);
    le(out, directory.size(), 8);
    le(out, directory_offset, 8);
    le(out, 0x07064b50, 4);
    le(out, 0, 4);
    le(out, record, 8);
    le(out, 1, 4);
  }
  le(out, 0x06054b50, 4);
  le(out, 0, 4);
  le(out, options.zip64 ? 0xFFFF : entries.size(), 2);
  le(out, options.zip64 ? 0xFFFF : entries.size(), 2);
  le(out, options.zip64 ? 0xFFFFFFFF : directory.size(), 4);
  le(out, options.zip64 ? 0xFFFFFFFF : directory_offset, 4);
  le(out, 0, 2);
  return out;
}

// A whole checkpoint: archive/data.pkl, archive/data/<key> for each storage, archive/version.
inline std::string torch_checkpoint_bytes(const std::string& pickle,
                                          const std::vector<std::pair<std::string, std::string>>& storages,
                                          const ZipOptions& options = {}) {
  std::vector<std::pair<std::string, std::string>> entries = {{"archive/data.pkl", pickle}};
  for (const auto& [key, bytes] : storages) entries.emplace_back("archive/data/" + key, bytes);
  entries.emplace_back("archive/version", "3\n");
  return zip_bytes(entries, options);
}

}  // namespace alloy::test

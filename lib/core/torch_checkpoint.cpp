// PyTorch zip checkpoints: the restricted unpickler and the tensors it describes (rules and the
// allow-list: alloy/core/torch_checkpoint.h; docs/security.md). The unpickler only builds plain
// values (ints, strings, tuples, lists, dicts) and three kinds of records (storage classes,
// storages, tensors); no opcode or global can run anything.
#include "alloy/core/torch_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "alloy/core/error.h"
#include "alloy/core/utf8.h"
#include "reader_text.h"
#include "zip_reader.h"

namespace alloy {
namespace {

using detail::quote_name;
using detail::ZipEntry;

// Real state dicts use a stack a few values deep inside at most three marks; these bounds keep a
// hostile pickle's memory in proportion while leaving room for any real one.
constexpr size_t kMaxMarks = 256;
constexpr size_t kMaxValues = 1u << 24;  // on the stack, in the memo, and objects built
constexpr size_t kMaxDims = 64;

enum class Kind : uint8_t { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kStorage, kTensor };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "?";
}

// The callables and classes a checkpoint may name. Storage classes carry their dtype.
enum class Global : uint8_t { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kStorageClass };

struct AllowedGlobal {
  const char* module;
  const char* name;
  Global global;
  DType dtype;
};
constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", Global::kOrderedDict, DType::U8},
    {"torch._utils", "_rebuild_tensor_v2", Global::kRebuildTensorV2, DType::U8},
    {"torch._utils", "_rebuild_parameter", Global::kRebuildParameter, DType::U8},
    {"torch", "DoubleStorage", Global::kStorageClass, DType::F64},
    {"torch", "FloatStorage", Global::kStorageClass, DType::F32},
    {"torch", "HalfStorage", Global::kStorageClass, DType::F16},
    {"torch", "BFloat16Storage", Global::kStorageClass, DType::BF16},
    {"torch", "LongStorage", Global::kStorageClass, DType::I64},
    {"torch", "IntStorage", Global::kStorageClass, DType::I32},
    {"torch", "ShortStorage", Global::kStorageClass, DType::I16},
    {"torch", "CharStorage", Global::kStorageClass, DType::I8},
    {"torch", "ByteStorage", Global::kStorageClass, DType::U8},
    {"torch", "BoolStorage", Global::kStorageClass, DType::BOOL},
    {"torch", "Float8_e4m3fnStorage", Global::kStorageClass, DType::F8_E4M3},
    {"torch", "Float8_e5m2Storage", Global::kStorageClass, DType::F8_E5M2},
};

// A value on the stack or in the memo. Containers, storages and tensors live in the machine's
// arenas and are referred to by index (`ref`), so a memoized dict filled later is one dict, and
// a list that contains itself is no ownership cycle.
struct Value {
  Kind kind = Kind::kNone;
  uint32_t ref = 0;  // kString, kTuple, kList, kDict, kStorage, kTensor: arena index; kGlobal: table index
  int64_t number = 0;  // kBool, kInt; kFloat: the double's bits
};

struct Storage {
  DType dtype = DType::U8;
  std::string key;
  uint64_t numel = 0;
};

struct Tensor {
  uint32_t storage = 0;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
  uint64_t position = 0;  // of its REDUCE in data.pkl, for messages
};

class Unpickler {
 public:
  Unpickler(const uint8_t* bytes, size_t size, std::string label) : bytes_(bytes), size_(size), label_(std::move(label)) {}

  Value run();

  const std::string& string(const Value& v) const { return strings_[v.ref]; }
  const std::vector<Value>& items(const Value& v) const { return containers_[v.ref]; }
  const Storage& storage(uint32_t i) const { return storages_[i]; }
  const Tensor& tensor(const Value& v) const { return tensors_[v.ref]; }

 private:
  [[noreturn]] void fail(ErrorCode code, const std::string& message) const {
    throw Error(code, label_ + ": data.pkl byte " + std::to_string(op_position_) + ": " + message);
  }
  const uint8_t* take(uint64_t n) {
    if (n > size_ - at_) {
      fail(ErrorCode::kBadPickle, "truncated: opcode needs " + std::to_string(n) + " more bytes, " +
                                      std::to_string(size_ - at_) + " left");
    }
    const uint8_t* p = bytes_ + at_;
    at_ += n;
    return p;
  }
  uint64_t take_le(int n) {
    const uint8_t* p = take(n);
    uint64_t value = 0;
    for (int i = n - 1; i >= 0; --i) value = (value << 8) | p[i];
    return value;
  }
  std::string take_line();
  void push(Value v) {
    if (stack_.size() >= kMaxValues) fail(ErrorCode::kBadPickle, "stack holds more than 16,777,216 values");
    stack_.push_back(v);
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Value pop() {
    if (stack_.size() <= floor()) fail(ErrorCode::kBadPickle, "stack underflow");
    const Value v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value& top() {
    if (stack_.size() <= floor()) fail(ErrorCode::kBadPickle, "stack underflow");
    return stack_.back();
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) fail(ErrorCode::kBadPickle, "no MARK to pop to");
    std::vector<Value> out(stack_.begin() + static_cast<long>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return out;
  }
  void count_object() {
    if (++objects_ > kMaxValues) fail(ErrorCode::kBadPickle, "builds more than 16,777,216 objects");
  }
  Value new_container(Kind kind, std::vector<Value> items = {}) {
    count_object();
    containers_.push_back(std::move(items));
    return {kind, static_cast<uint32_t>(containers_.size() - 1), 0};
  }
  Value new_string(std::string text) {
    if (!is_valid_utf8(text)) fail(ErrorCode::kBadPickle, "string is not valid UTF-8");
    count_object();
    strings_.push_back(std::move(text));
    return {Kind::kString, static_cast<uint32_t>(strings_.size() - 1), 0};
  }
  void memo_put(uint64_t index) {
    if (memo_.size() >= kMaxValues && !memo_.count(index)) fail(ErrorCode::kBadPickle, "memo holds too many values");
    memo_[index] = top();
  }
  void memo_get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail(ErrorCode::kBadPickle, "memo index " + std::to_string(index) + " was never stored");
    push(it->second);
  }
  std::vector<Value>& container(const Value& v, Kind kind, const char* opcode) {
    if (v.kind != kind) {
      fail(ErrorCode::kBadPickle, std::string(opcode) + " on a " + kind_name(v.kind) + ", not a " + kind_name(kind));
    }
    return containers_[v.ref];
  }
  Value global(const std::string& module, const std::string& name);
  Value reduce(const Value& callable, const Value& args);
  Value persistent_load(const Value& pid);
  int64_t integer(const Value& v, const char* what) const {
    if (v.kind != Kind::kInt) fail(ErrorCode::kBadPickle, std::string(what) + " is a " + kind_name(v.kind) + ", not an int");
    return v.number;
  }
  std::vector<int64_t> int_tuple(const Value& v, const char* what) const {
    if (v.kind != Kind::kTuple) fail(ErrorCode::kBadPickle, std::string(what) + " is a " + kind_name(v.kind) + ", not a tuple");
    if (containers_[v.ref].size() > kMaxDims) fail(ErrorCode::kBadPickle, std::string(what) + " has more than 64 dimensions");
    std::vector<int64_t> out;
    for (const Value& item : containers_[v.ref]) out.push_back(integer(item, what));
    return out;
  }

  const uint8_t* bytes_;
  uint64_t size_;
  std::string label_;
  uint64_t at_ = 0, op_position_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::vector<std::vector<Value>> containers_;
  std::vector<std::string> strings_;
  std::vector<Storage> storages_;
  std::map<std::string, uint32_t> storage_by_key_;
  std::vector<Tensor> tensors_;
  size_t objects_ = 0;
};

std::string Unpickler::take_line() {
  // GLOBAL's module and name: short, newline-terminated.
  std::string line;
  while (true) {
    const char c = static_cast<char>(*take(1));
    if (c == '\n') return line;
    if (line.size() >= 256) fail(ErrorCode::kBadPickle, "GLOBAL name longer than 256 bytes");
    line += c;
  }
}

Value Unpickler::global(const std::string& module, const std::string& name) {
  for (size_t i = 0; i < std::size(kAllowedGlobals); ++i) {
    if (module == kAllowedGlobals[i].module && name == kAllowedGlobals[i].name) {
      return {Kind::kGlobal, static_cast<uint32_t>(i), 0};
    }
  }
  fail(ErrorCode::kPickleForbidden, "global " + quote_name(module + "." + name) +
                                        " is not on the allow-list (nothing in a checkpoint is executed; "
                                        "alloy reads only state dicts of tensors)");
}

Value Unpickler::reduce(const Value& callable, const Value& args_value) {
  if (callable.kind != Kind::kGlobal) fail(ErrorCode::kPickleForbidden, std::string("REDUCE on a ") + kind_name(callable.kind));
  const AllowedGlobal& what = kAllowedGlobals[callable.ref];
  const std::string name = std::string(what.module) + "." + what.name;
  if (args_value.kind != Kind::kTuple) fail(ErrorCode::kBadPickle, "REDUCE of " + name + " with arguments that are not a tuple");
  const std::vector<Value> args = containers_[args_value.ref];
  auto expect_empty_dict = [&](const Value& v, const char* role) {
    if (v.kind != Kind::kDict || !containers_[v.ref].empty()) {
      fail(ErrorCode::kBadPickle, name + ": " + role + " must be an empty dict");
    }
  };
  switch (what.global) {
    case Global::kOrderedDict:
      if (!args.empty()) fail(ErrorCode::kBadPickle, "collections.OrderedDict called with arguments");
      return new_container(Kind::kDict);
    case Global::kRebuildTensorV2: {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (args.size() != 6 && args.size() != 7) {
        fail(ErrorCode::kBadPickle, name + " takes 6 or 7 arguments, not " + std::to_string(args.size()));
      }
      if (args[0].kind != Kind::kStorage) fail(ErrorCode::kBadPickle, name + ": first argument is not a storage");
      Tensor tensor;
      tensor.storage = args[0].ref;
      tensor.offset = integer(args[1], "storage offset");
      tensor.size = int_tuple(args[2], "size");
      tensor.stride = int_tuple(args[3], "stride");
      tensor.position = op_position_;
      if (tensor.size.size() != tensor.stride.size()) fail(ErrorCode::kBadPickle, name + ": size and stride differ in length");
      if (args[4].kind != Kind::kBool) fail(ErrorCode::kBadPickle, name + ": requires_grad is not a bool");
      expect_empty_dict(args[5], "backward_hooks");
      if (args.size() == 7 && args[6].kind != Kind::kDict && args[6].kind != Kind::kNone) {
        fail(ErrorCode::kBadPickle, name + ": metadata is not a dict");
      }
      count_object();
      tensors_.push_back(std::move(tensor));
      return {Kind::kTensor, static_cast<uint32_t>(tensors_.size() - 1), 0};
    }
    case Global::kRebuildParameter:
      // (data, requires_grad, backward_hooks): the parameter is its tensor.
      if (args.size() != 3 || args[0].kind != Kind::kTensor || args[1].kind != Kind::kBool) {
        fail(ErrorCode::kBadPickle, name + " takes (tensor, bool, dict)");
      }
      expect_empty_dict(args[2], "backward_hooks");
      return args[0];
    case Global::kStorageClass:
      break;
  }
  fail(ErrorCode::kPickleForbidden, "REDUCE on " + name + " is not allowed (only OrderedDict, "
                                    "_rebuild_tensor_v2 and _rebuild_parameter are called)");
}

// ('storage', torch.<T>Storage, key, location, numel): a record data/<key> of numel T elements.
Value Unpickler::persistent_load(const Value& pid) {
  if (pid.kind != Kind::kTuple) fail(ErrorCode::kBadPickle, "persistent id is not a tuple");
  const auto& parts = containers_[pid.ref];
  if (parts.size() != 5 || parts[0].kind != Kind::kString || string(parts[0]) != "storage") {
    fail(ErrorCode::kBadPickle, "persistent id is not ('storage', type, key, location, numel)");
  }
  if (parts[1].kind != Kind::kGlobal || kAllowedGlobals[parts[1].ref].global != Global::kStorageClass) {
    fail(ErrorCode::kBadPickle, "persistent id's storage type is not a typed storage class");
  }
  if (parts[2].kind != Kind::kString || parts[3].kind != Kind::kString) {
    fail(ErrorCode::kBadPickle, "persistent id's key or location is not a string");
  }
  const int64_t numel = integer(parts[4], "storage size");
  if (numel < 0) fail(ErrorCode::kBadPickle, "storage size " + std::to_string(numel) + " is negative");
  const Storage storage{kAllowedGlobals[parts[1].ref].dtype, string(parts[2]), static_cast<uint64_t>(numel)};
  const auto [it, inserted] = storage_by_key_.emplace(storage.key, static_cast<uint32_t>(storages_.size()));
  if (inserted) {
    count_object();
    storages_.push_back(storage);
  } else {
    const Storage& known = storages_[it->second];
    if (known.dtype != storage.dtype || known.numel != storage.numel) {
      fail(ErrorCode::kBadPickle, "storage " + quote_name(storage.key) + " is named twice with different types or sizes");
    }
  }
  return {Kind::kStorage, it->second, 0};
}

const char* forbidden_opcode_name(uint8_t op) {
  switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'P': return "PERSID";
    case 0x82: case 0x83: case 0x84: return "EXT";
    case 'B': case 'C': case 0x8e: return "BINBYTES";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 0x90: return "EMPTY_SET";
    case 0x91: return "FROZENSET";
    case 'I': case 'L': case 'F': case 'S': case 'V': return "a text-protocol (0) opcode";
    default: return nullptr;
  }
}

Value Unpickler::run() {
  while (at_ < size_) {
    op_position_ = at_;
    const uint8_t op = *take(1);
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t version = *take(1);
        if (version > 5) fail(ErrorCode::kBadPickle, "pickle protocol " + std::to_string(version) + " is unknown");
        break;
      }
      case 0x95:  // FRAME: a length prefix only
        if (take_le(8) > size_ - at_) fail(ErrorCode::kBadPickle, "FRAME longer than the rest of data.pkl");
        break;
      case '(':  // MARK
        if (marks_.size() >= kMaxMarks) fail(ErrorCode::kBadPickle, "nests deeper than 256 MARKs");
        marks_.push_back(stack_.size());
        break;
      case '.': {  // STOP
        return pop();
      }
      case '}': push(new_container(Kind::kDict)); break;
      case ']': push(new_container(Kind::kList)); break;
      case ')': push(new_container(Kind::kTuple)); break;
      case 't': push(new_container(Kind::kTuple, pop_mark())); break;
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        std::vector<Value> items(op - 0x84);
        for (size_t i = items.size(); i-- > 0;) items[i] = pop();
        push(new_container(Kind::kTuple, std::move(items)));
        break;
      }
      case 'J': push({Kind::kInt, 0, static_cast<int32_t>(static_cast<uint32_t>(take_le(4)))}); break;
      case 'K': push({Kind::kInt, 0, static_cast<int64_t>(take_le(1))}); break;
      case 'M': push({Kind::kInt, 0, static_cast<int64_t>(take_le(2))}); break;
      case 0x8a: {  // LONG1: n bytes, little-endian two's complement
        const uint8_t n = *take(1);
        if (n > 8) fail(ErrorCode::kBadPickle, "integer of " + std::to_string(n) + " bytes is too large");
        uint64_t bits = n ? take_le(n) : 0;
        if (n > 0 && n < 8 && (bits >> (8 * n - 1)) & 1) bits |= ~uint64_t{0} << (8 * n);  // sign-extend
        push({Kind::kInt, 0, static_cast<int64_t>(bits)});
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        const uint8_t* p = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
        push({Kind::kFloat, 0, static_cast<int64_t>(bits)});
        break;
      }
      case 'X': case 0x8c: case 0x8d: {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
        const uint64_t length = take_le(op == 'X' ? 4 : op == 0x8c ? 1 : 8);
        const uint8_t* p = take(length);
        push(new_string(std::string(reinterpret_cast<const char*>(p), length)));
        break;
      }
      case 'N': push({Kind::kNone, 0, 0}); break;
      case 0x88: push({Kind::kBool, 0, 1}); break;
      case 0x89: push({Kind::kBool, 0, 0}); break;
      case 'q': memo_put(take_le(1)); break;
      case 'r': memo_put(take_le(4)); break;
      case 0x94: memo_put(memo_.size()); break;
      case 'h': memo_get(take_le(1)); break;
      case 'j': memo_get(take_le(4)); break;
      case 'a': {  // APPEND
        const Value item = pop();
        container(top(), Kind::kList, "APPEND").push_back(item);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<Value> items = pop_mark();
        auto& list = container(top(), Kind::kList, "APPENDS");
        list.insert(list.end(), items.begin(), items.end());
        break;
      }
      case 's': {  // SETITEM
        const Value value = pop(), key = pop();
        auto& dict = container(top(), Kind::kDict, "SETITEM");
        dict.push_back(key);
        dict.push_back(value);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<Value> items = pop_mark();
        if (items.size() % 2 != 0) fail(ErrorCode::kBadPickle, "SETITEMS with an odd number of values");
        auto& dict = container(top(), Kind::kDict, "SETITEMS");
        dict.insert(dict.end(), items.begin(), items.end());
        break;
      }
      case 'c': {  // GLOBAL
        const std::string module = take_line();
        const std::string name = take_line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        const Value name = pop(), module = pop();
        if (name.kind != Kind::kString || module.kind != Kind::kString) {
          fail(ErrorCode::kBadPickle, "STACK_GLOBAL of values that are not strings");
        }
        push(global(string(module), string(name)));
        break;
      }
      case 'R': {  // REDUCE
        const Value args = pop(), callable = pop();
        push(reduce(callable, args));
        break;
      }
      case 'Q': push(persistent_load(pop())); break;  // BINPERSID
      case 'b': {  // BUILD: only the attribute dict of an OrderedDict (state_dict()._metadata)
        const Value state = pop();
        if (top().kind != Kind::kDict) {
          fail(ErrorCode::kPickleForbidden, std::string("BUILD on a ") + kind_name(top().kind) + " is not allowed");
        }
        if (state.kind != Kind::kDict && state.kind != Kind::kNone) {
          fail(ErrorCode::kPickleForbidden, std::string("BUILD with a ") + kind_name(state.kind) + " state is not allowed");
        }
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02X", op);
        const char* name = forbidden_opcode_name(op);
        fail(ErrorCode::kPickleForbidden, std::string("opcode ") + hex + (name ? std::string(" (") + name + ")" : "") +
                                              " is not on the allow-list");
      }
    }
  }
  op_position_ = at_;
  fail(ErrorCode::kBadPickle, "ends without STOP");
}

// Checks one tensor against its storage record and returns where its bytes lie in the file.
TensorInfo place_tensor(const std::string& name, const Tensor& tensor, const Storage& storage, const ZipEntry& record,
                        const std::string& label) {
  auto refuse = [&](const std::string& message) {
    throw Error(ErrorCode::kBadPickle, label + ": tensor " + quote_name(name) + ": " + message);
  };
  const uint64_t element = dtype_bits(storage.dtype) / 8;
  uint64_t storage_bytes = 0;
  if (__builtin_mul_overflow(storage.numel, element, &storage_bytes) || storage_bytes != record.size) {
    refuse("storage " + quote_name(storage.key) + " declares " + std::to_string(storage.numel) + " elements of " +
           dtype_name(storage.dtype) + " but its record holds " + std::to_string(record.size) + " bytes");
  }
  TensorInfo info;
  info.name = name;
  info.dtype = storage.dtype;
  if (tensor.offset < 0) refuse("storage offset " + std::to_string(tensor.offset) + " is negative");
  uint64_t numel = 1;
  for (const int64_t d : tensor.size) {
    if (d < 0) refuse("size " + std::to_string(d) + " is negative");
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) refuse("element count overflows 64 bits");
    info.shape.push_back(static_cast<uint64_t>(d));
  }
  if (numel > 0) {
    // Row-major contiguous: each stride is the product of the sizes after it (any stride is
    // right for a dimension of size 1). numel does not overflow, so neither does the product.
    int64_t expected = 1;
    for (size_t d = tensor.size.size(); d-- > 0;) {
      if (tensor.size[d] != 1 && tensor.stride[d] != expected) {
        refuse("is not contiguous (stride " + std::to_string(tensor.stride[d]) + " in dimension " + std::to_string(d) +
               ", expected " + std::to_string(expected) + "); save it after .contiguous()");
      }
      expected *= tensor.size[d];
    }
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(static_cast<uint64_t>(tensor.offset), numel, &end) || end > storage.numel) {
    refuse("offset " + std::to_string(tensor.offset) + " + " + std::to_string(numel) + " elements run past its storage " +
           quote_name(storage.key) + " of " + std::to_string(storage.numel) + " elements");
  }
  // Both fit in the record, which fits in the file: no overflow.
  info.data_begin = record.data_offset + static_cast<uint64_t>(tensor.offset) * element;
  info.data_end = info.data_begin + numel * element;
  return info;
}

}  // namespace

bool looks_like_zip(const uint8_t* bytes, size_t size) {
  return size >= 4 && std::memcmp(bytes, "PK\3\4", 4) == 0;
}

SafetensorsHeader parse_torch_checkpoint(const uint8_t* bytes, size_t size, const std::string& label) {
  if (size >= 2 && bytes[0] == 0x80 && bytes[1] <= 5) {
    throw Error(ErrorCode::kBadZip, label + ": a bare pickle (torch.save's format before PyTorch 1.6, or "
                                            "_use_new_zipfile_serialization=False) is not read; re-save it "
                                            "with a current torch.save or as safetensors");
  }
  const std::vector<ZipEntry> entries = detail::read_zip_directory(bytes, size, label);
  // The archive's folder is whatever holds data.pkl ("archive/" since torch 1.13, the file's stem before).
  const ZipEntry* pickle = nullptr;
  for (const auto& entry : entries) {
    const size_t slash = entry.name.find('/');
    if (slash != std::string::npos && entry.name.substr(slash) == "/data.pkl") {
      if (pickle) throw Error(ErrorCode::kBadZip, label + ": two data.pkl records (" + quote_name(pickle->name) +
                                                      " and " + quote_name(entry.name) + ")");
      pickle = &entry;
    }
  }
  if (!pickle) throw Error(ErrorCode::kBadZip, label + ": no <archive>/data.pkl record: not a PyTorch checkpoint");
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - std::strlen("data.pkl"));
  std::unordered_map<std::string_view, const ZipEntry*> by_name;
  for (const auto& entry : entries) by_name.emplace(entry.name, &entry);
  if (const auto it = by_name.find(prefix + "byteorder"); it != by_name.end()) {
    const std::string_view order(reinterpret_cast<const char*>(bytes + it->second->data_offset), it->second->size);
    if (order != "little") {
      throw Error(ErrorCode::kBadPickle, label + ": byteorder is " + quote_name(order.substr(0, 16)) +
                                             "; only little-endian checkpoints are read");
    }
  }
  if (pickle->size > kMaxPickleBytes) {
    throw Error(ErrorCode::kBadPickle, label + ": data.pkl is " + std::to_string(pickle->size) +
                                           " bytes, more than the 268,435,456 read");
  }

  Unpickler unpickler(bytes + pickle->data_offset, pickle->size, label);
  const Value root = unpickler.run();
  if (root.kind != Kind::kDict) {
    throw Error(ErrorCode::kBadPickle, label + ": data.pkl holds a " + std::string(kind_name(root.kind)) +
                                           ", not a state dict of tensors");
  }
  SafetensorsHeader header;
  header.format = WeightsFormat::kTorchZip;
  std::set<std::string_view> names;
  const auto& items = unpickler.items(root);
  for (size_t i = 0; i + 1 < items.size(); i += 2) {
    const Value& key = items[i];
    const Value& value = items[i + 1];
    if (key.kind != Kind::kString || unpickler.string(key).empty()) {
      throw Error(ErrorCode::kBadPickle, label + ": state dict key " + std::to_string(i / 2) + " is not a non-empty string");
    }
    const std::string& name = unpickler.string(key);
    if (!names.insert(name).second) {
      throw Error(ErrorCode::kDuplicateTensor, label + ": tensor " + quote_name(name) + " appears twice");
    }
    if (value.kind != Kind::kTensor) {
      throw Error(ErrorCode::kBadPickle, label + ": entry " + quote_name(name) + " is a " + kind_name(value.kind) +
                                             ", not a tensor");
    }
    const Tensor& tensor = unpickler.tensor(value);
    const Storage& storage = unpickler.storage(tensor.storage);
    const auto record = by_name.find(prefix + "data/" + storage.key);
    if (record == by_name.end()) {
      throw Error(ErrorCode::kBadPickle, label + ": tensor " + quote_name(name) + ": storage record " +
                                             quote_name(prefix + "data/" + storage.key) + " is missing");
    }
    header.tensors.push_back(place_tensor(name, tensor, storage, *record->second, label));
  }
  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  return header;
}

}  // namespace alloy

#include "header_json.h"

#include <unordered_set>
#include <vector>

#include "reader_text.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

const std::string kNoKey;

// Builds one top-level entry's DOM at a time and hands it on, checking depth and key uniqueness.
// Depth is the number of enclosing containers: tensor names and "__metadata__" are keys at depth
// 1 (tracked in a hash set, since there may be a million), the keys of their entries at depth 2
// and deeper (tracked by the entry's own small objects).
class HeaderSax : public nlohmann::json_sax<json> {
 public:
  HeaderSax(const HeaderEntryHandler& on_entry, size_t expected_entries) : on_entry_(on_entry) {
    top_keys_.reserve(expected_entries);
  }

  bool null() override { return add(json(nullptr)); }
  bool boolean(bool value) override { return add(json(value)); }
  bool number_integer(number_integer_t value) override { return add(json(value)); }
  bool number_unsigned(number_unsigned_t value) override { return add(json(value)); }
  bool number_float(number_float_t value, const string_t&) override { return add(json(value)); }
  bool string(string_t& value) override { return add(json(std::move(value))); }
  bool binary(binary_t& value) override { return add(json::binary(value)); }

  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& key) override {
    if (stack_.size() == 1) {
      const auto [it, inserted] = top_keys_.insert(std::move(key));
      if (inserted) {
        top_key_ = &*it;  // set nodes stay put when the set rehashes
        return true;
      }
      // `it` is the earlier, equal key (`key` may have been moved from).
      if (*it == "__metadata__") throw ParseAbort{ErrorCode::kBadMetadata, "__metadata__ appears twice"};
      throw ParseAbort{ErrorCode::kDuplicateTensor, "tensor " + quote_name(*it) + " appears twice"};
    }
    // One lookup in the open object both detects a repeat and makes the slot the value will fill.
    auto& object = stack_.back()->get_ref<json::object_t&>();
    const auto [slot, inserted] = object.emplace(key, nullptr);
    if (inserted) {
      pending_slot_ = &slot->second;
      return true;
    }
    if (*top_key_ == "__metadata__") {
      throw ParseAbort{ErrorCode::kBadMetadata, "__metadata__ key " + quote_name(key) + " appears twice"};
    }
    throw ParseAbort{ErrorCode::kUnknownKey, tensor_label(*top_key_) + "key " + quote_name(key) + " appears twice"};
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& error) override {
    throw ParseAbort{ErrorCode::kHeaderNotJson, std::string("header is not valid JSON: ") + error.what()};
  }

 private:
  // Places a value where the parser is: the root (only the header's own object), a top-level
  // entry, the pending key of the open object, or the end of the open array.
  json* place(json value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    if (stack_.size() == 1) {
      entry_ = std::move(value);
      return &entry_;
    }
    json& container = *stack_.back();
    if (container.is_object()) return &(*pending_slot_ = std::move(value));
    container.push_back(std::move(value));
    return &container.back();
  }
  bool add(json value) {
    place(std::move(value));
    if (stack_.size() == 1) on_entry_(*top_key_, std::move(entry_));
    return true;
  }
  bool open(json container) {
    if (stack_.size() >= size_t(kMaxHeaderDepth)) throw ParseAbort{ErrorCode::kHeaderNotJson, "header nests too deeply"};
    stack_.push_back(place(std::move(container)));
    return true;
  }
  bool close() {
    stack_.pop_back();
    if (stack_.size() == 1) on_entry_(*top_key_, std::move(entry_));
    return true;
  }

  const HeaderEntryHandler& on_entry_;
  json root_;                 // the header's object, which stays empty: entries are handed on
  json entry_;                // the top-level entry being built
  std::vector<json*> stack_;  // the open containers, outermost first
  std::unordered_set<std::string> top_keys_;
  const std::string* top_key_ = &kNoKey;  // the top-level key whose value is being parsed
  json* pending_slot_ = nullptr;  // the open object's slot for the key just read
};

}  // namespace

std::string tensor_label(const std::string& name) {
  return "tensor " + quote_name(name) + ": ";
}

void parse_header_entries(const char* begin, const char* end, const HeaderEntryHandler& on_entry) {
  // A tensor entry takes at least ~60 bytes of JSON; reserving for that many avoids rehashing.
  HeaderSax sax(on_entry, size_t(end - begin) / 64);
  json::sax_parse(begin, end, &sax);
}

}  // namespace alloy::detail

// chat_template: auto | <name> | <jinja text> (mergekit's merge.py, _set_chat_template): a name is
// one of the templates below, each written from the format its model family publishes; `auto`
// takes the template most of the input models carry; any other value must look like a Jinja
// template (at least 20 characters and a '{'), else the recipe is refused.
#include "chat_template.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "alloy/core/file_util.h"

namespace alloy::detail {
namespace {

// Each template renders `messages` (role, content) and, with add_generation_prompt, opens the
// assistant's turn; bos_token and eos_token come from the tokenizer, as transformers provides them.
const std::map<std::string, std::string>& named_templates() {
  static const std::map<std::string, std::string> templates = {
      // ChatML (OpenAI; Qwen, Hermes): <|im_start|>ROLE\nTEXT<|im_end|>\n per message.
      {"chatml",
       "{% for message in messages %}"
       "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
       "{% endfor %}"
       "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
      // Llama 3: <|start_header_id|>ROLE<|end_header_id|>\n\nTEXT<|eot_id|>, after the BOS token.
      {"llama3",
       "{{ bos_token }}"
       "{% for message in messages %}"
       "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
       "message['content'] | trim"
       " + '<|eot_id|>' }}"
       "{% endfor %}"
       "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' "
       "}}{% endif %}"},
      // Mistral instruct: <s>[INST] USER [/INST] ASSISTANT</s>; a system message opens the next
      // user turn.
      {"mistral",
       "{{ bos_token }}{% set system = namespace(text='') %}"
       "{% for message in messages %}"
       "{% if message['role'] == 'system' %}{% set system.text = message['content'] + '\\n\\n' %}"
       "{% elif message['role'] == 'user' %}{{ '[INST] ' + system.text + message['content'] + ' "
       "[/INST]' }}"
       "{% set system.text = '' %}"
       "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
       "{% endif %}"
       "{% endfor %}"},
      // Alpaca: ### Instruction: / ### Response: blocks, a system message as the preamble.
      {"alpaca",
       "{% for message in messages %}"
       "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
       "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + "
       "'\\n\\n' }}"
       "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + "
       "eos_token + '\\n\\n' }}"
       "{% endif %}"
       "{% endfor %}"
       "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"},
      // EXAONE (LG AI): [|system|]TEXT[|endofturn|]\n, [|user|]TEXT\n,
      // [|assistant|]TEXT[|endofturn|]\n.
      {"exaone",
       "{% for message in messages %}"
       "{% if message['role'] == 'system' %}{{ '[|system|]' + message['content'] + "
       "'[|endofturn|]\\n' }}"
       "{% elif message['role'] == 'user' %}{{ '[|user|]' + message['content'] + '\\n' }}"
       "{% elif message['role'] == 'assistant' %}{{ '[|assistant|]' + message['content'] + "
       "'[|endofturn|]\\n' }}"
       "{% endif %}"
       "{% endfor %}"
       "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"},
  };
  return templates;
}

std::string trimmed(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

}  // namespace

std::vector<std::string> chat_template_names() {
  std::vector<std::string> names;
  for (const auto& [name, text] : named_templates()) names.push_back(name);
  return names;
}

std::optional<std::string> chat_template_choice(const std::string& value, std::string* problem) {
  if (value == "auto") return value;
  if (const auto it = named_templates().find(value); it != named_templates().end())
    return it->second;
  if (value.size() < 20 || value.find('{') == std::string::npos) {
    std::string names;
    for (const auto& name : chat_template_names()) names += (names.empty() ? "" : ", ") + name;
    *problem = "chat_template '" + value + "' is neither auto, a known template (" + names +
               ") nor a Jinja template (at least 20 characters with a '{')";
    return std::nullopt;
  }
  return value;
}

std::string model_chat_template(const std::filesystem::path& model_dir) {
  std::error_code ec;
  const auto jinja = model_dir / "chat_template.jinja";
  if (std::filesystem::is_regular_file(jinja, ec)) return trimmed(read_text_file(jinja));
  const auto config = model_dir / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config, ec)) return "";
  const nlohmann::json doc = nlohmann::json::parse(read_text_file(config), nullptr, false);
  if (!doc.is_object() || !doc.contains("chat_template")) return "";
  const nlohmann::json& t = doc["chat_template"];
  if (t.is_string()) return trimmed(t.get<std::string>());
  if (t.is_array()) {  // [{"name": ..., "template": ...}]: the one named "default"
    for (const auto& entry : t) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        return trimmed(entry["template"].get<std::string>());
    }
  }
  return "";
}

std::optional<std::string> most_common_chat_template(
    const std::vector<std::filesystem::path>& model_dirs) {
  std::vector<std::pair<std::string, size_t>> counts;  // first-seen order breaks ties
  for (const auto& dir : model_dirs) {
    const std::string text = model_chat_template(dir);
    if (text.empty()) continue;
    auto it =
        std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == text; });
    if (it == counts.end()) {
      counts.emplace_back(text, 1);
    } else {
      ++it->second;
    }
  }
  if (counts.empty()) return std::nullopt;
  auto best = counts.begin();
  for (auto it = counts.begin(); it != counts.end(); ++it) {
    if (it->second > best->second) best = it;
  }
  return best->first;
}

}  // namespace alloy::detail

// The recipe's chat_template (lib/merge/chat_template.cpp). Internal to lib/merge.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace alloy::detail {

// The names of the built-in templates (alpaca, chatml, exaone, llama3, mistral), sorted.
std::vector<std::string> chat_template_names();

// What a recipe's chat_template value stands for: "auto" as is, a known name's template text, or
// the value itself when it looks like a Jinja template; nullopt (with *problem set) otherwise.
std::optional<std::string> chat_template_choice(const std::string& value, std::string* problem);

// A model directory's chat template, trimmed: chat_template.jinja, else tokenizer_config.json's
// "chat_template" (a string, or the entry named "default" of a list); "" when it has none.
std::string model_chat_template(const std::filesystem::path& model_dir);

// The template most of the models carry (ties: the first in the given order); nullopt if none has
// one.
std::optional<std::string> most_common_chat_template(
    const std::vector<std::filesystem::path>& model_dirs);

}  // namespace alloy::detail

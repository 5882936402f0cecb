// The model card as the Hugging Face Hub reads it: the front matter's fields, one by one, and the
// license a merge inherits from its parents' cards.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "alloy/merge/merge.h"
#include "alloy/merge/model_card.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"
#include "tiny_model.h"

namespace {

namespace fs = std::filesystem;

// The front matter of a card: each top-level key with its scalar value or its list items.
struct FrontMatter {
  std::map<std::string, std::string> scalars;
  std::map<std::string, std::vector<std::string>> lists;
};

FrontMatter parse_front_matter(const std::string& card) {
  FrontMatter fm;
  std::istringstream in(card);
  std::string line, key;
  EXPECT_TRUE(std::getline(in, line) && line == "---") << card;
  while (std::getline(in, line) && line != "---") {
    if (line.rfind("- ", 0) == 0) {
      fm.lists[key].push_back(line.substr(2));
      continue;
    }
    const size_t colon = line.find(':');
    EXPECT_NE(colon, std::string::npos) << line;
    key = line.substr(0, colon);
    const std::string value = colon + 1 < line.size() ? line.substr(colon + 2) : "";
    if (!value.empty()) fm.scalars[key] = value;
  }
  EXPECT_EQ(line, "---") << "the front matter ends";
  return fm;
}

void tiny(const fs::path& dir, uint64_t seed, const std::string& license) {
  alloy::synth_base_model(dir, alloy::test::tiny_model(seed));
  if (!license.empty()) std::ofstream(dir / "README.md") << "---\nlanguage: en\nlicense: " << license << "\n---\n# model\n";
}

TEST(ModelCardHub, FrontMatterHasEveryFieldTheHubReads) {
  alloy::ModelCardInfo info;
  info.merge_method = "slerp";
  info.base_model = "base";
  info.models = {"base", "ft_a+lora_x"};
  info.parents = {"acme/base", "ft_a", "acme/base"};
  info.license = "apache-2.0";
  info.recipe_yaml = "merge_method: slerp\n";
  const FrontMatter fm = parse_front_matter(alloy::render_model_card(info));
  EXPECT_EQ(fm.lists.at("base_model"), (std::vector<std::string>{"acme/base", "ft_a"}));
  EXPECT_EQ(fm.scalars.at("base_model_relation"), "merge");
  EXPECT_EQ(fm.scalars.at("license"), "apache-2.0");
  EXPECT_EQ(fm.scalars.at("library_name"), "transformers");
  EXPECT_EQ(fm.lists.at("tags"), (std::vector<std::string>{"merge", "mergekit", "alloy"}));
}

TEST(ModelCardHub, LicenseIsReadFromTheFrontMatterOnly) {
  EXPECT_EQ(alloy::front_matter_license("---\nlicense: mit\n---\n"), "mit");
  EXPECT_EQ(alloy::front_matter_license("---\r\ntags:\r\n- x\r\nlicense: \"llama3.1\"\r\n---\r\n"), "llama3.1");
  EXPECT_EQ(alloy::front_matter_license("---\nlicense: other # see LICENSE\n---\n"), "other");
  EXPECT_EQ(alloy::front_matter_license("---\ntags: [a]\n---\nlicense: mit\n"), "") << "after the front matter";
  EXPECT_EQ(alloy::front_matter_license("# title\nlicense: mit\n"), "") << "no front matter";
  EXPECT_EQ(alloy::front_matter_license("---\n  license: mit\n---\n"), "") << "not top-level";
}

TEST(ModelCardHub, AMergeInheritsTheLicenseItsParentsAgreeOnAndNamesThemAsTheHubDoes) {
  alloy::test::TempDir dir;
  tiny(dir / "a", 1, "apache-2.0");
  tiny(dir / "b", 2, "'apache-2.0'");
  tiny(dir / "c", 3, "mit");
  auto merge = [&](const std::string& second, const std::string& out) {
    const std::string recipe = "merge_method: linear\nmodels:\n  - model: " + (dir / "a").string() +
                               "\n    parameters: {weight: 0.5}\n  - model: " + second +
                               "\n    parameters: {weight: 0.5}\n";
    alloy::PlanOptions plan_options;
    plan_options.base_dir = dir.path();
    alloy::MergePlan plan = alloy::plan_merge(alloy::parse_recipe(recipe, "card.yml"), plan_options);
    alloy::MergeOptions options;
    options.out_dir = dir / out;
    alloy::run_merge(plan, options);
    return std::make_pair(plan.warnings, recipe);
  };
  const auto [agreed_warnings, recipe] = merge("b", "agreed");
  const std::string card = alloy::test::read_bytes(dir / "agreed" / "README.md");
  const FrontMatter agreed = parse_front_matter(card);
  EXPECT_EQ(agreed.scalars.at("license"), "apache-2.0");
  // An absolute path and a relative one: both are named by their folder, no path published.
  EXPECT_EQ(agreed.lists.at("base_model"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(card.find("* " + dir.path().string()), std::string::npos) << "only the recipe holds the path";
  EXPECT_NE(card.find("## Merge Details"), std::string::npos);
  EXPECT_NE(card.find("[Linear](https://arxiv.org/abs/2203.05482) merge method"), std::string::npos);
  EXPECT_NE(card.find("* a\n* b\n"), std::string::npos) << card;
  EXPECT_NE(card.find("```yaml\n" + recipe + "```\n"), std::string::npos) << card;
  EXPECT_EQ(alloy::test::read_bytes(dir / "agreed" / "mergekit_config.yml"), recipe);
  for (const auto& w : agreed_warnings) EXPECT_EQ(w.find("license"), std::string::npos) << w;

  const auto [disagreed_warnings, unused] = merge("c", "disagreed");
  EXPECT_EQ(parse_front_matter(alloy::test::read_bytes(dir / "disagreed" / "README.md")).scalars.at("license"),
            "other");
  bool warned = false;
  for (const auto& w : disagreed_warnings) {
    warned = warned || (w.find("a: apache-2.0, c: mit") != std::string::npos && w.find("license: other") != std::string::npos);
  }
  EXPECT_TRUE(warned) << "a warning names each parent's license";

  // A parent without a card is no agreement either.
  fs::remove(dir / "c" / "README.md");
  const alloy::InheritedLicense none = alloy::inherited_license({{"a", dir / "a"}, {"c", dir / "c"}});
  EXPECT_EQ(none.license, "other");
  EXPECT_NE(none.warning.find("c: none"), std::string::npos) << none.warning;
  // A README that links outside its model folder is not read.
  fs::create_symlink(dir / "a" / "README.md", dir / "c" / "README.md");
  const alloy::InheritedLicense linked = alloy::inherited_license({{"c", dir / "c"}});
  EXPECT_EQ(linked.license, "other") << "a's apache-2.0 is not read through the link";
  EXPECT_EQ(linked.warning, "") << "no parent declares a license: nothing to warn about";
}

}  // namespace

// Bad recipes: each is refused before any tensor is read, with a message that names the problem
// and the YAML line (and column) where it is.
#include <gtest/gtest.h>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"
#include "test_utils.h"

namespace {

struct BadRecipe {
  const char* name;
  std::string yaml;
  int line;                 // expected line in "bad.yml:LINE:COLUMN: " (0: "bad.yml: ", no position)
  const char* message;      // expected text in the message
};

const std::string kTies = "merge_method: ties\nbase_model: models/base\n";

std::vector<BadRecipe> bad_recipes() {
  return {
      {"InvalidYaml", "merge_method: linear\nmodels: [a, b\n", 3, "not valid YAML"},
      {"NotAMapping", "- just\n- a list\n", 1, "a recipe is a YAML mapping"},
      {"NoMethod", "models:\n  - model: models/ft_a\n", 1, "no merge_method"},
      {"UnknownMethodWithSuggestion", "merge_method: dare-ties\nmodels: [models/ft_a]\n", 1,
       "unknown merge_method 'dare-ties' (did you mean 'dare_ties'?)"},
      {"UnknownTopKey", "merge_method: linear\nmodels: [models/ft_a]\nbase_modle: models/base\n", 3,
       "unknown key 'base_modle' in the recipe (did you mean 'base_model'?)"},
      {"DuplicateKey", "merge_method: linear\nmerge_method: slerp\nmodels: [models/ft_a]\n", 2,
       "key 'merge_method' appears twice"},
      {"ModelsAndSlices",
       "merge_method: passthrough\nmodels: [models/ft_a]\nslices:\n  - sources:\n      - model: models/ft_a\n"
       "        layer_range: [0, 2]\n",
       3, "use one of models, slices or modules"},
      {"NoModels", "merge_method: linear\ndtype: bfloat16\n", 1, "lists no models"},
      {"UnknownParameter",
       "merge_method: linear\nmodels:\n  - model: models/ft_a\n    parameters:\n      wieght: 0.5\n", 5,
       "unknown key 'wieght' in parameters of linear (did you mean 'weight'?)"},
      {"ParameterOfAnotherMethod", "merge_method: linear\nmodels: [models/ft_a]\nparameters:\n  t: 0.5\n", 4,
       "unknown key 't' in parameters of linear"},
      {"MethodParameterOnAModel",
       kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n      normalize: true\n", 7,
       "'normalize' is a parameter of the whole merge"},
      {"NotANumber", "merge_method: linear\nmodels:\n  - model: models/ft_a\n    parameters:\n      weight: heavy\n",
       5, "must be a number or true/false, not 'heavy'"},
      {"EmptyGradient", "merge_method: linear\nmodels:\n  - model: models/ft_a\n    parameters:\n      weight: []\n", 5,
       "a gradient needs at least one value"},
      {"FilterWithoutValue",
       "merge_method: slerp\nbase_model: models/base\nmodels: [models/base, models/ft_a]\nparameters:\n  t:\n"
       "    - filter: mlp\n",
       6, "filter entry has no 'value'"},
      {"BadDtype", "merge_method: linear\nmodels: [models/ft_a]\ndtype: float8\n", 3,
       "dtype 'float8' is not one of"},
      {"TokenizerSourceAndBlock", "merge_method: linear\nmodels: [models/ft_a]\ntokenizer_source: union\n"
       "tokenizer: {source: base}\n", 4, "use either tokenizer_source or tokenizer"},
      {"RevisionOnAPath", "merge_method: linear\nmodels:\n  - model: ./models/ft_a@main\n", 3,
       "'@revision' belongs to Hub ids"},
      {"BadLayerRange",
       "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n        layer_range: [3, 1]\n",
       5, "layer_range must be two whole numbers"},
      // Found by the recipe fuzzer: 1e32 was converted to int before the range was checked (UB).
      {"HugeLayerRange",
       "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n"
       "        layer_range: [0, 111111111111111111111111111111111]\n",
       5, "layer_range must be two whole numbers with 0 <= begin < end <= 1048576"},
      {"NanLayerRange",
       "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n        layer_range: [.nan, 2]\n",
       5, "layer_range must be two whole numbers"},
      {"SliceSourceWithoutRange", "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n", 4,
       "needs layer_range"},
      // Values out of range, refused at parse time rather than at the last tensor.
      {"NanWeight", kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: .nan\n", 6,
       "parameter 'weight' is .nan; it must be a finite number"},
      {"InfiniteDensity",
       kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n      density: .inf\n", 7,
       "parameter 'density' is .inf; it must be a finite number"},
      {"DensityAboveOne",
       kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n      density: 1.5\n", 7,
       "parameter 'density' is 1.5; it must be between 0 and 1"},
      {"NanDensityInAFilter",
       kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n      density:\n"
               "        - filter: mlp\n          value: .nan\n        - value: 0.5\n",
       9, "parameter 'density' is .nan"},
      {"DensityGradientPointAboveOne",
       kTies + "models:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n      density: [0.5, 2]\n", 7,
       "parameter 'density' gradient entry is 2; it must be between 0 and 1"},
      {"NanEpsilon",
       "merge_method: della\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n    parameters:\n"
       "      weight: 1\n      epsilon: .nan\n",
       7, "parameter 'epsilon' is .nan"},
      {"NegativeSlerpT", "merge_method: slerp\nbase_model: models/base\nmodels: [models/base, models/ft_a]\n"
                         "parameters:\n  t: -0.5\n", 5, "parameter 't' is -0.5; it must be between 0 and 1"},
      {"HugeSlerpT", "merge_method: slerp\nbase_model: models/base\nmodels: [models/base, models/ft_a]\n"
                     "parameters:\n  t: 1e10\n", 5, "parameter 't' is 1e10; it must be between 0 and 1"},
      // Text that is not one UTF-8 YAML document of reasonable size.
      {"TwoDocuments", "merge_method: linear\nmodels: [models/ft_a]\n---\nmerge_method: slerp\n", 3,
       "a recipe is one YAML document, but a second one starts here"},
      {"ContentAfterTheEndMarker", "---\nmerge_method: linear\nmodels: [models/ft_a]\n...\nname: other\n", 5,
       "a second one starts here"},
      {"NulByte", std::string("merge_method: linear\nmodels: [models/ft\0a]\n", 43), 2, "contains a NUL byte"},
      {"Utf16", std::string("\xFF\xFEm\0e\0", 6), 0, "the recipe is UTF-16; save it as UTF-8"},
      {"NotUtf8", "merge_method: linear\nmodels: [models/\xC3\x28]\n", 0, "not valid UTF-8"},
      {"DeepBrackets", "merge_method: linear\nmodels: " + std::string(100, '[') + std::string(100, ']') + "\n", 2,
       "brackets nest deeper than 64 levels"},
      {"BillionLaughs",
       "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
       "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
       "merge_method: linear\nmodels: *h\n",
       0, "expands to more than 200000 YAML nodes"},
      {"KeyThatIsAList", "merge_method: linear\nmodels: [models/ft_a]\n? [a, b]\n: 1\n", 3, "bad conversion"},
      // The rest need the models (planning), still before any tensor is read.
      {"MissingModel", "merge_method: linear\nmodels:\n  - model: models/nope\n    parameters:\n      weight: 1\n", 3,
       "cannot use model 'models/nope'"},
      // Longer than a path may be (ENAMETOOLONG): a recipe error, not a std::filesystem_error (fuzzer).
      {"ModelNameTooLongForAPath", "merge_method: linear\nmodels:\n  - model: models/" + std::string(5000, 'x') +
       "\n    parameters:\n      weight: 1\n", 3, "cannot use model"},
      {"AdapterNameTooLongForAPath", "merge_method: linear\nmodels:\n  - model: models/ft_a+" + std::string(5000, 'x') +
       "\n    parameters:\n      weight: 1\n", 3, "cannot apply LoRA adapter"},
      {"LayerRangeOutOfBounds",
       "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n        layer_range: [2, 6]\n",
       4, "out of bounds: the model has 4 layers"},
      {"SliceLengthsDiffer",
       "merge_method: slerp\nbase_model: models/base\nparameters:\n  t: 0.5\nslices:\n  - sources:\n"
       "      - model: models/base\n        layer_range: [0, 4]\n      - model: models/ft_a\n        layer_range: [0, 3]\n",
       9, "same number of layers"},
      {"MissingRequiredWeight", "merge_method: linear\nmodels:\n  - model: models/ft_a\n  - model: models/ft_b\n", 3,
       "has no value for 'weight'"},
      {"MissingT", "merge_method: slerp\nbase_model: models/base\nmodels: [models/base, models/ft_a]\n", 1,
       "slerp needs parameter 't'"},
      {"NoBaseForTies", "merge_method: ties\nmodels:\n  - model: models/ft_a\n    parameters:\n      weight: 1\n", 1,
       "ties needs a base_model"},
  };
}

void PrintTo(const BadRecipe& c, std::ostream* os) { *os << c.name; }

class RecipeError : public ::testing::TestWithParam<BadRecipe> {};

TEST_P(RecipeError, IsRefusedWithLineAndMessage) {
  const BadRecipe& c = GetParam();
  alloy::PlanOptions options;
  options.base_dir = std::string(alloy::test::data_dir()) + "/golden";
  try {
    alloy::plan_merge(alloy::parse_recipe(c.yaml, "bad.yml"), options);
    FAIL() << c.name << " was accepted";
  } catch (const alloy::Error& e) {
    const std::string message = e.what();
    const std::string prefix = c.line > 0 ? "bad.yml:" + std::to_string(c.line) + ":" : "bad.yml: ";
    EXPECT_EQ(message.rfind(prefix, 0), 0u) << "expected line " << c.line << ": " << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

INSTANTIATE_TEST_SUITE_P(Table, RecipeError, ::testing::ValuesIn(bad_recipes()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(RecipeErrorTable, HasAtLeastFifteenCases) { EXPECT_GE(bad_recipes().size(), 15u); }

}  // namespace

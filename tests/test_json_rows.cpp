// JSON / JSON-lines reader tests. The fixture files come from HF datasets
// (tools/python/make_parquet_fixtures.py) with the cells HF datasets reads back from them; the
// small inline documents below check the error paths, each against the exact row and column.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "data/json_rows.h"
#include "data/table.h"
#include "kernels/error.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using namespace testing_support;

namespace fs = std::filesystem;

// Writes `text` to a temporary file named `name` and removes it when the test is done with it.
struct TempFile {
  std::string path;
  TempFile(const std::string& name, const std::string& text)
      : path(
            (fs::temp_directory_path() / ("cst_test_json_" + std::to_string(getpid()) + "_" + name))
                .string()) {
    std::ofstream(path, std::ios::binary) << text;
  }
  ~TempFile() { fs::remove(path); }
};

void expect_matches_fixture(const Table& table, const std::string& expected_name) {
  std::ifstream stream(parquet_fixture(expected_name));
  ASSERT_TRUE(stream) << "missing " << expected_name
                      << ": run tools/python/make_parquet_fixtures.py";
  const nlohmann::json expected = nlohmann::json::parse(stream);
  ASSERT_EQ(table.num_rows, expected["num_rows"].get<int64_t>());
  ASSERT_EQ(table.columns.size(), expected["columns"].size());
  for (size_t i = 0; i < table.columns.size(); ++i) {
    const Column& column = table.columns[i];
    const nlohmann::json& want = expected["columns"][i];
    EXPECT_EQ(column.name, want["name"].get<std::string>());
    ASSERT_EQ(column.is_integer, want["kind"] == "integer") << column.name;
    ASSERT_EQ(column.is_messages, want["kind"] == "messages") << column.name;
    for (int64_t row = 0; row < table.num_rows; ++row) {
      const nlohmann::json& cell = want["values"][row];
      if (column.is_messages)
        EXPECT_EQ(column.messages.at(row), expected_messages(cell)) << column.name << " " << row;
      else if (column.is_integer)
        EXPECT_EQ(column.integers.at(row),
                  cell.is_null() ? std::nullopt : std::optional(cell.get<int64_t>()));
      else
        EXPECT_EQ(column.text.at(row),
                  cell.is_null() ? std::nullopt : std::optional(cell.get<std::string>()));
    }
  }
}

TEST(JsonRows, HfDatasetsJsonLinesMatchesDatasetsReadback) {
  expect_matches_fixture(read_table(parquet_fixture("hf_datasets.jsonl"), {}), "hf_datasets.expected.json");
}

TEST(JsonRows, JsonArrayMatchesDatasetsReadback) {
  expect_matches_fixture(read_table(parquet_fixture("rows_array.json"), {}), "rows_array.expected.json");
}

TEST(JsonRows, MessageListsMatchDatasetsReadback) {
  expect_matches_fixture(read_table(parquet_fixture("messages_hf.jsonl"), {}), "messages_hf.expected.json");
  expect_matches_fixture(read_table(parquet_fixture("messages_array.json"), {}),
                         "messages_array.expected.json");
}

// Missing or null role/content read as null (as HF datasets reads them); other keys are ignored.
TEST(JsonRows, MessageListCells) {
  const TempFile file("messages.jsonl",
                      "{\"m\": [{\"role\": \"user\", \"content\": \"hé\", \"name\": 3}]}\n"
                      "{\"m\": []}\n{\"m\": null}\n{}\n"
                      "{\"m\": [{\"content\": \"x\"}, {\"role\": null, \"content\": \"\"}]}\n");
  const Table table = read_table(file.path, {"m"});
  const Column& column = *table.find("m");
  EXPECT_TRUE(column.is_messages);
  const std::vector<std::optional<Messages>> expected = {
      Messages{{"user", "hé"}},
      Messages{},
      std::nullopt,
      std::nullopt,
      Messages{{std::nullopt, "x"}, {std::nullopt, ""}},
  };
  EXPECT_EQ(column.messages, expected);

  const TempFile not_object("bad_message.jsonl", "{\"m\": [{\"role\": \"user\"}, \"hi\"]}\n");
  std::string message = error_of([&] { read_table(not_object.path, {}); });
  EXPECT_TRUE(contains(message, "row 0 (line 1), column 'm', message 1 is a string, expected an "
                                "object with role and content"))
      << message;
  const TempFile bad_role("bad_role.json", R"([{"m": [{"role": 1, "content": "c"}]}])");
  message = error_of([&] { read_table(bad_role.path, {}); });
  EXPECT_TRUE(contains(message, "row 0, column 'm', message 0 has an integer for 'role'"))
      << message;
  const TempFile mixed("mixed_messages.json", R"([{"m": []}, {"m": "text"}])");
  message = error_of([&] { read_table(mixed.path, {}); });
  EXPECT_TRUE(contains(message, "row 1, column 'm' holds a string but row 0 holds an array of "
                                "messages"))
      << message;
}

TEST(JsonRows, NullsMissingKeysAndKinds) {
  const TempFile file("kinds.json", R"([
    {"prompt": "hé 🙂", "n": 5, "extra": 1.5},
    {"prompt": null, "n": -9007199254740993},
    {"n": null, "prompt": ""}
  ])");
  const Table table = read_table(file.path, {"n", "prompt"});
  EXPECT_EQ(table.columns_in_source, (std::vector<std::string>{"prompt", "n", "extra"}));
  ASSERT_EQ(table.num_rows, 3);
  const Column& n = *table.find("n");
  EXPECT_TRUE(n.is_integer);
  EXPECT_EQ(n.integers, (std::vector<std::optional<int64_t>>{5, -9007199254740993, std::nullopt}));
  const Column& prompt = *table.find("prompt");
  EXPECT_FALSE(prompt.is_integer);
  EXPECT_EQ(prompt.text, (std::vector<std::optional<std::string>>{"hé 🙂", std::nullopt, ""}));
  // 'extra' holds a float, which is only an error once it is asked for.
  const std::string message = error_of([&] { read_table(file.path, {"extra"}); });
  EXPECT_TRUE(contains(message, "row 0, column 'extra'") && contains(message, "non-integer number"))
      << message;
}

TEST(JsonRows, JsonLinesUnderJsonNameWithBlankLines) {
  const TempFile file("lines.json", "{\"a\": \"x\", \"b\": 1}\n\n{\"a\": \"y\", \"b\": 2}\r\n");
  const Table table = read_table(file.path, {});
  ASSERT_EQ(table.num_rows, 2);
  EXPECT_EQ(table.find("a")->text, (std::vector<std::optional<std::string>>{"x", "y"}));
  EXPECT_EQ(table.find("b")->integers, (std::vector<std::optional<int64_t>>{1, 2}));
}

TEST(JsonRows, ErrorsNameRowColumnAndPosition) {
  const TempFile bad_array("bad.json", "[\n  {\"a\": \"x\"},\n  {\"a\": tru}\n]");
  std::string message = error_of([&] { read_table(bad_array.path, {}); });
  EXPECT_TRUE(contains(message, "invalid JSON at line 3, column")) << message;

  const TempFile bad_line("bad.jsonl", "{\"a\": \"x\"}\n{\"a\": \"y\"}\n{\"a\" \"z\"}\n");
  message = error_of([&] { read_table(bad_line.path, {}); });
  EXPECT_TRUE(contains(message, "invalid JSON at line 3, column 8: syntax error")) << message;

  const TempFile nested("nested.jsonl", "{\"a\": \"x\"}\n{\"a\": {\"b\": 2}}\n");
  message = error_of([&] { read_table(nested.path, {}); });
  EXPECT_TRUE(contains(message, "row 1 (line 2), column 'a' holds an object")) << message;

  const TempFile mixed("mixed.json", R"([{"a": null}, {"a": 3}, {"a": "three"}])");
  message = error_of([&] { read_table(mixed.path, {}); });
  EXPECT_TRUE(contains(message, "row 2, column 'a' holds a string but row 1 holds an integer"))
      << message;

  const TempFile boolean("bool.json", R"([{"a": true}])");
  EXPECT_TRUE(contains(error_of([&] { read_table(boolean.path, {}); }), "holds a boolean"));

  const TempFile huge("huge.json", R"([{"a": 18446744073709551615}])");
  EXPECT_TRUE(contains(error_of([&] { read_table(huge.path, {}); }), "beyond int64"));

  const TempFile not_rows("scalar.json", R"([{"a": 1}, 7])");
  EXPECT_TRUE(contains(error_of([&] { read_table(not_rows.path, {}); }),
                       "row 1 is an integer, expected a JSON object"));

  const TempFile lfs("pointer.json",
                     "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n");
  EXPECT_TRUE(contains(error_of([&] { read_table(lfs.path, {}); }), "git lfs pull"));
}

// The multitask CST dataset, when the shared data directory is present (it is never copied here).
TEST(JsonRows, ConfigurableSystemPromptMultitaskDataset) {
  const std::string path =
      std::string(CST_SOURCE_DIR) + "/../shared/data/configurable-system-prompt-multitask.json";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is absent (shared data directory not mounted)";
  const Table table = read_table(path, {});
  EXPECT_EQ(table.num_rows, 1952);
  EXPECT_EQ(table.columns_in_source,
            (std::vector<std::string>{"system", "prompt", "chosen", "rejected", "task"}));
  for (const char* name : {"system", "prompt", "chosen", "rejected", "task"}) {
    const Column* column = table.find(name);
    ASSERT_NE(column, nullptr) << name;
    EXPECT_FALSE(column->is_integer) << name;
    EXPECT_EQ(int64_t(column->text.size()), table.num_rows) << name;
    EXPECT_TRUE(std::all_of(column->text.begin(), column->text.end(),
                            [](const auto& cell) { return cell.has_value(); }))
        << name << " has nulls";
  }
}

}  // namespace
}  // namespace cst

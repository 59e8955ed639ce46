// Parquet reader tests against files written by pyarrow and HF datasets
// (tools/python/make_parquet_fixtures.py; make_message_fixtures.py rewrites some into parquet's
// legacy list forms): every cell of every fixture is compared with what pyarrow reads back from
// the same file. Exact equality: strings are bytes and integers are exact.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <tuple>

#include <nlohmann/json.hpp>

#include "data/parquet.h"
#include "data/table.h"
#include "kernels/error.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using namespace testing_support;

namespace fs = std::filesystem;

nlohmann::json load_expected(const std::string& name) {
  std::ifstream stream(parquet_fixture(name + ".expected.json"));
  EXPECT_TRUE(stream) << "missing " << name
                      << ".expected.json: run tools/python/make_parquet_fixtures.py";
  return nlohmann::json::parse(stream);
}

size_t expect_message_column_matches(const Column& column, const nlohmann::json& values) {
  EXPECT_TRUE(column.is_messages) << column.name;
  EXPECT_TRUE(column.text.empty() && column.integers.empty()) << column.name;
  EXPECT_EQ(column.messages.size(), values.size()) << column.name;
  size_t compared = 0;
  for (size_t row = 0; row < std::min(column.messages.size(), values.size()); ++row, ++compared)
    EXPECT_EQ(column.messages[row], expected_messages(values[row]))
        << column.name << " row " << row;
  return compared;
}

// Compares one column with the expected {"name", "kind", "values"} record; returns cells compared.
size_t expect_column_matches(const Column& column, const nlohmann::json& expected) {
  EXPECT_EQ(column.name, expected["name"].get<std::string>());
  if (expected["kind"] == "messages") return expect_message_column_matches(column, expected["values"]);
  EXPECT_FALSE(column.is_messages) << column.name;
  const bool integer = expected["kind"] == "integer";
  EXPECT_EQ(column.is_integer, integer) << column.name;
  const nlohmann::json& values = expected["values"];
  const size_t size = integer ? column.integers.size() : column.text.size();
  EXPECT_EQ(size, values.size()) << column.name;
  EXPECT_TRUE(integer ? column.text.empty() : column.integers.empty()) << column.name;
  size_t compared = 0;
  for (size_t row = 0; row < std::min(size, values.size()); ++row, ++compared) {
    const nlohmann::json& want = values[row];
    if (integer) {
      if (want.is_null())
        EXPECT_FALSE(column.integers[row].has_value()) << column.name << " row " << row;
      else
        EXPECT_EQ(column.integers[row], std::optional(want.get<int64_t>()))
            << column.name << " row " << row;
    } else {
      if (want.is_null())
        EXPECT_FALSE(column.text[row].has_value()) << column.name << " row " << row;
      else
        EXPECT_EQ(column.text[row], std::optional(want.get<std::string>()))
            << column.name << " row " << row;
    }
  }
  return compared;
}

size_t expect_table_matches(const Table& table, const nlohmann::json& expected) {
  EXPECT_EQ(table.num_rows, expected["num_rows"].get<int64_t>());
  EXPECT_EQ(table.columns.size(), expected["columns"].size());
  size_t compared = 0;
  for (size_t i = 0; i < std::min(table.columns.size(), expected["columns"].size()); ++i)
    compared += expect_column_matches(table.columns[i], expected["columns"][i]);
  return compared;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
}

std::string write_temp(const std::string& name, const std::vector<uint8_t>& bytes) {
  const fs::path path =
      fs::temp_directory_path() / ("cst_test_parquet_" + std::to_string(getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return path.string();
}

class ParquetGolden : public testing::TestWithParam<std::string> {};

TEST_P(ParquetGolden, EveryCellMatchesPyarrow) {
  const Table table = read_table(parquet_fixture(GetParam() + ".parquet"), {});
  const nlohmann::json expected = load_expected(GetParam());
  const size_t cells = expect_table_matches(table, expected);
  size_t expected_cells = 0;
  for (const auto& column : expected["columns"]) expected_cells += column["values"].size();
  EXPECT_EQ(cells, expected_cells);
  EXPECT_EQ(table.columns_in_source.size(), expected["columns"].size());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParquetGolden,
                         testing::Values("plain_uncompressed_v1", "dictionary_snappy_v1",
                                         "dictionary_gzip_v2", "plain_zstd_v2", "pyarrow_defaults",
                                         "dictionary_fallback", "delta_encodings_v1",
                                         "delta_encodings_v2", "required_large_string",
                                         "unsigned_integers", "all_null", "zero_rows",
                                         "hf_datasets", "messages_dictionary_v1",
                                         "messages_plain_v2", "messages_required",
                                         "messages_extra_field", "messages_hf",
                                         "messages_two_level", "messages_one_level"));

TEST(ParquetShards, DirectoryAndGlobReadShardsInNameOrder) {
  const nlohmann::json expected = load_expected("shards");
  const Table from_directory = read_table(parquet_fixture("shards"), {});
  expect_table_matches(from_directory, expected);
  const Table from_glob = read_table(parquet_fixture("shards/train-*-of-00002.parquet"), {});
  expect_table_matches(from_glob, expected);
  EXPECT_TRUE(contains(from_glob.source, "2 files")) << from_glob.source;
  EXPECT_TRUE(contains(error_of([] { read_table(parquet_fixture("shards/test-*.parquet"), {}); }),
                       "no files match"));
}

TEST(ParquetColumns, SelectedColumnsComeInRequestOrderAndAbsentOnesAreSkipped) {
  const Table table = read_table(parquet_fixture("dictionary_snappy_v1.parquet"),
                                 {"label", "no_such_column", "id", "label"});
  EXPECT_EQ(table.columns_in_source, (std::vector<std::string>{"id", "small", "text", "label"}));
  ASSERT_EQ(table.columns.size(), 2u);
  const nlohmann::json expected = load_expected("dictionary_snappy_v1");
  expect_column_matches(table.columns[0], expected["columns"][3]);
  expect_column_matches(table.columns[1], expected["columns"][0]);
  EXPECT_EQ(table.find("id"), &table.columns[1]);
  EXPECT_EQ(table.find("text"), nullptr);
}

// The 'text' chunk of this file is zeroed: a reader that touched it would fail.
TEST(ParquetColumns, OnlyTheRequestedColumnChunksAreRead) {
  const nlohmann::json expected = load_expected("corrupt_text_chunk");
  expect_table_matches(read_table(parquet_fixture("corrupt_text_chunk.parquet"), {"id", "small", "label"}),
                       expected);
  const std::string message =
      error_of([] { read_table(parquet_fixture("corrupt_text_chunk.parquet"), {"text"}); });
  EXPECT_TRUE(contains(message, "column 'text'")) << message;
}

TEST(ParquetMessages, ChatColumnReadsBesideARefusedDoubleColumn) {
  const std::string path = parquet_fixture("nested_chat.parquet");
  const Table table = read_table(path, {"messages", "prompt"});
  EXPECT_EQ(table.columns_in_source, (std::vector<std::string>{"prompt", "messages", "score"}));
  ASSERT_EQ(table.columns.size(), 2u);
  // The fixture's rows: [user: hi], [user: hello, assistant: hey], null.
  const std::vector<std::optional<Messages>> expected = {
      Messages{{"user", "hi"}},
      Messages{{"user", "hello"}, {"assistant", "hey"}},
      std::nullopt,
  };
  EXPECT_EQ(table.columns[0].messages, expected);
  expect_column_matches(table.columns[1], load_expected("nested_chat")["columns"][0]);
  const std::string message = error_of([&] { read_table(path, {"score"}); });
  EXPECT_TRUE(contains(message, "'score'") && contains(message, "DOUBLE")) << message;
}

// Other nested shapes are refused with the column's name and its schema, which says what it is.
TEST(ParquetMessages, OtherNestedShapesAreRefusedByName) {
  const std::string path = parquet_fixture("messages_other_nested.parquet");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tags", "whose elements are not structs"},
      {"pair", "that is not a list"},
      {"numbered", "whose 'role' or 'content' is not a string"},
      {"no_content", "without both 'role' and 'content'"},
  };
  for (const auto& [name, shape] : cases) {
    const std::string message = error_of([&] { read_table(path, {name}); });
    EXPECT_TRUE(contains(message, "column '" + name + "' is a nested column (") &&
                contains(message, shape) && contains(message, "list<struct<role: string"))
        << message;
  }
  const std::string message = error_of([&] { read_table(path, {"tags"}); });
  EXPECT_TRUE(contains(message, "optional group tags { repeated group list { optional "
                                "BYTE_ARRAY element } }"))
      << message;
  expect_table_matches(read_table(path, {"title"}), load_expected("messages_other_nested"));
}

// Whether a LIST's repeated group is the message or wraps it follows LogicalTypes.md's
// backward-compatibility rules, as pyarrow reads them: with role and content it is the message
// whatever its name ('prompt': "prompt_tuple"); with one field it wraps the message unless it is
// named "array" or "..._tuple" ('legacy': Hive's "bag"). Those names make the one field a struct
// around the message, not a message list ('wrapped', 'nested', and 'foreign', a name pyarrow reads
// so though the specification's "<list>_tuple" would not); without the LIST annotation the group
// is a struct ('unannotated').
TEST(ParquetMessages, RepeatedGroupNamesDecideTheListForm) {
  const std::string path = parquet_fixture("messages_two_level_names.parquet");
  const nlohmann::json expected = load_expected("messages_two_level_names");
  const Table table = read_table(path, {"id", "prompt", "legacy"});
  EXPECT_EQ(table.columns_in_source,
            (std::vector<std::string>{"id", "prompt", "legacy", "wrapped", "nested", "foreign",
                                      "unannotated"}));
  EXPECT_EQ(expect_table_matches(table, expected), 3 * expected["num_rows"].get<size_t>());
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"wrapped", "array", "without both 'role' and 'content'"},
      {"nested", "nested_tuple", "without both 'role' and 'content'"},
      {"foreign", "turns_tuple", "without both 'role' and 'content'"},
      {"unannotated", "list", "that is not a list"},
  };
  for (const auto& [name, repeated, shape] : cases) {
    const std::string message = error_of([&] { read_table(path, {name}); });
    EXPECT_TRUE(contains(message, "column '" + name + "' is a nested column (optional group " +
                                      name + " { repeated group " + repeated +
                                      " { required group element { optional BYTE_ARRAY role; "
                                      "optional BYTE_ARRAY content } } })") &&
                contains(message, shape))
        << message;
  }
}

// The legacy fixtures hold what the golden comparison needs: two-level lists null, empty and
// with null roles and contents; one-level lists empty (they cannot be null).
TEST(ParquetMessages, LegacyListFixturesHoldEveryShape) {
  for (const std::string name : {"messages_two_level", "messages_one_level"}) {
    const Table table = read_table(parquet_fixture(name + ".parquet"), {"prompt", "chosen"});
    size_t nulls = 0, empty = 0, null_fields = 0, messages = 0;
    for (const Column& column : table.columns) {
      for (const auto& cell : column.messages) {
        nulls += !cell;
        empty += cell && cell->empty();
        for (const Message& message : cell.value_or(Messages{})) {
          null_fields += !message.role + !message.content;
          ++messages;
        }
      }
    }
    EXPECT_EQ(nulls > 0, name == "messages_two_level") << name;
    EXPECT_GT(empty, 0u) << name;
    EXPECT_GT(null_fields, 0u) << name;
    EXPECT_GT(messages, 2 * size_t(table.num_rows)) << name;
  }
}

// The golden comparison only means something if the fixture holds every shape: null lists, empty
// lists, lists of several messages and a message longer than a page.
TEST(ParquetMessages, FixtureHoldsEveryShape) {
  const Table table = read_table(parquet_fixture("messages_dictionary_v1.parquet"), {"prompt", "chosen"});
  size_t messages = 0, nulls = 0, empty = 0;
  for (const auto& cell : table.find("prompt")->messages) {
    nulls += !cell;
    empty += cell && cell->empty();
    messages += cell ? cell->size() : 0;
  }
  EXPECT_GT(nulls, 0u);
  EXPECT_GT(empty, 0u);
  EXPECT_GT(messages, table.find("prompt")->messages.size());
  ASSERT_TRUE(table.find("chosen")->messages[0]);
  EXPECT_GT((*table.find("chosen")->messages[0])[0].content->size(), 6000u);
}

TEST(ParquetErrors, UnsupportedCodecIsNamed) {
  const std::string message = error_of([] { read_table(parquet_fixture("lz4.parquet"), {}); });
  EXPECT_TRUE(contains(message, "LZ4") && contains(message, "column '")) << message;
}

TEST(ParquetErrors, GitLfsPointerSaysToPull) {
  const std::string message = error_of([] { read_table(parquet_fixture("git_lfs_pointer.parquet"), {}); });
  EXPECT_TRUE(contains(message, "git-LFS pointer") && contains(message, "git lfs pull")) << message;
}

TEST(ParquetErrors, EncryptedFooterMagicIsNamed) {
  std::vector<uint8_t> bytes = read_bytes(parquet_fixture("pyarrow_defaults.parquet"));
  std::copy_n("PARE", 4, bytes.end() - 4);
  const std::string path = write_temp("encrypted.parquet", bytes);
  const std::string message = error_of([&] { read_table(path, {}); });
  fs::remove(path);
  EXPECT_TRUE(contains(message, "encrypted")) << message;
}

TEST(ParquetErrors, MissingAndTruncatedFiles) {
  EXPECT_TRUE(
      contains(error_of([] { read_table(parquet_fixture("no_such_file.parquet"), {}); }), "cannot open"));
  const std::vector<uint8_t> bytes = read_bytes(parquet_fixture("pyarrow_defaults.parquet"));
  const std::string path =
      write_temp("truncated.parquet", {bytes.begin(), bytes.begin() + bytes.size() / 2});
  const std::string message = error_of([&] { read_table(path, {}); });
  fs::remove(path);
  EXPECT_TRUE(contains(message, "PAR1")) << message;
}

// Truncated and byte-flipped fixtures must either read or throw cst::Error: never crash, never
// read out of bounds (the suite is also run under -fsanitize=address), never throw anything else.
TEST(ParquetErrors, CorruptBytesNeverCrash) {
  const std::vector<std::string> names = {
      "plain_uncompressed_v1", "dictionary_snappy_v1",   "dictionary_gzip_v2",
      "plain_zstd_v2",         "dictionary_fallback",    "delta_encodings_v1",
      "delta_encodings_v2",    "required_large_string",  "messages_dictionary_v1",
      "messages_plain_v2",     "messages_required",      "messages_hf",
      "messages_two_level",    "messages_one_level"};
  std::mt19937 random(1234);
  int mutations = 0, refused = 0;
  for (const std::string& name : names) {
    const std::vector<uint8_t> original = read_bytes(parquet_fixture(name + ".parquet"));
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<uint8_t> bytes = original;
      if (trial < 10) {
        bytes.resize(std::uniform_int_distribution<size_t>(0, bytes.size() - 1)(random));
      } else {
        // Half the flips land in the footer (the last eighth), where one byte steers the whole
        // parse.
        const size_t low = trial % 2 ? 0 : bytes.size() - bytes.size() / 8;
        const int flips = std::uniform_int_distribution<int>(1, 3)(random);
        for (int i = 0; i < flips; ++i) {
          const size_t at = std::uniform_int_distribution<size_t>(low, bytes.size() - 1)(random);
          bytes[at] ^= uint8_t(std::uniform_int_distribution<int>(1, 255)(random));
        }
      }
      const std::string path = write_temp("mutated.parquet", bytes);
      ++mutations;
      try {
        const Table table = read_table(path, {});
        for (const Column& column : table.columns)
          EXPECT_EQ(int64_t(column.is_messages  ? column.messages.size()
                            : column.is_integer ? column.integers.size()
                                                : column.text.size()),
                    table.num_rows)
              << name << " trial " << trial;
      } catch (const Error&) {
        ++refused;
      } catch (const std::exception& error) {
        ADD_FAILURE() << name << " trial " << trial << ": threw a non-cst error: " << error.what();
      }
      fs::remove(path);
    }
  }
  EXPECT_EQ(mutations, int(names.size()) * 50);
  EXPECT_GT(refused, mutations / 2);  // most mutations must be caught, not silently read
  std::printf("corrupt parquet files: %d mutations, %d refused with cst::Error, %d read\n",
              mutations, refused, mutations - refused);
}

}  // namespace
}  // namespace cst

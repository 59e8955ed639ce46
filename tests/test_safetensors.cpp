// model/safetensors: files written by Python's safetensors and transformers are read value for
// value (fixtures from tools/python/make_safetensors_fixtures.py); the writer is byte-identical
// to Python's; every kind of malformed file is an Error, and so is any random damage (fuzz).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "kernels/error.h"
#include "kernels/tensor.h"
#include "model/safetensors.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using namespace testing_support;

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFixtures = std::string(CST_SOURCE_DIR) + "/tests/fixtures/safetensors/";

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

// A safetensors file from its parts: the 8-byte length, the header text and the data bytes.
std::string safetensors_bytes(const std::string& header, const std::string& data,
                              uint64_t header_length) {
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &header_length, 8);
  return bytes + header + data;
}

std::string make_file(const std::string& header, const std::string& data) {
  std::string path = current_test_dir() + "/case.safetensors";
  write_bytes(path, safetensors_bytes(header, data, header.size()));
  return path;
}

void expect_rejected(const std::string& path, const std::string& fragment) {
  try {
    SafetensorsFile file(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const Error& error) {
    std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos)
        << "expected '" << fragment << "' in: " << message;
  }
}

// Element i of a tensor whose data may be unaligned inside the mapping.
template <class T>
T element(const TensorInfo& tensor, int64_t i) {
  T value;
  std::memcpy(&value, tensor.data + sizeof(T) * i, sizeof(T));
  return value;
}

double value_at(const TensorInfo& tensor, int64_t i) {
  switch (tensor.dtype) {
    case DType::f32: return element<float>(tensor, i);
    case DType::i32: return element<int32_t>(tensor, i);
    case DType::bf16: return bf16_to_f32(element<uint16_t>(tensor, i));
    case DType::f16: return f16_to_f32(element<uint16_t>(tensor, i));
    case DType::u8: return element<uint8_t>(tensor, i);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Reading what Python wrote

TEST(Safetensors, ReadsEveryValuePythonWrote) {
  json expected = json::parse(read_bytes(kFixtures + "dtypes_expected.json"));
  SafetensorsFile file(kFixtures + "dtypes.safetensors");
  auto metadata = expected["metadata"].get<std::map<std::string, std::string>>();
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), expected["tensors"].size());
  for (const auto& [name, want] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    const TensorInfo* tensor = file.find(name);
    ASSERT_NE(tensor, nullptr);
    EXPECT_EQ(safetensors_dtype_name(tensor->dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(tensor->shape, want["shape"].get<std::vector<int64_t>>());
    ASSERT_EQ(tensor->numel(), int64_t(want["values"].size()));
    EXPECT_EQ(tensor->nbytes, size_t(tensor->numel()) * dtype_size(tensor->dtype));
    // Exact: every stored value is exactly representable in its dtype and in float64.
    for (int64_t i = 0; i < tensor->numel(); ++i)
      EXPECT_EQ(value_at(*tensor, i), want["values"][i].get<double>()) << "element " << i;
  }
  EXPECT_EQ(file.find("no_such_tensor"), nullptr);
}

TEST(Safetensors, TensorsComeInFileOrder) {
  SafetensorsFile file(kFixtures + "dtypes.safetensors");
  for (size_t i = 1; i < file.tensors().size(); ++i)
    EXPECT_LE(file.tensors()[i - 1].data + file.tensors()[i - 1].nbytes, file.tensors()[i].data);
}

TEST(Safetensors, RefusesDtypesItDoesNotRead) {
  std::string path = kFixtures + "f64.safetensors";
  expect_rejected(path, "F64");
  expect_rejected(path, "'doubles'");
}

// The tiny model transformers saved in two shards with model.safetensors.index.json.
TEST(Safetensors, ReadsShardedCheckpointOfTransformers) {
  json expected = json::parse(read_bytes(kFixtures + "tiny_hf_expected.json"));
  SafetensorsSet weights(kFixtures + "tiny_hf");
  ASSERT_EQ(weights.tensors().size(), expected.size());
  for (const auto& [name, want] : expected.items()) {
    SCOPED_TRACE(name);
    const TensorInfo& tensor = weights.get(name);
    EXPECT_EQ(safetensors_dtype_name(tensor.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(tensor.shape, want["shape"].get<std::vector<int64_t>>());
    double sum = 0, sum_of_squares = 0;
    for (int64_t i = 0; i < tensor.numel(); ++i) {
      sum += value_at(tensor, i);
      sum_of_squares += value_at(tensor, i) * value_at(tensor, i);
    }
    // Sums of a few thousand float64 terms in another order agree to ~1e-13 relative.
    EXPECT_NEAR(sum, want["sum"].get<double>(), 1e-9 * (1 + std::abs(sum)));
    EXPECT_NEAR(sum_of_squares, want["sum_of_squares"].get<double>(), 1e-9 * (1 + sum_of_squares));
    for (size_t i = 0; i < want["first_values"].size(); ++i)
      EXPECT_EQ(value_at(tensor, int64_t(i)), want["first_values"][i].get<double>());
  }
  EXPECT_THROW(weights.get("model.layers.9.mlp.up_proj.weight"), Error);
  // The index file itself, and one shard on its own, open too.
  EXPECT_EQ(SafetensorsSet(kFixtures + "tiny_hf/model.safetensors.index.json").tensors().size(),
            expected.size());
  EXPECT_LT(SafetensorsSet(kFixtures + "tiny_hf/model-00002-of-00002.safetensors").tensors().size(),
            expected.size());
}

TEST(Safetensors, RefusesIndexNamingMissingShardOrTensor) {
  std::string directory = current_test_dir();
  fs::copy(kFixtures + "tiny_hf", directory, fs::copy_options::recursive);
  json index = json::parse(read_bytes(directory + "/model.safetensors.index.json"));
  index["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";  // it is in 2
  write_bytes(directory + "/model.safetensors.index.json", index.dump());
  EXPECT_THROW(SafetensorsSet{directory}, Error);
  fs::remove(directory + "/model-00002-of-00002.safetensors");
  index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors";
  write_bytes(directory + "/model.safetensors.index.json", index.dump());
  EXPECT_THROW(SafetensorsSet{directory}, Error);
  index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors";
  write_bytes(directory + "/model.safetensors.index.json", index.dump());
  EXPECT_THROW(SafetensorsSet{directory}, Error);
  fs::remove(directory + "/model.safetensors.index.json");
  EXPECT_THROW(SafetensorsSet{directory}, Error);  // no weights at all
}

TEST(Safetensors, ExcludedPrefixHidesTensors) {
  SafetensorsSet weights(kFixtures + "dtypes.safetensors", "empty_");
  EXPECT_EQ(weights.find("empty_f32"), nullptr);
  EXPECT_NE(weights.find("scalar_f32"), nullptr);
  EXPECT_EQ(weights.tensors().size(),
            SafetensorsFile(kFixtures + "dtypes.safetensors").tensors().size() - 2);
}

// ---------------------------------------------------------------------------------------------
// Malformed files: one test per kind of damage

const char* kOneTensor = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsMalformed, ValidBaselineLoads) {
  SafetensorsFile file(make_file(kOneTensor, std::string(8, '\0')));
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.tensors()[0].nbytes, 8u);
}

TEST(SafetensorsMalformed, FileShorterThanLengthField) {
  std::string path = current_test_dir() + "/short.safetensors";
  write_bytes(path, "abc");
  expect_rejected(path, "8-byte header length");
}

TEST(SafetensorsMalformed, HeaderLengthOverLimit) {
  std::string path = current_test_dir() + "/huge.safetensors";
  write_bytes(path, safetensors_bytes(kOneTensor, std::string(8, '\0'), 200'000'000));
  expect_rejected(path, "100 MB");
}

TEST(SafetensorsMalformed, HeaderLengthPastEndOfFile) {
  std::string path = current_test_dir() + "/past.safetensors";
  write_bytes(path, safetensors_bytes(kOneTensor, "", 4096));
  expect_rejected(path, "past the end of the file");
}

TEST(SafetensorsMalformed, HeaderNotJson) {
  expect_rejected(make_file(R"({"a": {"dtype": "F32",)", ""), "not valid JSON");
}

TEST(SafetensorsMalformed, HeaderNotAnObject) {
  expect_rejected(make_file("[1, 2, 3]", ""), "must be a JSON object");
}

TEST(SafetensorsMalformed, EntryNotAnObject) {
  expect_rejected(make_file(R"({"a": [0, 8]})", ""), "'a': entry must be an object");
}

TEST(SafetensorsMalformed, EntryWithUnexpectedKey) {
  expect_rejected(make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})", "z"),
                  "unexpected key 'x'");
}

TEST(SafetensorsMalformed, OffsetsOutOfBounds) {
  expect_rejected(make_file(kOneTensor, std::string(4, '\0')), "run past the end of the data");
}

TEST(SafetensorsMalformed, OffsetsMalformed) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", ""),
                  "two non-negative integers");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", ""),
                  "end before they begin");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", ""),
                  "two non-negative integers");
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                                "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            std::string(12, '\0')),
                  "overlaps tensor 'a'");
}

TEST(SafetensorsMalformed, HoleBetweenTensors) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                                "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                            std::string(12, '\0')),
                  "hole of 4 bytes before tensor 'b'");
}

TEST(SafetensorsMalformed, BytesAfterLastTensor) {
  expect_rejected(make_file(kOneTensor, std::string(12, '\0')), "4 bytes after the last tensor");
}

TEST(SafetensorsMalformed, SizeMismatch) {
  expect_rejected(
      make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
      "needs 12");
}

TEST(SafetensorsMalformed, DuplicateNames) {
  expect_rejected(make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},
                                "a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                            "xy"),
                  "duplicate key 'a'");
}

TEST(SafetensorsMalformed, TruncatedFile) {
  std::string bytes = read_bytes(kFixtures + "dtypes.safetensors");
  std::string path = current_test_dir() + "/truncated.safetensors";
  write_bytes(path, bytes.substr(0, bytes.size() - 1));
  expect_rejected(path, "truncated file?");
}

TEST(SafetensorsMalformed, NegativeOrNonIntegerShape) {
  for (const char* shape : {"[-1]", "[2.5]", "[\"2\"]", "2"}) {
    SCOPED_TRACE(shape);
    std::string header =
        std::string(R"({"a":{"dtype":"U8","shape":)") + shape + R"(,"data_offsets":[0,0]}})";
    expect_rejected(make_file(header, ""), "'a'");
  }
}

TEST(SafetensorsMalformed, ShapeTooLargeToAddress) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],
                                "data_offsets":[0,0]}})",
                            ""),
                  "too large");
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(make_file(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "x"),
                  "unknown dtype 'Q4'");
}

TEST(SafetensorsMalformed, MetadataNotStringToString) {
  expect_rejected(make_file(R"({"__metadata__":{"format":"pt","step":3}})", ""), "'step'");
  expect_rejected(make_file(R"({"__metadata__":["format","pt"]})", ""), "__metadata__");
}

TEST(SafetensorsMalformed, NotARegularFile) {
  std::string directory = current_test_dir();
  expect_rejected(directory, "not a regular file");
  expect_rejected(directory + "/missing.safetensors", "cannot open");
}

// Deterministic random damage to a valid file: each result must load or throw Error, never
// crash or read outside the file. Run once under -fsanitize=address as well.
TEST(SafetensorsMalformed, FuzzedFilesLoadOrThrow) {
  std::string valid = read_bytes(kFixtures + "dtypes.safetensors");
  std::string path = current_test_dir() + "/fuzz.safetensors";
  std::mt19937 random(20240601);
  int loaded = 0, rejected = 0;
  for (int round = 0; round < 400; ++round) {
    std::string bytes = valid;
    int kind = round % 3;
    if (kind == 0 || kind == 2)  // truncate anywhere, header included
      bytes.resize(random() % bytes.size());
    if (kind == 1 || kind == 2)  // flip bits in 1 to 4 bytes
      for (int flips = 1 + random() % 4; flips > 0 && !bytes.empty(); --flips)
        bytes[random() % bytes.size()] ^= char(1 << (random() % 8));
    write_bytes(path, bytes);
    try {
      SafetensorsFile file(path);
      uint64_t checksum = 0;  // touch every byte the file claims, so ASan sees any overrun
      for (const TensorInfo& tensor : file.tensors())
        for (size_t i = 0; i < tensor.nbytes; ++i) checksum += tensor.data[i];
      EXPECT_GE(checksum, 0u);
      ++loaded;
    } catch (const Error&) {
      ++rejected;
    }
  }
  // Flipping a bit inside a tensor's data leaves a valid file, so both outcomes must occur.
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
}

// ---------------------------------------------------------------------------------------------
// Writing

std::vector<TensorToWrite> tensors_of(const SafetensorsFile& file) {
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& tensor : file.tensors())
    tensors.push_back({tensor.name, tensor.dtype, tensor.shape, tensor.data});
  return tensors;
}

TEST(SafetensorsWriter, ByteIdenticalToPythonSafetensors) {
  SafetensorsFile python(kFixtures + "python_written.safetensors");
  std::vector<TensorToWrite> tensors = tensors_of(python);
  std::reverse(tensors.begin(), tensors.end());  // the writer picks the order, as Python's does
  std::string path = current_test_dir() + "/cpp_written.safetensors";
  write_safetensors(path, tensors);
  EXPECT_EQ(read_bytes(path), read_bytes(kFixtures + "python_written.safetensors"));
}

TEST(SafetensorsWriter, RoundTripKeepsEverything) {
  SafetensorsFile original(kFixtures + "dtypes.safetensors");
  std::string path = current_test_dir() + "/round_trip.safetensors";
  write_safetensors(path, tensors_of(original),
                    {{"note", "golden fixture"}, {"z", "\"quoted\"\n"}});
  SafetensorsFile written(path);
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "golden fixture"}, {"z", "\"quoted\"\n"}};
  EXPECT_EQ(written.metadata(), metadata);
  ASSERT_EQ(written.tensors().size(), original.tensors().size());
  for (const TensorInfo& tensor : original.tensors()) {
    const TensorInfo* copy = written.find(tensor.name);
    ASSERT_NE(copy, nullptr) << tensor.name;
    EXPECT_EQ(copy->dtype, tensor.dtype);
    EXPECT_EQ(copy->shape, tensor.shape);
    ASSERT_EQ(copy->nbytes, tensor.nbytes);
    EXPECT_EQ(std::memcmp(copy->data, tensor.data, tensor.nbytes), 0) << tensor.name;
  }
}

TEST(SafetensorsWriter, HeaderIsPaddedToEightBytes) {
  std::string directory = current_test_dir();
  uint8_t byte = 7;
  for (std::string name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"}) {
    std::string path = directory + "/" + name + ".safetensors";
    write_safetensors(path, {{name, DType::u8, {1}, &byte}});
    std::string bytes = read_bytes(path);
    uint64_t header_length;
    std::memcpy(&header_length, bytes.data(), 8);
    EXPECT_EQ(header_length % 8, 0u) << name;
    EXPECT_EQ(bytes.size(), 8 + header_length + 1);
    EXPECT_EQ(SafetensorsFile(path).find(name)->data[0], 7);
  }
}

// On failure nothing is left behind: no target file and no temporary file.
TEST(SafetensorsWriter, FailureLeavesNoFile) {
  std::string directory = current_test_dir();
  float value = 1.0f;
  EXPECT_THROW(
      write_safetensors(directory + "/missing_dir/x.safetensors", {{"a", DType::f32, {1}, &value}}),
      Error);
  EXPECT_THROW(write_safetensors(directory + "/dup.safetensors",
                                 {{"a", DType::f32, {1}, &value}, {"a", DType::f32, {1}, &value}}),
               Error);
  EXPECT_THROW(
      write_safetensors(directory + "/null.safetensors", {{"a", DType::f32, {2}, nullptr}}), Error);
  EXPECT_THROW(
      write_safetensors(directory + "/negative.safetensors", {{"a", DType::f32, {-1}, &value}}),
      Error);
  fs::create_directory(directory + "/occupied.safetensors");  // rename onto a directory fails
  EXPECT_THROW(
      write_safetensors(directory + "/occupied.safetensors", {{"a", DType::f32, {1}, &value}}),
      Error);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(directory))
    left.push_back(entry.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{"occupied.safetensors"});
  EXPECT_TRUE(fs::is_empty(directory + "/occupied.safetensors"));
}

TEST(SafetensorsWriter, ShardsWithIndexAndRemovesStaleShards) {
  std::string directory = current_test_dir();
  std::vector<float> values(40);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f;
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < 5; ++i)  // 5 tensors of 32 bytes; 80-byte shards hold two each
    tensors.push_back({"t" + std::to_string(i), DType::f32, {8}, values.data() + 8 * i});
  write_sharded_safetensors(directory, tensors, 80);
  for (const char* name : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json"})
    EXPECT_TRUE(fs::exists(directory + "/" + name)) << name;
  json index = json::parse(read_bytes(directory + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 160);
  EXPECT_EQ(index["weight_map"]["t4"], "model-00003-of-00003.safetensors");
  SafetensorsSet set(directory);
  ASSERT_EQ(set.tensors().size(), 5u);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(std::memcmp(set.get("t" + std::to_string(i)).data, values.data() + 8 * i, 32), 0);

  // A save that fits one file replaces the shards and the index.
  write_sharded_safetensors(directory, tensors, 1000);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(directory))
    left.push_back(entry.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(SafetensorsSet(directory).tensors().size(), 5u);
  EXPECT_THROW(write_sharded_safetensors(directory, tensors, 0), Error);
}

}  // namespace
}  // namespace cst

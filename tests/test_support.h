// Small helpers shared by the test suites.
#pragma once
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/table.h"
#include "kernels/error.h"
#include "model/safetensors.h"
#include "train/demo_assets.h"

namespace cst::testing_support {

// A data-reader fixture (tests/fixtures/parquet/, written by tools/python/make_parquet_fixtures.py).
inline std::string parquet_fixture(const std::string& name) {
  return std::string(CST_SOURCE_DIR) + "/tests/fixtures/parquet/" + name;
}

// The whole file as bytes (an empty string, and a test failure, when it cannot be opened).
inline std::string read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file) << path;
  std::stringstream bytes;
  bytes << file.rdbuf();
  return bytes.str();
}

// The message of the cst::Error that `action` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// An empty folder in the system's temporary folder, named for the test and this process: ctest
// runs tests in parallel processes, which must not rewrite each other's files.
inline std::filesystem::path fresh_test_dir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("cst_test_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A fresh folder for the running test (suite and name in its name), so tests never see each
// other's files.
inline std::string current_test_dir() {
  const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
  return fresh_test_dir(std::string(test->test_suite_name()) + "." + test->name()).string();
}

// A copy of the folder `source` in `destination` whose safetensors file `file` has a NaN as the
// first value of tensor `name`, as a damaged download or a merge that overflowed float16 leaves it.
inline void copy_with_a_nan(const std::string& source, const std::filesystem::path& destination,
                            const std::string& file, const std::string& name) {
  std::filesystem::create_directories(destination);
  for (const auto& entry : std::filesystem::directory_iterator(source))
    if (entry.path().filename() != file)
      std::filesystem::copy(entry.path(), destination / entry.path().filename(),
                            std::filesystem::copy_options::overwrite_existing);
  SafetensorsFile original((std::filesystem::path(source) / file).string());
  std::vector<std::vector<uint8_t>> values;
  values.reserve(original.tensors().size());  // `tensors` points into them
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& tensor : original.tensors()) {
    values.emplace_back(tensor.data, tensor.data + tensor.nbytes);
    if (tensor.name == name) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      const uint16_t half_nan = tensor.dtype == DType::bf16 ? 0x7fc0 : 0x7e00;
      if (tensor.dtype == DType::f32) std::memcpy(values.back().data(), &nan, sizeof(nan));
      else std::memcpy(values.back().data(), &half_nan, sizeof(half_nan));
    }
    tensors.push_back({tensor.name, tensor.dtype, tensor.shape, values.back().data()});
  }
  EXPECT_TRUE(original.find(name) != nullptr) << name;
  write_safetensors((destination / file).string(), tensors, original.metadata());
}

// The demo's tiny model and synthetic CST data, written once per test process.
inline const demo::DemoFiles& tiny_demo_files() {
  static const demo::DemoFiles files = demo::write_demo_assets(fresh_test_dir("tiny_demo").string(), 42);
  return files;
}

// A golden cell that may be null (JSON null) or a string.
inline std::optional<std::string> optional_text(const nlohmann::json& value) {
  return value.is_null() ? std::nullopt : std::optional(value.get<std::string>());
}

// A message-list cell as the fixture generators store it: null, or [{"role", "content"}, ...].
inline std::optional<Messages> expected_messages(const nlohmann::json& cell) {
  if (cell.is_null()) return std::nullopt;
  Messages messages;
  for (const nlohmann::json& message : cell)
    messages.push_back({optional_text(message["role"]), optional_text(message["content"])});
  return messages;
}

}  // namespace cst::testing_support

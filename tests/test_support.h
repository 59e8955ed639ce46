// Small helpers shared by the test suites.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/table.h"
#include "kernels/error.h"
#include "train/demo_assets.h"

namespace cst::testing_support {

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

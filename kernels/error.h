// Errors. Every bad input becomes a cst::Error with one clear line naming what and where;
// programs catch it at main(), print it and exit non-zero.
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace cst {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Builds a message from any streamable parts: fail("row ", 12, ": column 'prompt' is null").
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Error(message.str());
}

}  // namespace cst

// Checks an internal invariant or a caller's contract (shapes, dtypes).
#define CST_CHECK(condition, ...)                                                \
  do {                                                                           \
    if (!(condition)) ::cst::fail(__FILE__, ":", __LINE__, ": ", #condition,     \
                                  " failed. " __VA_OPT__(,) __VA_ARGS__);        \
  } while (0)

// The boundary of every program: run the program's body, and turn any error that escapes it into
// one line on stderr ("cst_eval: error: ...") and exit status 1.
#pragma once
#include <cstdio>
#include <exception>

namespace cst {

template <class Body>
int run_program(const char* name, Body body) {
  try {
    return body();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: error: %s\n", name, error.what());
    return 1;
  }
}

}  // namespace cst

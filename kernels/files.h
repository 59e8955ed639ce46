// Whole files, read with errors that name them.
#pragma once
#include <string>

namespace cst {

// The bytes of the file at `path`; an Error naming the path (and the system's reason) when it
// cannot be opened or read.
std::string read_file_bytes(const std::string& path);

}  // namespace cst

// Whole files, read with errors that name them.
#pragma once
#include <string>

namespace cst {

// The bytes of the file at `path`; an Error naming the path (and the system's reason) when it
// cannot be opened or read.
std::string read_file_bytes(const std::string& path);

// Writes `bytes` as the whole file at `path` (not atomically: for outputs that must never be
// seen half-written, write_file_atomically in model/safetensors.h); an Error naming it on failure.
void write_file_bytes(const std::string& path, const std::string& bytes);

}  // namespace cst

#include "kernels/files.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "kernels/error.h"

namespace cst {

std::string read_file_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::ostringstream bytes;
  bytes << file.rdbuf();
  if (file.bad()) fail(path, ": read failed");
  return bytes.str();
}

void write_file_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), std::streamsize(bytes.size()));
  if (!file.flush()) fail(path, ": cannot write");
}

}  // namespace cst

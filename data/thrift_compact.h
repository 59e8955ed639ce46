// Thrift compact protocol reader, the encoding of Parquet's footer and page headers.
//
// Only reading is needed. Every read is bounds-checked against the buffer, so corrupt bytes end in
// a cst::Error rather than a read past the end. Structs are read with read_struct(), which hands
// each field id and type to a callback; the callback reads the fields it knows and skips the rest.
//
// Wire format (https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md):
//   field header  one byte (id delta << 4 | type); delta 0 means a zigzag i16 id follows; 0 = STOP
//   integers      i16/i32/i64 are zigzag varints (LEB128, 7 bits per byte, low bits first)
//   binary        varint length, then the bytes
//   list/set      one byte (size << 4 | element type); size nibble 15 means a varint size follows
//   bool field    the value lives in the field header's type (1 = true, 2 = false)
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "kernels/error.h"

namespace cst::thrift {

enum class Type : uint8_t {
  bool_true = 1,
  bool_false = 2,
  i8 = 3,
  i16 = 4,
  i32 = 5,
  i64 = 6,
  double_ = 7,
  binary = 8,
  list = 9,
  set = 10,
  map = 11,
  struct_ = 12,
};

struct ListHeader {
  Type element_type;
  size_t size;
};

class CompactReader {
 public:
  explicit CompactReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  size_t position() const { return position_; }

  int32_t read_i32(Type type);
  int64_t read_i64(Type type);
  bool read_bool(Type type);
  std::string read_string(Type type);
  ListHeader read_list_header(Type type);
  // List elements have no field header: read each with the list's element_type.
  // Fails unless a field has the type the schema gives it (corrupt metadata otherwise).
  void expect(Type actual, Type wanted);
  // Skips one value of any type, nested structs and containers included.
  void skip(Type type);

  // Calls on_field(id, type) for each field until STOP; on_field must consume the value.
  template <class OnField>
  void read_struct(OnField&& on_field) {
    enter_nested();
    int16_t last_id = 0;
    for (;;) {
      const uint8_t header = read_byte();
      if (header == 0) break;
      const int delta = header >> 4;
      const int16_t id = delta != 0 ? int16_t(last_id + delta) : read_field_id();
      last_id = id;
      on_field(id, field_type(header & 0x0f));
    }
    leave_nested();
  }

 private:
  uint8_t read_byte();
  uint64_t read_varint();
  int64_t read_zigzag();
  int16_t read_field_id();
  size_t read_size(const char* what);
  Type field_type(uint8_t nibble);
  void skip_element(Type type);
  void enter_nested();
  void leave_nested() { --depth_; }

  std::span<const uint8_t> bytes_;
  size_t position_ = 0;
  int depth_ = 0;
};

}  // namespace cst::thrift

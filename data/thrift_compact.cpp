#include "data/thrift_compact.h"

namespace cst::thrift {

namespace {
// Real Parquet metadata nests a few levels deep; a bound keeps corrupt input from exhausting the
// stack.
constexpr int kMaxNesting = 64;

const char* type_name(Type type) {
  switch (type) {
    case Type::bool_true:
    case Type::bool_false: return "bool";
    case Type::i8: return "i8";
    case Type::i16: return "i16";
    case Type::i32: return "i32";
    case Type::i64: return "i64";
    case Type::double_: return "double";
    case Type::binary: return "binary";
    case Type::list: return "list";
    case Type::set: return "set";
    case Type::map: return "map";
    case Type::struct_: return "struct";
  }
  return "unknown";
}
}  // namespace

uint8_t CompactReader::read_byte() {
  if (position_ >= bytes_.size())
    fail("thrift data ends at byte ", position_, " in the middle of a value");
  return bytes_[position_++];
}

uint64_t CompactReader::read_varint() {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    const uint8_t byte = read_byte();
    value |= uint64_t(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  fail("thrift varint at byte ", position_, " is longer than 10 bytes");
}

int64_t CompactReader::read_zigzag() {
  const uint64_t encoded = read_varint();
  return int64_t(encoded >> 1) ^ -int64_t(encoded & 1);
}

int16_t CompactReader::read_field_id() {
  const int64_t id = read_zigzag();
  if (id < INT16_MIN || id > INT16_MAX) fail("thrift field id ", id, " does not fit in i16");
  return int16_t(id);
}

// Sizes of strings and containers are bounded by the bytes left: every element takes at least one.
size_t CompactReader::read_size(const char* what) {
  const uint64_t size = read_varint();
  if (size > bytes_.size() - position_)
    fail("thrift ", what, " size ", size, " at byte ", position_, " exceeds the ",
         bytes_.size() - position_, " bytes left");
  return size_t(size);
}

Type CompactReader::field_type(uint8_t nibble) {
  if (nibble < 1 || nibble > 12) fail("unknown thrift type ", int(nibble), " at byte ", position_);
  return Type(nibble);
}

void CompactReader::expect(Type actual, Type wanted) {
  if (actual != wanted)
    fail("thrift field at byte ", position_, " has type ", type_name(actual), ", expected ",
         type_name(wanted));
}

void CompactReader::enter_nested() {
  if (++depth_ > kMaxNesting) fail("thrift structs nest deeper than ", kMaxNesting, " levels");
}

int32_t CompactReader::read_i32(Type type) {
  expect(type, Type::i32);
  const int64_t value = read_zigzag();
  if (value < INT32_MIN || value > INT32_MAX) fail("thrift i32 value ", value, " is out of range");
  return int32_t(value);
}

int64_t CompactReader::read_i64(Type type) {
  expect(type, Type::i64);
  return read_zigzag();
}

bool CompactReader::read_bool(Type type) {
  if (type != Type::bool_true && type != Type::bool_false) expect(type, Type::bool_true);
  return type == Type::bool_true;
}

std::string CompactReader::read_string(Type type) {
  expect(type, Type::binary);
  const size_t size = read_size("string");
  std::string value(reinterpret_cast<const char*>(bytes_.data() + position_), size);
  position_ += size;
  return value;
}

ListHeader CompactReader::read_list_header(Type type) {
  if (type != Type::set) expect(type, Type::list);
  const uint8_t header = read_byte();
  const Type element_type = field_type(header & 0x0f);
  const size_t short_size = header >> 4;
  const size_t size = short_size == 15 ? read_size("list") : short_size;
  if (size > bytes_.size() - position_)
    fail("thrift list of ", size, " elements at byte ", position_, " exceeds the bytes left");
  return {element_type, size};
}

// Inside containers a bool is a whole byte, not folded into a field header.
void CompactReader::skip_element(Type type) {
  if (type == Type::bool_true || type == Type::bool_false)
    read_byte();
  else
    skip(type);
}

void CompactReader::skip(Type type) {
  switch (type) {
    case Type::bool_true:
    case Type::bool_false: return;  // a bool field's value is its type
    case Type::i8: read_byte(); return;
    case Type::i16:
    case Type::i32:
    case Type::i64: read_varint(); return;
    case Type::double_:
      if (bytes_.size() - position_ < 8) fail("thrift double at byte ", position_, " is cut off");
      position_ += 8;
      return;
    case Type::binary: position_ += read_size("binary"); return;
    case Type::list:
    case Type::set: {
      const ListHeader list = read_list_header(type);
      enter_nested();
      for (size_t i = 0; i < list.size; ++i) skip_element(list.element_type);
      leave_nested();
      return;
    }
    case Type::map: {
      const size_t size = read_size("map");
      if (size == 0) return;
      const uint8_t types = read_byte();
      const Type key_type = field_type(types >> 4), value_type = field_type(types & 0x0f);
      enter_nested();
      for (size_t i = 0; i < size; ++i) {
        skip_element(key_type);
        skip_element(value_type);
      }
      leave_nested();
      return;
    }
    case Type::struct_: read_struct([&](int16_t, Type field) { skip(field); }); return;
  }
  fail("unknown thrift type ", int(type));
}

}  // namespace cst::thrift

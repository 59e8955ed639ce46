// The character classes of the byte-level pre-tokenizer patterns (data/tokenizer.cpp): \p{L}, \p{N}
// and \s as the `tokenizers` library's regex engine defines them. The table behind char_class is
// generated from Python's unicodedata by tools/python/make_unicode_table.py, which also checks every
// code point against that engine; kUnicodeVersion says which Unicode version it follows.
#pragma once
#include <cstdint>

namespace cst {

enum class CharClass : uint8_t {
  other,       // everything below does not hold (marks, punctuation, symbols, controls, unassigned)
  letter,      // general category L: Lu Ll Lt Lm Lo
  number,      // general category N: Nd Nl No
  whitespace,  // the White_Space property (also Rust's char::is_whitespace)
};

CharClass char_class(uint32_t code_point);

extern const char* const kUnicodeVersion;

}  // namespace cst

// Tokenizer: sentencepiece vocabulary + Hugging Face added tokens, legacy prefix rule and decoder.
// See tokenizer.h for the encoding pipeline this file follows step by step.
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>

#include "data/unicode_categories.h"
#include "kernels/error.h"
#include "kernels/files.h"

namespace cst {

namespace {

using nlohmann::json;

const std::string kMetaspace = "\xE2\x96\x81";  // "▁", sentencepiece's visible space
const std::string kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD
// Llama 3's pre-tokenizer Split pattern, as its tokenizer.json spells it.
const std::string kLlama3Pattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// ---- UTF-8 helpers ---------------------------------------------------------------------------

// Byte length of the UTF-8 character starting at text[pos]; 1 for a byte that cannot start one,
// so malformed input still advances (and later falls back to byte pieces).
size_t utf8_length_at(std::string_view text, size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(text[pos]);
  size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
  if (pos + length > text.size()) return 1;
  for (size_t i = 1; i < length; i++) {
    if ((static_cast<unsigned char>(text[pos + i]) & 0xC0) != 0x80) return 1;
  }
  return length;
}

// The code point of a well-formed character of `length` bytes at text[pos].
uint32_t code_point_at(std::string_view text, size_t pos, size_t length) {
  const unsigned char lead = static_cast<unsigned char>(text[pos]);
  if (length == 1) return lead;
  uint32_t code_point = lead & (0xFF >> (length + 1));
  for (size_t i = 1; i < length; i++) code_point = (code_point << 6) | (text[pos + i] & 0x3F);
  return code_point;
}

// Unicode White_Space, the set Rust's char::is_whitespace uses for lstrip/rstrip.
bool is_unicode_whitespace(uint32_t c) { return char_class(c) == CharClass::whitespace; }

void append_utf8(std::string& text, uint32_t code_point) {
  if (code_point < 0x80) {
    text.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    text.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    text.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    text.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    text.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    text.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    text.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    text.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    text.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    text.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

// Start of the run of whitespace that ends text[..end] (end itself when there is none).
size_t whitespace_run_start_before(std::string_view text, size_t end) {
  size_t start = end;
  while (start > 0) {
    size_t char_start = start - 1;
    while (char_start > 0 && (static_cast<unsigned char>(text[char_start]) & 0xC0) == 0x80 &&
           start - char_start < 4) {
      char_start--;
    }
    const size_t length = utf8_length_at(text, char_start);
    if (char_start + length != start || !is_unicode_whitespace(code_point_at(text, char_start, length))) break;
    start = char_start;
  }
  return start;
}

// End of the run of whitespace that starts at text[begin] (begin itself when there is none).
size_t whitespace_run_end_after(std::string_view text, size_t begin) {
  size_t end = begin;
  while (end < text.size()) {
    const size_t length = utf8_length_at(text, end);
    if (!is_unicode_whitespace(code_point_at(text, end, length))) break;
    end += length;
  }
  return end;
}

// The UTF-8 sequence at bytes[pos], checked strictly (no overlongs, surrogates or code points past
// U+10FFFF), the way Rust's UTF-8 decoding reads it: `length` bytes form either one whole character
// or, when the sequence breaks off, its "maximal subpart" (the longest start of some valid character,
// at least one byte), which String::from_utf8_lossy replaces with a single U+FFFD.
struct Utf8Sequence {
  size_t length;
  bool complete;    // a whole, valid character
  bool cut_by_end;  // not complete only because the bytes ended: more bytes may complete it
};

Utf8Sequence scan_utf8_sequence(std::string_view bytes, size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(bytes[pos]);
  if (lead < 0x80) return {1, true, false};
  size_t length;
  unsigned char second_low = 0x80, second_high = 0xBF;  // the second byte's range depends on the lead
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;   // no overlongs
    if (lead == 0xED) second_high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;   // no overlongs
    if (lead == 0xF4) second_high = 0x8F;  // nothing past U+10FFFF
  } else {
    return {1, false, false};  // a continuation byte, or a lead byte no valid character has
  }
  for (size_t i = 1; i < length; i++) {
    if (pos + i == bytes.size()) return {i, false, true};
    const unsigned char byte = static_cast<unsigned char>(bytes[pos + i]);
    const bool fits = i == 1 ? byte >= second_low && byte <= second_high : (byte & 0xC0) == 0x80;
    if (!fits) return {i, false, false};
  }
  return {length, true, false};
}

// String::from_utf8 accepts it (how the ByteFallback decoder judges a run of byte pieces).
bool is_valid_utf8(std::string_view bytes) {
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Sequence sequence = scan_utf8_sequence(bytes, pos);
    if (!sequence.complete) return false;
    pos += sequence.length;
  }
  return true;
}

// String::from_utf8_lossy. With stop_at_cut_character, a character cut off by the end is left out
// instead of becoming U+FFFD: the bytes still to come may complete it.
std::string utf8_lossy(std::string_view bytes, bool stop_at_cut_character) {
  std::string text;
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Sequence sequence = scan_utf8_sequence(bytes, pos);
    if (sequence.cut_by_end && stop_at_cut_character) break;
    if (sequence.complete) {
      text.append(bytes.substr(pos, sequence.length));
    } else {
      text += kReplacementCharacter;
    }
    pos += sequence.length;
  }
  return text;
}

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string result;
  size_t pos = 0;
  while (true) {
    const size_t found = text.find(from, pos);
    result.append(text.substr(pos, found == std::string_view::npos ? std::string_view::npos : found - pos));
    if (found == std::string_view::npos) return result;
    result.append(to);
    pos = found + from.size();
  }
}

// "<0xAB>" -> 0xAB; -1 for anything else.
int byte_of_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    const int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                      : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// ---- Byte-level alphabet ------------------------------------------------------------------------

// GPT-2's bytes_to_unicode: a byte-level piece spells each byte as one printable character. The
// bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves (as code points); the other 68
// (controls, space, 0x7F..0xA0, the soft hyphen 0xAD) become U+0100, U+0101, ... in byte order.
struct ByteLevelAlphabet {
  static constexpr uint32_t kCodePoints = 0x100 + 68;  // every stand-in is below this
  std::string char_of_byte[256];                       // UTF-8
  int byte_of_code_point[kCodePoints];                 // -1: not a stand-in
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet built;
    std::fill(std::begin(built.byte_of_code_point), std::end(built.byte_of_code_point), -1);
    uint32_t next_moved = 0x100;
    for (int byte = 0; byte < 256; byte++) {
      const bool printable = (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
      const uint32_t code_point = printable ? byte : next_moved++;
      append_utf8(built.char_of_byte[byte], code_point);
      built.byte_of_code_point[code_point] = byte;
    }
    return built;
  }();
  return alphabet;
}

std::string to_byte_level(std::string_view text) {
  std::string spelled;
  for (char byte : text) spelled += byte_level_alphabet().char_of_byte[static_cast<unsigned char>(byte)];
  return spelled;
}

constexpr uint32_t kNotACharacter = ~0u;

// The ByteLevel decoder's bytes for one token: the byte of each character, or the token's own UTF-8
// when one of its characters is not a stand-in (an added token such as "<|tool call|>" with a space).
void append_token_bytes(std::string_view token, std::string& bytes) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  std::string spelled;
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Sequence sequence = scan_utf8_sequence(token, pos);
    const uint32_t code_point = sequence.complete ? code_point_at(token, pos, sequence.length) : kNotACharacter;
    if (code_point >= ByteLevelAlphabet::kCodePoints || alphabet.byte_of_code_point[code_point] < 0) {
      bytes.append(token);
      return;
    }
    spelled.push_back(static_cast<char>(alphabet.byte_of_code_point[code_point]));
    pos += sequence.length;
  }
  bytes += spelled;
}

// ---- Byte-level pre-tokenization ---------------------------------------------------------------
//
// The two regexes of tokenizer.h, matched by hand. The regex engine (Oniguruma) finds the leftmost
// match and, at a position, takes the first alternative that matches; every character is a letter,
// a number, whitespace or none of these, and some alternative matches each, so the matches tile the
// text. The functions below return where the match that starts at character i ends.

struct TextChar {
  uint32_t code_point;  // kNotACharacter for a byte that is not part of valid UTF-8
  CharClass char_class;
  size_t begin;  // byte offset in the text
};
using TextChars = std::vector<TextChar>;

TextChars text_chars(std::string_view text) {
  TextChars chars;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Sequence sequence = scan_utf8_sequence(text, pos);
    if (sequence.complete) {
      const uint32_t code_point = code_point_at(text, pos, sequence.length);
      chars.push_back({code_point, char_class(code_point), pos});
      pos += sequence.length;
    } else {
      chars.push_back({kNotACharacter, CharClass::other, pos});
      pos += 1;
    }
  }
  return chars;
}

bool has_class(const TextChars& chars, size_t i, CharClass wanted) {
  return i < chars.size() && chars[i].char_class == wanted;
}
bool is_char(const TextChars& chars, size_t i, uint32_t code_point) {
  return i < chars.size() && chars[i].code_point == code_point;
}
bool is_line_break(const TextChars& chars, size_t i) { return is_char(chars, i, '\r') || is_char(chars, i, '\n'); }

// End of the run of characters of one class that starts at i, at most `limit` long.
size_t class_run_end(const TextChars& chars, size_t i, CharClass run_class, size_t limit = SIZE_MAX) {
  size_t end = i;
  while (end - i < limit && has_class(chars, end, run_class)) end++;
  return end;
}

// 's|'t|'re|'ve|'m|'ll|'d, or with (?i:...) (Llama 3) in any case: Oniguruma's case folding also
// matches U+017F LATIN SMALL LETTER LONG S to s (no other character folds to one of these letters).
size_t contraction_length(const TextChars& chars, size_t i, bool ignore_case) {
  if (!is_char(chars, i, '\'')) return 0;
  const auto letter = [&](size_t k, char lower) {
    if (is_char(chars, k, lower)) return true;
    if (!ignore_case) return false;
    return is_char(chars, k, lower - 'a' + 'A') || (lower == 's' && is_char(chars, k, 0x17F));
  };
  if (letter(i + 1, 's') || letter(i + 1, 't') || letter(i + 1, 'm') || letter(i + 1, 'd')) return 2;
  if ((letter(i + 1, 'r') || letter(i + 1, 'v')) && letter(i + 2, 'e')) return 3;
  if (letter(i + 1, 'l') && letter(i + 2, 'l')) return 3;
  return 0;
}

// \s+(?!\S) then \s+ at a whitespace character: the run of whitespace, less its last character when
// a non-space follows (that one goes with the next word, as in " word"), unless it is the only one.
size_t whitespace_match_end(const TextChars& chars, size_t i) {
  const size_t end = class_run_end(chars, i, CharClass::whitespace);
  return end < chars.size() && end - i >= 2 ? end - 1 : end;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
size_t llama3_match_end(const TextChars& chars, size_t i) {
  if (const size_t length = contraction_length(chars, i, /*ignore_case=*/true)) return i + length;
  // [^\r\n\p{L}\p{N}]?\p{L}+ : letters, with one character in front that is no letter, number or
  // line break (a space, a mark, punctuation) when letters follow it.
  size_t start = i;
  if (!has_class(chars, i, CharClass::letter) && !has_class(chars, i, CharClass::number) &&
      !is_line_break(chars, i) && has_class(chars, i + 1, CharClass::letter)) {
    start = i + 1;
  }
  if (has_class(chars, start, CharClass::letter)) return class_run_end(chars, start, CharClass::letter);
  if (has_class(chars, i, CharClass::number)) return class_run_end(chars, i, CharClass::number, 3);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*' : symbols with an optional space in front and line breaks after.
  start = is_char(chars, i, ' ') && has_class(chars, i + 1, CharClass::other) ? i + 1 : i;
  if (has_class(chars, start, CharClass::other)) {
    size_t end = class_run_end(chars, start, CharClass::other);
    while (is_line_break(chars, end)) end++;
    return end;
  }
  // Whitespace is all that is left. \s*[\r\n]+ : the run up to and including its last line break.
  for (size_t end = class_run_end(chars, i, CharClass::whitespace); end > i; end--) {
    if (is_line_break(chars, end - 1)) return end;
  }
  return whitespace_match_end(chars, i);
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t gpt2_match_end(const TextChars& chars, size_t i) {
  if (const size_t length = contraction_length(chars, i, /*ignore_case=*/false)) return i + length;
  for (const CharClass run_class : {CharClass::letter, CharClass::number, CharClass::other}) {
    const size_t start = is_char(chars, i, ' ') && has_class(chars, i + 1, run_class) ? i + 1 : i;
    if (has_class(chars, start, run_class)) return class_run_end(chars, start, run_class);
  }
  return whitespace_match_end(chars, i);
}

// ---- Decode clean-up ------------------------------------------------------------------------------

// transformers' clean_up_tokenization: these str.replace calls, in this order.
constexpr std::pair<std::string_view, std::string_view> kCleanUpReplacements[] = {
    {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};

// One str.replace (leftmost occurrences, not overlapping) on a text of which only text[0, settled)
// is final (more may be appended). Returns how much of the result is final: everything before the
// first place where an occurrence could still start once more text comes, that is, a position
// within the last from.size() - 1 settled bytes where the rest of the settled text begins `from`.
size_t replace_settled(std::string& text, size_t settled, std::string_view from, std::string_view to) {
  size_t pos = 0, removed = 0;
  for (size_t found; (found = text.find(from, pos)) != std::string::npos && found + from.size() <= settled;) {
    removed += from.size() - to.size();  // an occurrence that more text cannot undo
    pos = found + from.size();
  }
  size_t open_from = settled;
  for (size_t p = std::max(pos, settled + 1 > from.size() ? settled + 1 - from.size() : 0); p < settled; p++) {
    if (from.compare(0, settled - p, text, p, settled - p) == 0) {
      open_from = p;
      break;
    }
  }
  text = replace_all(text, from, to);
  return open_from - removed;
}

// Applies the clean-up to text; returns the length of the result that no appended text can change
// (all of it when nothing more follows).
size_t clean_up_tokenization(std::string& text, bool more_may_follow) {
  size_t settled = text.size();
  for (const auto& [from, to] : kCleanUpReplacements) {
    if (more_may_follow) {
      settled = replace_settled(text, settled, from, to);
    } else {
      text = replace_all(text, from, to);
    }
  }
  return more_may_follow ? settled : text.size();
}

// ---- Tokenizer files ------------------------------------------------------------------------------

const std::vector<std::string> kTokenizerFiles = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                                  "added_tokens.json", "special_tokens_map.json"};

std::optional<json> parse_json_file(const std::map<std::string, std::string>& files, const std::string& name) {
  const auto found = files.find(name);
  if (found == files.end()) return std::nullopt;
  json parsed = json::parse(found->second, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) fail(name, ": not valid JSON");
  if (!parsed.is_object()) fail(name, ": expected a JSON object at the top level");
  return parsed;
}

bool json_flag(const json& object, const char* key, bool fallback, const std::string& where) {
  const auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  if (!found->is_boolean()) fail(where, ": \"", key, "\" must be true or false");
  return found->get<bool>();
}

// A special-token setting: a string, an AddedToken-like object {"content": ...}, or null.
std::optional<std::string> token_name(const json& value, const std::string& where) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  fail(where, ": expected a token string, {\"content\": ...} or null");
}

AddedToken added_token_from_json(const json& entry, int32_t id, const std::string& where) {
  if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
    fail(where, ": added token ", id, " needs a string \"content\"");
  }
  AddedToken token;
  token.id = id;
  token.content = entry["content"].get<std::string>();
  token.special = json_flag(entry, "special", false, where);
  token.normalized = json_flag(entry, "normalized", !token.special, where);
  token.lstrip = json_flag(entry, "lstrip", false, where);
  token.rstrip = json_flag(entry, "rstrip", false, where);
  if (json_flag(entry, "single_word", false, where)) {
    fail(where, ": added token '", token.content, "' uses single_word matching, which cst does not support");
  }
  return token;
}

int32_t parse_token_id(const json& value, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX) {
    fail(where, ": token id must be a non-negative 32-bit integer, got ", value.dump());
  }
  return value.get<int32_t>();
}

// transformers' LlamaTokenizerFast ignores tokenizer.json and converts tokenizer.model again when
// tokenizer_config.json sets add_prefix_space (or from_slow): then the sentencepiece model decides.
bool rebuilds_from_sentencepiece(const json& config, bool has_sentencepiece) {
  const bool rebuild = (config.contains("add_prefix_space") && !config["add_prefix_space"].is_null()) ||
                       json_flag(config, "from_slow", false, "tokenizer_config.json");
  if (rebuild && !has_sentencepiece) {
    fail("tokenizer_config.json sets add_prefix_space or from_slow, which makes transformers rebuild the tokenizer "
         "from tokenizer.model, and there is no tokenizer.model");
  }
  return rebuild;
}

// A pipeline step's or model's "type"; "" for null or anything else without a string type, so that
// a malformed file reaches the clear error of its caller rather than a JSON library exception.
std::string type_of(const json& step) {
  if (!step.is_object()) return "";
  const auto type = step.find("type");
  return type != step.end() && type->is_string() ? type->get<std::string>() : "";
}

// GPT-2 / Llama 3 byte-level BPE: a ByteLevel step anywhere in the pre-tokenizer or decoder.
bool uses_byte_level(const json& tokenizer_json) {
  for (const char* key : {"pre_tokenizer", "decoder"}) {
    if (tokenizer_json.value(key, json()).dump().find("\"ByteLevel\"") != std::string::npos) return true;
  }
  return false;
}

std::string tokenizer_class(const json& config) {
  const json name = config.value("tokenizer_class", json());
  return name.is_string() ? name.get<std::string>() : "";
}

// The special tokens a tokenizer class names when tokenizer_config.json does not: LlamaTokenizer's
// <s> </s> <unk> (the Llama/Mistral pipeline is read as LlamaTokenizerFast), GPT2Tokenizer's
// <|endoftext|>; PreTrainedTokenizerFast (a byte-level file without a class) names none.
std::map<std::string, std::string> default_special_tokens(const json& config, bool byte_level) {
  if (!byte_level) return {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
  const std::string name = tokenizer_class(config);
  if (name == "GPT2Tokenizer" || name == "GPT2TokenizerFast") {
    return {{"bos_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"}};
  }
  return {};
}

// A TemplateProcessing "single" template: the ids of the special tokens before and after $A.
void read_single_template(const json& processor, std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  const json single = processor.value("single", json());
  const json special_tokens = processor.value("special_tokens", json());
  if (!single.is_array() || !special_tokens.is_object()) {
    fail("tokenizer.json: TemplateProcessing needs a \"single\" list and a \"special_tokens\" object");
  }
  const auto id_in = [](const json& piece, const char* kind) {
    return piece.is_object() && piece.contains(kind) ? piece[kind].value("id", json()) : json();
  };
  bool seen_sequence = false;
  for (const json& piece : single) {
    if (id_in(piece, "Sequence") == "A" && !seen_sequence) {
      seen_sequence = true;
      continue;
    }
    const json name = id_in(piece, "SpecialToken");
    const json entry = name.is_string() ? special_tokens.value(name.get<std::string>(), json()) : json();
    if (!entry.is_object() || !entry.value("ids", json()).is_array()) {
      fail("tokenizer.json: TemplateProcessing single piece ", piece.dump(),
           " is neither the sequence $A (once) nor a special token listed with its ids");
    }
    for (const json& id : entry["ids"]) {
      (seen_sequence ? suffix : prefix).push_back(parse_token_id(id, "tokenizer.json"));
    }
  }
  if (!seen_sequence) fail("tokenizer.json: TemplateProcessing single template has no sequence $A");
}

}  // namespace

// ---- Loading --------------------------------------------------------------------------------------

Tokenizer::Tokenizer(const std::map<std::string, std::string>& files) {
  const json config = parse_json_file(files, "tokenizer_config.json").value_or(json::object());
  const std::optional<json> tokenizer_json = parse_json_file(files, "tokenizer.json");
  const auto sentencepiece_model = files.find("tokenizer.model");
  const bool has_sentencepiece = sentencepiece_model != files.end();
  // A byte-level tokenizer.json is read as PreTrainedTokenizerFast reads it; the rebuild from
  // tokenizer.model is LlamaTokenizerFast's.
  const bool byte_level = tokenizer_json && uses_byte_level(*tokenizer_json);
  const bool model_from_json =
      tokenizer_json && (byte_level || !rebuilds_from_sentencepiece(config, has_sentencepiece));
  if (model_from_json) {
    load_bpe_model(*tokenizer_json, byte_level);
    if (byte_level) {
      read_byte_level_pipeline(*tokenizer_json, config);
    } else {
      read_pipeline(*tokenizer_json);
    }
  } else {
    if (!has_sentencepiece) fail("tokenizer: needs tokenizer.json or tokenizer.model, and neither is present");
    load_sentencepiece(sentencepiece_model->second);
    build_merges_from_scores();
    legacy_ = json_flag(config, "legacy", true, "tokenizer_config.json");
    // Absent: LlamaTokenizer's default, true. null: transformers hands None to the converter, which
    // then prepends nothing (and, having no tokenizer.json to fall back on, that is what it uses).
    add_prefix_space_ = json_flag(config, "add_prefix_space", !config.contains("add_prefix_space"),
                                  "tokenizer_config.json");
    decode_strips_leading_space_ = add_prefix_space_;
  }
  if (config.contains("chat_template") && config["chat_template"].is_string()) {
    chat_template_source_ = config["chat_template"].get<std::string>();
  }
  // PreTrainedTokenizerFast and GPT2TokenizerFast clean up by default, LlamaTokenizerFast does not.
  clean_up_tokenization_spaces_ =
      json_flag(config, "clean_up_tokenization_spaces", byte_level, "tokenizer_config.json");
  load_added_tokens(files, config, tokenizer_json, model_from_json);
  resolve_special_ids(files);
  if (!byte_level) rebuild_llama_post_processor(config);
}

Tokenizer Tokenizer::from_directory(const std::string& directory) {
  std::map<std::string, std::string> files;
  for (const std::string& name : kTokenizerFiles) {
    const std::filesystem::path path = std::filesystem::path(directory) / name;
    if (!std::filesystem::exists(path)) continue;
    files[name] = read_file_bytes(path.string());
  }
  if (!files.count("tokenizer.model") && !files.count("tokenizer.json")) {
    fail(directory, ": no tokenizer.json or tokenizer.model in this directory");
  }
  return Tokenizer(files);
}

// ---- tokenizer.model -----------------------------------------------------------------------------

// Reads pieces, scores and byte pieces out of the sentencepiece model; the BPE itself runs here, in
// encode_word, so that merge order and tie-breaking follow the fast tokenizer exactly.
void Tokenizer::load_sentencepiece(const std::string& model_bytes) {
  sentencepiece::SentencePieceProcessor processor;
  const auto status = processor.LoadFromSerializedProto(model_bytes);
  if (!status.ok()) fail("tokenizer.model: not a sentencepiece model (", status.ToString(), ")");
  const int piece_count = processor.GetPieceSize();
  if (piece_count <= 0) fail("tokenizer.model: the model has no pieces");
  pieces_.resize(piece_count);
  scores_.resize(piece_count);
  for (int id = 0; id < piece_count; id++) {
    pieces_[id] = processor.IdToPiece(id);
    scores_[id] = processor.GetScore(id);
    piece_ids_[pieces_[id]] = id;  // a later duplicate wins, as in the converter's vocab dict
    if (processor.IsUnknown(id)) unk_id_ = id;
  }
  find_byte_pieces(/*byte_fallback=*/true);  // the converter always turns byte fallback on
  vocab_size_ = piece_count;
}

// Byte fallback spells a character the vocabulary lacks as its UTF-8 bytes, pieces "<0x0A>" etc.
void Tokenizer::find_byte_pieces(bool byte_fallback) {
  for (int byte = 0; byte < 256; byte++) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", byte);
    const auto found = piece_ids_.find(name);
    byte_piece_ids_[byte] = !byte_fallback || found == piece_ids_.end() ? -1 : found->second;
  }
}

// Every split of a piece into two pieces is a merge; rank = (higher score of the merged piece,
// then merged id, then left id, then right id), the order of transformers' SentencePieceExtractor.
void Tokenizer::build_merges_from_scores() {
  struct Candidate {
    float score;
    int32_t merged, left, right;
  };
  std::vector<Candidate> candidates;
  for (int32_t merged = 0; merged < static_cast<int32_t>(pieces_.size()); merged++) {
    const std::string& piece = pieces_[merged];
    for (size_t split = utf8_length_at(piece, 0); split < piece.size(); split += utf8_length_at(piece, split)) {
      const auto left = piece_ids_.find(piece.substr(0, split));
      const auto right = piece_ids_.find(piece.substr(split));
      if (left == piece_ids_.end() || right == piece_ids_.end()) continue;
      candidates.push_back({scores_[merged], piece_ids_.at(piece), left->second, right->second});
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return std::tuple(-a.score, a.merged, a.left, a.right) < std::tuple(-b.score, b.merged, b.left, b.right);
  });
  std::vector<std::pair<uint64_t, Merge>> entries;
  for (size_t rank = 0; rank < candidates.size(); rank++) {
    const Candidate& c = candidates[rank];
    entries.push_back({pair_key(c.left, c.right), Merge{static_cast<int32_t>(rank), c.merged}});
  }
  merges_.build(entries);
}

// At most half full; Fibonacci hashing spreads the structured pair keys over the slots. A later
// entry for the same pair replaces the earlier one, as in the tokenizers library's merge map (a
// tokenizer.json that lists a merge twice ranks it by its last line; a sentencepiece model cannot
// produce the same pair twice).
void Tokenizer::MergeTable::build(const std::vector<std::pair<uint64_t, Merge>>& entries) {
  int bits = 4;
  while ((size_t{1} << bits) < 2 * entries.size()) bits++;
  shift = 64 - bits;
  keys.assign(size_t{1} << bits, kEmpty);
  merges.assign(size_t{1} << bits, Merge{});
  for (const auto& [key, merge] : entries) {
    size_t slot = (key * 0x9E3779B97F4A7C15ull) >> shift;
    while (keys[slot] != kEmpty && keys[slot] != key) slot = (slot + 1) & (keys.size() - 1);
    keys[slot] = key;
    merges[slot] = merge;
  }
}

const Tokenizer::Merge* Tokenizer::MergeTable::find(uint64_t key) const {
  for (size_t slot = (key * 0x9E3779B97F4A7C15ull) >> shift;; slot = (slot + 1) & (keys.size() - 1)) {
    if (keys[slot] == key) return &merges[slot];
    if (keys[slot] == kEmpty) return nullptr;
  }
}

// ---- tokenizer.json -------------------------------------------------------------------------------

// The BPE model of a tokenizer.json: the vocabulary with dense ids, merges ranked by their line in
// the "merges" list (first line = applied first); byte fallback and fused unknowns (Llama/Mistral)
// or ignore_merges (byte-level). Other model types are refused by name.
void Tokenizer::load_bpe_model(const json& tokenizer_json, bool byte_level) {
  const auto model_entry = tokenizer_json.find("model");
  if (model_entry == tokenizer_json.end() || !model_entry->is_object()) fail("tokenizer.json: no \"model\" object");
  const json& model = *model_entry;
  const std::string type = type_of(model);
  if (type != "BPE") {
    fail("tokenizer.json: model type '", type, "' is not supported (cst reads the Llama/Mistral BPE with byte fallback)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json value = model.value(key, json());
    if (!value.is_null() && value != "") fail("tokenizer.json: BPE \"", key, "\" is not supported");
  }
  const json dropout = model.value("dropout", json());
  if (!dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    fail("tokenizer.json: BPE dropout is not supported (it makes encoding random)");
  }
  ignore_merges_ = json_flag(model, "ignore_merges", false, "tokenizer.json model");
  if (ignore_merges_ && !byte_level) {
    fail("tokenizer.json: BPE \"ignore_merges\" is supported with byte-level BPE only (Llama 3), not with this "
         "pipeline");
  }
  const bool byte_fallback = json_flag(model, "byte_fallback", false, "tokenizer.json model");
  if (byte_fallback && byte_level) {
    fail("tokenizer.json: BPE \"byte_fallback\" with a ByteLevel pipeline is not supported (byte-level BPE has a "
         "piece for every byte)");
  }
  fuse_unknown_ = json_flag(model, "fuse_unk", false, "tokenizer.json model");
  load_vocabulary(model.value("vocab", json()));
  find_byte_pieces(byte_fallback);
  const json unk_token = model.value("unk_token", json());
  if (unk_token.is_null()) {
    unk_id_ = -1;  // characters outside the vocabulary are dropped, as the tokenizers library does
  } else if (!unk_token.is_string() || !piece_ids_.count(unk_token.get<std::string>())) {
    fail("tokenizer.json: model unk_token ", unk_token.dump(), " is not in the vocabulary");
  } else {
    unk_id_ = piece_ids_.at(unk_token.get<std::string>());
  }
  load_merge_list(model.value("merges", json()));
}

// model.vocab: piece -> id, ids exactly 0..N-1 (what every converter writes).
void Tokenizer::load_vocabulary(const json& vocab) {
  if (!vocab.is_object() || vocab.empty()) fail("tokenizer.json: model \"vocab\" must be a non-empty object");
  pieces_.assign(vocab.size(), std::string());
  std::vector<bool> seen(vocab.size(), false);
  for (const auto& [piece, id_value] : vocab.items()) {
    const int32_t id = parse_token_id(id_value, "tokenizer.json vocab");
    if (static_cast<size_t>(id) >= vocab.size() || seen[id]) {
      fail("tokenizer.json: vocab ids must be 0..", vocab.size() - 1, " each used once; '", piece, "' has id ", id);
    }
    seen[id] = true;
    pieces_[id] = piece;
    piece_ids_[piece] = id;
  }
  vocab_size_ = static_cast<int>(pieces_.size());
}

// model.merges: "left right" strings (tokenizers before 0.20) or [left, right] pairs (0.20 on).
void Tokenizer::load_merge_list(const json& merges) {
  if (!merges.is_array()) fail("tokenizer.json: model \"merges\" must be a list");
  std::vector<std::pair<uint64_t, Merge>> entries;
  entries.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); rank++) {
    const json& line = merges[rank];
    std::string left, right;
    if (line.is_string()) {
      const std::string text = line.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        fail("tokenizer.json: merge ", rank, " ", line.dump(), " must be two pieces separated by one space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (line.is_array() && line.size() == 2 && line[0].is_string() && line[1].is_string()) {
      left = line[0].get<std::string>();
      right = line[1].get<std::string>();
    } else {
      fail("tokenizer.json: merge ", rank, " must be \"left right\" or [left, right], got ", line.dump());
    }
    const auto left_id = piece_ids_.find(left), right_id = piece_ids_.find(right), merged = piece_ids_.find(left + right);
    if (left_id == piece_ids_.end() || right_id == piece_ids_.end() || merged == piece_ids_.end()) {
      fail("tokenizer.json: merge ", rank, " ", line.dump(), " names a piece that is not in the vocabulary");
    }
    entries.push_back({pair_key(left_id->second, right_id->second),
                       Merge{static_cast<int32_t>(rank), merged->second}});
  }
  merges_.build(entries);
}

// The normalizer / pre-tokenizer / decoder that transformers' Llama converter writes, in its two
// forms: legacy (normalizer Prepend "▁" + Replace " " -> "▁", no pre-tokenizer) and non-legacy
// (no normalizer, Metaspace pre-tokenizer with prepend_scheme first or never, split false).
// The decoder undoes them: Replace "▁" -> " ", ByteFallback, Fuse, and Strip of one leading space
// when a space was prepended. Anything else is refused rather than encoded differently.
void Tokenizer::read_pipeline(const json& tokenizer_json) {
  const json normalizer = tokenizer_json.value("normalizer", json());
  const json pre_tokenizer = tokenizer_json.value("pre_tokenizer", json());
  const json prepend = {{"type", "Prepend"}, {"prepend", kMetaspace}};
  const json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}};
  const auto metaspace = [](const char* prepend_scheme) {
    return json{{"type", "Metaspace"}, {"replacement", kMetaspace}, {"prepend_scheme", prepend_scheme}, {"split", false}};
  };
  if (pre_tokenizer.is_null() && type_of(normalizer) == "Sequence" &&
      (normalizer.value("normalizers", json()) == json::array({prepend, replace}) ||
       normalizer.value("normalizers", json()) == json::array({replace}))) {
    legacy_ = true;
    add_prefix_space_ = normalizer["normalizers"].size() == 2;
  } else if (normalizer.is_null() && type_of(pre_tokenizer) == "Metaspace") {
    if (pre_tokenizer != metaspace("first") && pre_tokenizer != metaspace("never")) {
      fail("tokenizer.json: Metaspace pre-tokenizer ", pre_tokenizer.dump(), " is not supported (expected replacement "
           "\"▁\", prepend_scheme first or never, split false; older files without \"split\" split on spaces)");
    }
    legacy_ = false;
    add_prefix_space_ = pre_tokenizer == metaspace("first");
  } else {
    fail("tokenizer.json: normalizer ", normalizer.dump(), " with pre_tokenizer ", pre_tokenizer.dump(),
         " is not the Llama/Mistral form (Prepend + Replace normalizer, or a Metaspace pre-tokenizer)");
  }
  const json replace_back = {{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}};
  const json byte_fallback = {{"type", "ByteFallback"}}, fuse = {{"type", "Fuse"}};
  const json strip = {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}};
  const json decoder = tokenizer_json.value("decoder", json());
  const json steps = type_of(decoder) == "Sequence" ? decoder.value("decoders", json()) : json();
  if (steps == json::array({replace_back, byte_fallback, fuse, strip})) {
    decode_strips_leading_space_ = true;
  } else if (steps == json::array({replace_back, byte_fallback, fuse})) {
    decode_strips_leading_space_ = false;
  } else {
    fail("tokenizer.json: decoder ", decoder.dump(),
         " is not the Llama/Mistral form (Replace \"▁\", ByteFallback, Fuse, optional Strip)");
  }
}

// Byte-level BPE as Llama 3 and GPT-2 ship it (tokenizer.h): no normalizer, one of the two
// pre-tokenizers, a ByteLevel decoder (its flags do not change decoding), and a post-processor made of
// ByteLevel (offsets only) and TemplateProcessing steps. Anything else is refused rather than
// encoded differently.
void Tokenizer::read_byte_level_pipeline(const json& tokenizer_json, const json& config) {
  const std::string class_name = tokenizer_class(config);
  if (!class_name.empty() && class_name != "PreTrainedTokenizerFast" && class_name != "GPT2Tokenizer" &&
      class_name != "GPT2TokenizerFast") {
    fail("tokenizer_config.json: tokenizer_class '", class_name, "' with a byte-level tokenizer.json is not supported ",
         "(cst reads byte-level tokenizers as PreTrainedTokenizerFast and GPT2TokenizerFast do)");
  }
  if (json_flag(config, "add_prefix_space", false, "tokenizer_config.json")) {
    fail("tokenizer_config.json: add_prefix_space true with a byte-level tokenizer is not supported");
  }
  const json normalizer = tokenizer_json.value("normalizer", json());
  if (!normalizer.is_null()) {
    fail("tokenizer.json: byte-level BPE with normalizer ", normalizer.dump(),
         " is not supported (Llama 3 and GPT-2 have none)");
  }
  legacy_ = add_prefix_space_ = false;  // the Llama normalizer's flags: nothing is prepended or replaced
  const auto byte_level_step = [](const json& step, bool use_regex) {
    return type_of(step) == "ByteLevel" && step.value("add_prefix_space", json()) == false &&
           step.value("use_regex", json(true)) == use_regex;
  };
  const json llama3_split = {{"type", "Split"}, {"pattern", {{"Regex", kLlama3Pattern}}}, {"behavior", "Isolated"},
                             {"invert", false}};
  const json pre_tokenizer = tokenizer_json.value("pre_tokenizer", json());
  const json steps = type_of(pre_tokenizer) == "Sequence" ? pre_tokenizer.value("pretokenizers", json()) : json();
  if (steps.is_array() && steps.size() == 2 && steps[0] == llama3_split && byte_level_step(steps[1], false)) {
    byte_level_split_ = ByteLevelSplit::llama3;
  } else if (byte_level_step(pre_tokenizer, true)) {
    byte_level_split_ = ByteLevelSplit::gpt2;
  } else {
    fail("tokenizer.json: byte-level pre_tokenizer ", pre_tokenizer.dump(), " is not supported (cst reads Llama 3's "
         "Sequence[Split(its regex, Isolated), ByteLevel(add_prefix_space false, use_regex false)] and GPT-2's "
         "ByteLevel(add_prefix_space false, use_regex true))");
  }
  const json decoder = tokenizer_json.value("decoder", json());
  if (type_of(decoder) != "ByteLevel") {
    fail("tokenizer.json: decoder ", decoder.dump(), " is not supported with byte-level BPE (expected ByteLevel)");
  }
  read_post_processor(tokenizer_json.value("post_processor", json()));
}

// The special tokens AutoTokenizer(text) puts around a text: null or ByteLevel add none;
// TemplateProcessing adds those of its "single" template; a Sequence runs its steps in order.
void Tokenizer::read_post_processor(const json& post_processor) {
  const std::string type = type_of(post_processor);
  if (post_processor.is_null() || type == "ByteLevel") return;
  if (type == "TemplateProcessing") {
    std::vector<int32_t> prefix, suffix;
    read_single_template(post_processor, prefix, suffix);
    special_prefix_ids_.insert(special_prefix_ids_.begin(), prefix.begin(), prefix.end());
    special_suffix_ids_.insert(special_suffix_ids_.end(), suffix.begin(), suffix.end());
    return;
  }
  if (type == "Sequence" && post_processor.value("processors", json()).is_array()) {
    for (const json& step : post_processor["processors"]) read_post_processor(step);
    return;
  }
  fail("tokenizer.json: post_processor ", post_processor.dump(),
       " is not supported (expected ByteLevel, TemplateProcessing, or a Sequence of them)");
}

void Tokenizer::add_tokenizer_json_added_tokens(const json& tokenizer_json) {
  const json list = tokenizer_json.value("added_tokens", json::array());
  if (!list.is_array()) fail("tokenizer.json: \"added_tokens\" must be a list");
  for (const json& entry : list) {
    if (!entry.is_object() || !entry.contains("id")) fail("tokenizer.json: added token without an \"id\"");
    add_token(added_token_from_json(entry, parse_token_id(entry["id"], "tokenizer.json"), "tokenizer.json"));
  }
}

// ---- Added and special tokens ------------------------------------------------------------------

void Tokenizer::add_token(AddedToken token) {
  if (token.content.empty()) fail("added token ", token.id, " has empty content");
  const auto existing = added_index_by_id_.find(token.id);
  int index;
  if (existing != added_index_by_id_.end()) {
    index = existing->second;
    added_tokens_[index] = std::move(token);
  } else {
    index = static_cast<int>(added_tokens_.size());
    added_tokens_.push_back(std::move(token));
    added_index_by_id_[added_tokens_.back().id] = index;
  }
  added_index_by_content_[added_tokens_[index].content] = index;
  vocab_size_ = std::max(vocab_size_, added_tokens_[index].id + 1);
}

// Added tokens come from, in transformers' order of precedence: the model's own list (tokenizer.json
// "added_tokens" when the model comes from it; for a sentencepiece model, the converter's first three
// pieces <unk> <s> </s>, special), then tokenizer_config.json "added_tokens_decoder" when it exists,
// otherwise tokenizer.json "added_tokens" and added_tokens.json (whose tokens are "normalized"
// unless they name a special token). A later entry for an id replaces the earlier one.
void Tokenizer::load_added_tokens(const std::map<std::string, std::string>& files, const json& config,
                                  const std::optional<json>& tokenizer_json, bool model_from_json) {
  if (model_from_json) {
    add_tokenizer_json_added_tokens(*tokenizer_json);
  } else {
    for (int32_t id = 0; id < std::min<int32_t>(3, static_cast<int32_t>(pieces_.size())); id++) {
      add_token(AddedToken{pieces_[id], id, /*special=*/true, /*normalized=*/false});
    }
  }
  if (config.contains("added_tokens_decoder")) {
    const json& decoder = config["added_tokens_decoder"];
    if (!decoder.is_object()) fail("tokenizer_config.json: \"added_tokens_decoder\" must be an object");
    for (const auto& [key, entry] : decoder.items()) {
      int32_t id = -1;
      try {
        id = parse_token_id(json::parse(key), "tokenizer_config.json");
      } catch (const json::exception&) {
        fail("tokenizer_config.json: added_tokens_decoder key '", key, "' is not a token id");
      }
      add_token(added_token_from_json(entry, id, "tokenizer_config.json"));
    }
    return;
  }
  if (tokenizer_json && !model_from_json) add_tokenizer_json_added_tokens(*tokenizer_json);
  if (const auto added = parse_json_file(files, "added_tokens.json")) {
    for (const auto& [content, id] : added->items()) {
      // Whether it is special is settled in resolve_special_ids; until then it is "normalized".
      add_token(AddedToken{content, parse_token_id(id, "added_tokens.json"), false, /*normalized=*/true});
    }
  }
}

// bos/eos/unk/pad/additional_special_tokens name special tokens (tokenizer_config.json; the old
// layout without added_tokens_decoder lets special_tokens_map.json override it). A named token is
// special; added_tokens.json tokens that are special are matched in raw text, others normalized.
void Tokenizer::resolve_special_ids(const std::map<std::string, std::string>& files) {
  json settings = parse_json_file(files, "tokenizer_config.json").value_or(json::object());
  const bool old_layout = !settings.contains("added_tokens_decoder");
  if (old_layout) {
    if (const auto map = parse_json_file(files, "special_tokens_map.json")) {
      for (const auto& [key, value] : map->items()) settings[key] = value;
    }
  }
  // The tokenizer class's defaults when a key is absent; null means "none".
  const std::map<std::string, std::string> defaults = default_special_tokens(settings, byte_level());
  std::map<std::string, std::optional<std::string>> names;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (settings.contains(key)) {
      names[key] = token_name(settings[key], "tokenizer_config.json " + std::string(key));
    } else if (defaults.count(key)) {
      names[key] = defaults.at(key);
    }
  }
  std::vector<std::string> special_names;
  for (const auto& [key, name] : names) {
    if (name) special_names.push_back(*name);
  }
  if (settings.contains("additional_special_tokens") && settings["additional_special_tokens"].is_array()) {
    for (const json& value : settings["additional_special_tokens"]) {
      if (auto name = token_name(value, "tokenizer_config.json additional_special_tokens")) special_names.push_back(*name);
    }
  }
  for (const std::string& name : special_names) {
    const auto found = added_index_by_content_.find(name);
    if (found != added_index_by_content_.end()) {
      AddedToken& token = added_tokens_[found->second];
      if (!token.special && old_layout) token.normalized = false;  // added_tokens.json rule
      token.special = true;
    } else if (!piece_ids_.count(name)) {
      fail("tokenizer_config.json: special token '", name, "' is not in the vocabulary");
    }
  }
  for (const AddedToken& token : added_tokens_) {
    normalized_contents_.push_back(token.normalized ? normalize(token.content) : token.content);
  }
  const auto id_of = [&](const char* key) -> int32_t {
    const auto found = names.find(key);
    if (found == names.end() || !found->second) return -1;
    return *token_id(*found->second);
  };
  bos_id_ = id_of("bos_token");
  eos_id_ = id_of("eos_token");
  pad_id_ = id_of("pad_token") >= 0 ? id_of("pad_token") : eos_id_;
}

// ---- Encoding -------------------------------------------------------------------------------------

// Finds added tokens (the raw pass or the normalized pass) leftmost first, longest at a position,
// and cuts the text into token spans and the ordinary text between them.
std::vector<Tokenizer::Span> Tokenizer::split_on_added_tokens(std::string_view text, bool normalized_pass) const {
  std::vector<Span> spans;
  size_t start_of_rest = 0;
  size_t search_from = 0;
  while (search_from < text.size()) {
    int best = -1;
    size_t match_at = 0, best_length = 0;
    for (size_t pos = search_from; pos < text.size() && best < 0; pos++) {
      for (size_t i = 0; i < added_tokens_.size(); i++) {
        if (added_tokens_[i].normalized != normalized_pass) continue;
        const std::string& pattern = normalized_contents_[i];
        if (pattern[0] != text[pos] || pattern.size() <= best_length) continue;
        if (text.compare(pos, pattern.size(), pattern) == 0) {
          best = static_cast<int>(i);
          best_length = pattern.size();
          match_at = pos;
        }
      }
    }
    if (best < 0) break;
    size_t begin = match_at, end = match_at + best_length;
    if (added_tokens_[best].lstrip) begin = std::max(whitespace_run_start_before(text, begin), start_of_rest);
    if (added_tokens_[best].rstrip) end = whitespace_run_end_after(text, end);
    if (begin > start_of_rest) spans.push_back({start_of_rest, begin, -1});
    spans.push_back({begin, end, best});
    start_of_rest = search_from = end;
  }
  if (start_of_rest < text.size()) spans.push_back({start_of_rest, text.size(), -1});
  return spans;
}

// The legacy normalizer: "▁" before the text (when add_prefix_space) and spaces as "▁".
// legacy = false has no normalizer.
std::string Tokenizer::normalize(std::string_view text) const {
  if (!legacy_ || text.empty()) return std::string(text);
  return (add_prefix_space_ ? kMetaspace : "") + replace_all(text, " ", kMetaspace);
}

// LlamaTokenizerFast replaces tokenizer.json's post-processor with its own: BOS in front when
// add_bos_token (default true), EOS behind when add_eos_token (default false).
void Tokenizer::rebuild_llama_post_processor(const json& config) {
  const char* const where = "tokenizer_config.json";
  if (json_flag(config, "add_bos_token", true, where) && bos_id_ >= 0) special_prefix_ids_ = {bos_id_};
  if (json_flag(config, "add_eos_token", false, where) && eos_id_ >= 0) special_suffix_ids_ = {eos_id_};
}

std::vector<int32_t> Tokenizer::encode_with_special_tokens(std::string_view text) const {
  std::vector<int32_t> ids = special_prefix_ids_;
  const std::vector<int32_t> text_ids = encode(text);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  ids.insert(ids.end(), special_suffix_ids_.begin(), special_suffix_ids_.end());
  return ids;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  for (const Span& span : split_on_added_tokens(text, /*normalized_pass=*/false)) {
    if (span.added_token_index >= 0) {
      ids.push_back(added_tokens_[span.added_token_index].id);
    } else {
      encode_ordinary(text.substr(span.begin, span.end - span.begin), span.begin, ids);
    }
  }
  return ids;
}

// Text between raw-matched added tokens: normalize, match normalized added tokens, pre-tokenize
// (legacy = false: Metaspace, "▁" prepended only at the very start of the text; byte-level: the
// pattern's pre-tokens), then BPE.
void Tokenizer::encode_ordinary(std::string_view text, size_t offset_in_text, std::vector<int32_t>& ids) const {
  const std::string normalized = normalize(text);
  for (const Span& span : split_on_added_tokens(normalized, /*normalized_pass=*/true)) {
    if (span.added_token_index >= 0) {
      ids.push_back(added_tokens_[span.added_token_index].id);
      continue;
    }
    if (byte_level()) {
      encode_byte_level(std::string_view(normalized).substr(span.begin, span.end - span.begin), ids);
      continue;
    }
    std::string word = normalized.substr(span.begin, span.end - span.begin);
    if (!legacy_) {
      word = replace_all(word, " ", kMetaspace);
      const bool starts_text = offset_in_text + span.begin == 0;
      if (add_prefix_space_ && starts_text && word.compare(0, kMetaspace.size(), kMetaspace) != 0) {
        word = kMetaspace + word;
      }
    }
    encode_word(word, ids);
  }
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  if (!byte_level()) fail("pre_tokenize: only byte-level tokenizers have a regex pre-tokenizer");
  const TextChars chars = text_chars(text);
  std::vector<std::string> words;
  for (size_t i = 0; i < chars.size();) {
    const size_t end =
        byte_level_split_ == ByteLevelSplit::llama3 ? llama3_match_end(chars, i) : gpt2_match_end(chars, i);
    const size_t end_byte = end < chars.size() ? chars[end].begin : text.size();
    words.push_back(to_byte_level(text.substr(chars[i].begin, end_byte - chars[i].begin)));
    i = end;
  }
  return words;
}

// Byte-level: each pre-token taken whole when ignore_merges finds it in the vocabulary, merged
// from its characters otherwise.
void Tokenizer::encode_byte_level(std::string_view text, std::vector<int32_t>& ids) const {
  for (const std::string& word : pre_tokenize(text)) {
    const auto whole = ignore_merges_ ? piece_ids_.find(word) : piece_ids_.end();
    if (whole != piece_ids_.end()) {
      ids.push_back(whole->second);
    } else {
      encode_word(word, ids);
    }
  }
}

// Byte-pair encoding of one word: characters (or their byte pieces) merged best rank first,
// leftmost first among equal ranks.
void Tokenizer::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int prev, next;  // neighbours in the merged sequence; -1 at the ends
  };
  std::vector<Symbol> symbols;
  const auto push_symbol = [&](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = utf8_length_at(word, pos);
    const auto found = piece_ids_.find(std::string(word.substr(pos, length)));
    if (found != piece_ids_.end()) {
      push_symbol(found->second);
    } else if (std::all_of(word.begin() + pos, word.begin() + pos + length,
                           [&](char c) { return byte_piece_ids_[static_cast<unsigned char>(c)] >= 0; })) {
      for (size_t i = pos; i < pos + length; i++) push_symbol(byte_piece_ids_[static_cast<unsigned char>(word[i])]);
    } else if (unk_id_ >= 0 && !(fuse_unknown_ && !symbols.empty() && symbols.back().id == unk_id_)) {
      push_symbol(unk_id_);  // with fuse_unk, a run of unknown characters is one <unk>
    }
    pos += length;
  }

  struct Candidate {
    int32_t rank;
    int position;
    int32_t merged_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto consider = [&](int left) {
    const int right = symbols[left].next;
    if (right < 0) return;
    const Merge* merge = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (merge) queue.push({merge->rank, left, merge->merged_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); i++) consider(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.position];
    if (left.id < 0 || left.next < 0) continue;  // merged away, or nothing to its right any more
    const Merge* merge = merges_.find(pair_key(left.id, symbols[left.next].id));
    if (!merge || merge->merged_id != top.merged_id) continue;  // stale
    Symbol& right = symbols[left.next];
    left.id = top.merged_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.position;
    right.id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(top.position);
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.id >= 0) ids.push_back(symbol.id);
  }
}

// ---- Decoding -------------------------------------------------------------------------------------

const std::string& Tokenizer::token_text(int32_t id) const {
  const auto added = added_index_by_id_.find(id);
  if (added != added_index_by_id_.end()) return added_tokens_[added->second].content;
  if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) {
    fail("decode: token id ", id, " is outside the vocabulary (size ", vocab_size_, ")");
  }
  return pieces_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return decode_text(ids, skip_special_tokens, /*settled_only=*/false);
}

std::string Tokenizer::decode_settled(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return decode_text(ids, skip_special_tokens, /*settled_only=*/true);
}

// The decoder of the pipeline, then transformers' clean-up when it is on.
std::string Tokenizer::decode_text(const std::vector<int32_t>& ids, bool skip_special_tokens, bool settled_only) const {
  std::string text = byte_level() ? decode_byte_level(ids, skip_special_tokens, settled_only)
                                  : decode_metaspace(ids, skip_special_tokens, settled_only);
  if (!clean_up_tokenization_spaces_) return text;
  text.resize(clean_up_tokenization(text, /*more_may_follow=*/settled_only));
  return text;
}

// The ByteLevel decoder: every token's bytes joined, read as UTF-8 (String::from_utf8_lossy).
std::string Tokenizer::decode_byte_level(const std::vector<int32_t>& ids, bool skip_special_tokens,
                                         bool settled_only) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    append_token_bytes(token_text(id), bytes);
  }
  return utf8_lossy(bytes, /*stop_at_cut_character=*/settled_only);
}

// The Llama/Mistral decoder: "▁" -> " ", runs of <0xXX> pieces -> their bytes (one U+FFFD per
// byte when the run is not valid UTF-8), everything joined, then one leading space stripped. A run
// of byte pieces at the end is not settled: the next byte can change its text.
std::string Tokenizer::decode_metaspace(const std::vector<int32_t>& ids, bool skip_special_tokens,
                                       bool settled_only) const {
  std::string text, pending_bytes;
  const auto flush_bytes = [&] {
    if (is_valid_utf8(pending_bytes)) {
      text += pending_bytes;
    } else {
      for (size_t i = 0; i < pending_bytes.size(); i++) text += kReplacementCharacter;
    }
    pending_bytes.clear();
  };
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    const std::string piece = replace_all(token_text(id), kMetaspace, " ");
    const int byte = byte_of_piece(piece);
    if (byte >= 0) {
      pending_bytes.push_back(static_cast<char>(byte));
      continue;
    }
    flush_bytes();
    text += piece;
  }
  if (!settled_only) flush_bytes();
  if (decode_strips_leading_space_ && !text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

// ---- Lookups --------------------------------------------------------------------------------------

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  const auto added = added_index_by_content_.find(std::string(token));
  if (added != added_index_by_content_.end()) return added_tokens_[added->second].id;
  const auto piece = piece_ids_.find(std::string(token));
  if (piece != piece_ids_.end()) return piece->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  const auto added = added_index_by_id_.find(id);
  return added != added_index_by_id_.end() && added_tokens_[added->second].special;
}

bool Tokenizer::is_byte(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(pieces_.size()) && !added_index_by_id_.count(id) &&
         byte_of_piece(pieces_[id]) >= 0;
}

// ---- Streaming ------------------------------------------------------------------------------------

// Decodes the whole sequence each time, which is cheap next to a model step.
std::string StreamingDecoder::push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_.decode_settled(ids_, skip_special_tokens_);
  if (text.size() <= emitted_bytes_) return "";
  std::string fresh = text.substr(emitted_bytes_);
  emitted_bytes_ = text.size();
  return fresh;
}

std::string StreamingDecoder::finish() {
  const std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  std::string rest = text.size() > emitted_bytes_ ? text.substr(emitted_bytes_) : std::string();
  emitted_bytes_ = text.size();
  return rest;
}

}  // namespace cst

// Parquet reader for the files pyarrow, pandas and Hugging Face datasets write, written from the
// format specification (https://github.com/apache/parquet-format). It reads flat string
// (BYTE_ARRAY, string and large_string) and integer (INT32, INT64) columns, REQUIRED or OPTIONAL,
// and message lists (list<struct<role: string, content: string>>, in the three-level form pyarrow
// and HF datasets write and the legacy two- and one-level forms of older Java writers; see
// MessageLevels in parquet.cpp), in PLAIN, dictionary and delta encodings, from data pages v1 and
// v2, compressed with snappy, gzip or zstd or not at all. Only the requested columns' chunks are
// read from disk.
//
// Anything else (other nested columns, other types or codecs, encryption) and any corrupt byte
// ends in one cst::Error naming the file, the column and the problem. A null message inside a
// list is refused too: a chat turn has to exist to be used.
#pragma once
#include <string>
#include <vector>

#include "data/table.h"

namespace cst {

Table read_parquet_file(const std::string& path, const std::vector<std::string>& wanted);

}  // namespace cst

// Private: a pull reader of CBOR items over libcbor's streaming decoder (cbor_stream_decode),
// one item head per call, with no item tree and no allocation. It enforces the limits that do
// not depend on the message shape (item count, string length, container sizes) and the generic
// restrictions of docs/wire-format.md (no tags, no indefinite lengths, strict UTF-8).
// The parsers in decode.cpp check depth and shape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <system_error>

#include "edgecqrs/codec.hpp"

namespace edgecqrs::detail {

struct cbor_token {
  enum class kind : std::uint8_t { uint, negint, bytes, text, array, map, real, boolean, null,
                                   undefined };
  kind k = kind::null;
  std::uint64_t u = 0;               // uint value, negint argument (value is -1 - u), count
  const std::uint8_t* p = nullptr;   // string bytes (bytes/text)
  std::size_t n = 0;                 // string length
  double d = 0.0;                    // real, widened bit-exactly
  bool b = false;                    // boolean
};

class cbor_reader {
 public:
  cbor_reader(const std::uint8_t* data, std::size_t size, const decode_limits& limits) noexcept
      : data_(data), size_(size), limits_(limits) {}

  // Reads the next item head (with its contents for strings and floats).
  std::error_code next(cbor_token& t) noexcept;

  bool at_end() const noexcept { return pos_ == size_; }
  std::size_t position() const noexcept { return pos_; }
  const decode_limits& limits() const noexcept { return limits_; }

 private:
  std::error_code precheck() const noexcept;

  const std::uint8_t* data_;
  std::size_t size_;
  const decode_limits& limits_;
  std::size_t pos_ = 0;
  std::uint64_t items_ = 0;     // items read so far
  std::uint64_t promised_ = 0;  // items read plus items announced by container heads
};

}  // namespace edgecqrs::detail

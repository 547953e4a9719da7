// Private: the master's hot-path encoder of a plain event (no dt, no tracked previous values,
// no correlation id, no meta), written straight into a growable buffer: one bound check per
// event instead of one per item, no call per item. Same bytes as encode_event
// (docs/wire-format.md) for such an event; tests/master/test_fast_encode.cpp compares the two.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <system_error>

#include "codec/cbor_writer.hpp"
#include "codec/float_bits.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/value.hpp"
#include "utf8.hpp"

namespace edgecqrs::detail {

// Shortest-form CBOR head at `p` (room checked by the caller); returns the next position.
inline std::uint8_t* put_head(std::uint8_t* p, std::uint8_t major, std::uint64_t arg) noexcept {
  const std::uint8_t mt = static_cast<std::uint8_t>(major << 5);
  int n;
  if (arg < 24) {
    *p = static_cast<std::uint8_t>(mt | arg);
    return p + 1;
  } else if (arg <= 0xff) {
    *p = mt | 24;
    n = 1;
  } else if (arg <= 0xffff) {
    *p = mt | 25;
    n = 2;
  } else if (arg <= 0xffffffffull) {
    *p = mt | 26;
    n = 4;
  } else {
    *p = mt | 27;
    n = 8;
  }
  for (int k = 1; k <= n; ++k) p[k] = static_cast<std::uint8_t>(arg >> (8 * (n - k)));
  return p + 1 + n;
}

// As cbor_writer::real: the shortest of float16/float32/float64 that round-trips bit-exactly.
inline std::uint8_t* put_real(std::uint8_t* p, double d) noexcept {
  const std::uint64_t bits = double_bits(d);
  std::uint32_t narrow;
  if (narrow_float_bits(bits, 5, 10, narrow)) {
    p[0] = 0xf9;
    p[1] = static_cast<std::uint8_t>(narrow >> 8);
    p[2] = static_cast<std::uint8_t>(narrow);
    return p + 3;
  }
  if (narrow_float_bits(bits, 8, 23, narrow)) {
    p[0] = 0xfa;
    for (int k = 0; k < 4; ++k) p[1 + k] = static_cast<std::uint8_t>(narrow >> (8 * (3 - k)));
    return p + 5;
  }
  p[0] = 0xfb;
  for (int k = 0; k < 8; ++k) p[1 + k] = static_cast<std::uint8_t>(bits >> (8 * (7 - k)));
  return p + 9;
}

// Appends [head, row_version, values...] to `out` (a byte vector); on error `out` is unchanged.
template <class Buf>
std::error_code append_plain_event(Buf& out, event_kind kind, std::uint64_t row_version,
                                   const value_view* v, std::size_t n) {
  if (static_cast<std::uint64_t>(kind) > 2 || (n && !v))
    return make_error_code(errc::invalid_argument);
  // Upper bound: array head, event head, version, one head per value, their bytes.
  std::size_t bound = 9 + 1 + 9 + 9 * n;
  for (std::size_t k = 0; k < n; ++k) {
    const value_view& x = v[k];
    if (x.type == value_type::text || x.type == value_type::blob) {
      if (x.size != 0 && x.data == nullptr) return make_error_code(errc::invalid_argument);
      // SQLite does not validate TEXT (see put_value in the codec).
      if (x.type == value_type::text &&
          !valid_utf8(static_cast<const std::uint8_t*>(x.data), x.size))
        return make_error_code(errc::invalid_argument);
      bound += x.size;
    } else if (x.type != value_type::null && x.type != value_type::integer &&
               x.type != value_type::real) {
      return make_error_code(errc::invalid_argument);
    }
  }
  const std::size_t len = out.size();
  out.resize(len + bound);
  std::uint8_t* const start = out.data() + len;
  std::uint8_t* p = put_head(start, major_array, 2 + static_cast<std::uint64_t>(n));
  p = put_head(p, major_uint, static_cast<std::uint64_t>(kind));  // no dt, no extras
  p = put_head(p, major_uint, row_version);
  for (std::size_t k = 0; k < n; ++k) {
    const value_view& x = v[k];
    switch (x.type) {
      case value_type::integer:
        p = x.i >= 0 ? put_head(p, major_uint, static_cast<std::uint64_t>(x.i))
                     : put_head(p, major_negint, ~static_cast<std::uint64_t>(x.i));
        break;
      case value_type::real: p = put_real(p, x.d); break;
      case value_type::text:
      case value_type::blob:
        p = put_head(p, x.type == value_type::text ? major_text : major_bytes, x.size);
        if (x.size) std::memcpy(p, x.data, x.size);
        p += x.size;
        break;
      default: *p++ = 0xf6; break;  // null
    }
  }
  out.resize(len + static_cast<std::size_t>(p - start));
  return {};
}

}  // namespace edgecqrs::detail

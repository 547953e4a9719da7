// Private: an allocation-free CBOR writer into a caller buffer (or a size-only dry run).
// Errors are sticky (QCBOR's habit): callers write everything, then check ok() once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "codec/float_bits.hpp"

namespace edgecqrs::detail {

enum : std::uint8_t {
  major_uint = 0,
  major_negint = 1,
  major_bytes = 2,
  major_text = 3,
  major_array = 4,
  major_map = 5,
  major_simple = 7,
};

class cbor_writer {
 public:
  // buf == nullptr: measure only, nothing is written and the capacity is ignored.
  cbor_writer(std::uint8_t* buf, std::size_t cap) noexcept : buf_(buf), cap_(cap) {}

  bool overflow() const noexcept { return overflow_; }
  std::size_t size() const noexcept { return pos_; }

  // Shortest-form head: major type and argument.
  void head(std::uint8_t major, std::uint64_t arg) noexcept {
    std::uint8_t h[9];
    std::size_t n;
    const std::uint8_t mt = static_cast<std::uint8_t>(major << 5);
    if (arg < 24) {
      h[0] = static_cast<std::uint8_t>(mt | arg);
      n = 1;
    } else if (arg <= 0xff) {
      h[0] = mt | 24;
      n = 2;
    } else if (arg <= 0xffff) {
      h[0] = mt | 25;
      n = 3;
    } else if (arg <= 0xffffffffull) {
      h[0] = mt | 26;
      n = 5;
    } else {
      h[0] = mt | 27;
      n = 9;
    }
    for (std::size_t k = 1; k < n; ++k) h[k] = static_cast<std::uint8_t>(arg >> (8 * (n - 1 - k)));
    raw(h, n);
  }

  void uint(std::uint64_t v) noexcept { head(major_uint, v); }
  void sint(std::int64_t v) noexcept {
    if (v >= 0) {
      head(major_uint, static_cast<std::uint64_t>(v));
    } else {
      // -1 - v without overflow for INT64_MIN: ~v reinterpreted.
      head(major_negint, ~static_cast<std::uint64_t>(v));
    }
  }
  void array(std::uint64_t n) noexcept { head(major_array, n); }
  void map(std::uint64_t n) noexcept { head(major_map, n); }
  void text(const void* p, std::size_t n) noexcept {
    head(major_text, n);
    raw(p, n);
  }
  void bytes(const void* p, std::size_t n) noexcept {
    head(major_bytes, n);
    raw(p, n);
  }
  void null() noexcept { byte(0xf6); }
  void boolean(bool b) noexcept { byte(b ? 0xf5 : 0xf4); }

  // The shortest of float16/float32/float64 that round-trips bit-exactly.
  void real(double d) noexcept {
    const std::uint64_t bits = double_bits(d);
    std::uint32_t narrow;
    std::uint8_t h[9];
    if (narrow_float_bits(bits, 5, 10, narrow)) {
      h[0] = 0xf9;
      h[1] = static_cast<std::uint8_t>(narrow >> 8);
      h[2] = static_cast<std::uint8_t>(narrow);
      raw(h, 3);
    } else if (narrow_float_bits(bits, 8, 23, narrow)) {
      h[0] = 0xfa;
      for (int k = 0; k < 4; ++k) h[1 + k] = static_cast<std::uint8_t>(narrow >> (8 * (3 - k)));
      raw(h, 5);
    } else {
      h[0] = 0xfb;
      for (int k = 0; k < 8; ++k) h[1 + k] = static_cast<std::uint8_t>(bits >> (8 * (7 - k)));
      raw(h, 9);
    }
  }

  // After an overflow nothing more is written but the size keeps counting, so the caller
  // learns how much room the whole output needs.
  void raw(const void* p, std::size_t n) noexcept {
    if (buf_ != nullptr && !overflow_) {
      if (n > cap_ - pos_) {
        overflow_ = true;
      } else if (n != 0) {
        std::memcpy(buf_ + pos_, p, n);
      }
    }
    pos_ += n;
  }

 private:
  void byte(std::uint8_t b) noexcept { raw(&b, 1); }

  std::uint8_t* buf_;
  std::size_t cap_;
  std::size_t pos_ = 0;
  bool overflow_ = false;
};

}  // namespace edgecqrs::detail

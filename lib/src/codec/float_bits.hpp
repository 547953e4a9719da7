// Private: bit-exact conversions between IEEE 754 binary64 and binary16/binary32.
// Done on integer bit patterns, never through the FPU, because float<->double conversions in
// hardware quiet signalling NaNs and libcbor's half decoder drops NaN payloads: the wire format
// promises that every REAL survives bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

namespace edgecqrs::detail {

inline std::uint64_t double_bits(double d) noexcept {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

inline double bits_double(std::uint64_t b) noexcept {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

// Widens a binary16 (exp_bits 5, mant_bits 10) or binary32 (8, 23) pattern to binary64 bits.
inline std::uint64_t widen_float_bits(std::uint32_t bits, int exp_bits, int mant_bits) noexcept {
  const std::uint64_t sign = static_cast<std::uint64_t>(bits >> (exp_bits + mant_bits)) << 63;
  const std::uint32_t exp_max = (1u << exp_bits) - 1;
  const std::uint32_t e = (bits >> mant_bits) & exp_max;
  const std::uint64_t m = bits & ((1u << mant_bits) - 1);
  const int bias = static_cast<int>(exp_max >> 1);
  if (e == exp_max) return sign | (0x7ffull << 52) | (m << (52 - mant_bits));  // Inf / NaN
  if (e == 0) {
    if (m == 0) return sign;  // +-0
    // Subnormal: m * 2^(1 - bias - mant_bits); normalise around its leading bit.
    int p = 63 - __builtin_clzll(m);
    std::uint64_t exp = static_cast<std::uint64_t>(p + 1 - bias - mant_bits + 1023);
    std::uint64_t frac = (m << (52 - p)) & ((1ull << 52) - 1);
    return sign | (exp << 52) | frac;
  }
  std::uint64_t exp = static_cast<std::uint64_t>(static_cast<int>(e) - bias + 1023);
  return sign | (exp << 52) | (m << (52 - mant_bits));
}

// Narrows binary64 bits to a binary16/binary32 pattern when, and only when, widening it back
// gives the very same bits. Returns false otherwise.
inline bool narrow_float_bits(std::uint64_t d, int exp_bits, int mant_bits,
                              std::uint32_t& out) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(d >> 63) << (exp_bits + mant_bits);
  const std::uint32_t exp_max = (1u << exp_bits) - 1;
  const int bias = static_cast<int>(exp_max >> 1);
  const int e64 = static_cast<int>((d >> 52) & 0x7ff);
  const std::uint64_t m64 = d & ((1ull << 52) - 1);
  const int drop = 52 - mant_bits;
  std::uint32_t cand;
  if (e64 == 0x7ff) {
    if (m64 & ((1ull << drop) - 1)) return false;  // NaN payload bits that would be lost
    cand = sign | (exp_max << mant_bits) | static_cast<std::uint32_t>(m64 >> drop);
  } else if (e64 == 0) {
    if (m64 != 0) return false;  // binary64 subnormals are far below any narrower range
    cand = sign;
  } else {
    const int e = e64 - 1023;
    const std::uint64_t full = m64 | (1ull << 52);
    if (e >= 1 - bias && e <= bias) {
      if (m64 & ((1ull << drop) - 1)) return false;
      cand = sign | (static_cast<std::uint32_t>(e + bias) << mant_bits) |
             static_cast<std::uint32_t>(m64 >> drop);
    } else if (e < 1 - bias && e >= 1 - bias - mant_bits) {
      // Subnormal target: value = full * 2^(e - 52) = k * 2^(1 - bias - mant_bits).
      const int shift = 52 - (e - (1 - bias - mant_bits));
      if (full & ((1ull << shift) - 1)) return false;
      cand = sign | static_cast<std::uint32_t>(full >> shift);
    } else {
      return false;
    }
  }
  if (widen_float_bits(cand, exp_bits, mant_bits) != d) return false;
  out = cand;
  return true;
}

}  // namespace edgecqrs::detail

// Item boundary scanner for CBOR sequences: walks heads only, no allocation, bounded depth.
#include "edgecqrs/cbor_seq.hpp"

#include "edgecqrs/errors.hpp"

namespace edgecqrs {

std::error_code cbor_item_size(const std::uint8_t* data, std::size_t size, std::size_t& item_size,
                               std::size_t max_depth, std::size_t max_items) noexcept {
  item_size = 0;
  if (size == 0) return errc::empty_input;
  constexpr std::size_t stack_cap = 64;
  if (max_depth > stack_cap) max_depth = stack_cap;
  std::uint64_t pending[stack_cap];  // items still to read at each open level
  std::size_t depth = 0;
  std::size_t pos = 0;
  std::uint64_t remaining = 1;  // items still to read at the top level
  std::size_t items = 0;
  while (true) {
    if (remaining == 0) {
      if (depth == 0) break;
      remaining = pending[--depth];
      continue;
    }
    --remaining;
    if (++items > max_items) return errc::too_many_items;
    if (pos >= size) return errc::truncated;
    const std::uint8_t ib = data[pos++];
    const std::uint8_t major = ib >> 5, ai = ib & 0x1f;
    std::uint64_t arg = 0;
    if (ai < 24) {
      arg = ai;
    } else if (ai <= 27) {
      const std::size_t n = std::size_t{1} << (ai - 24);
      if (size - pos < n) return errc::truncated;
      for (std::size_t k = 0; k < n; ++k) arg = (arg << 8) | data[pos + k];
      pos += n;
    } else if (ai == 31) {
      if (major >= 2 && major <= 5) return errc::indefinite_length;
      return errc::not_well_formed;  // break or indefinite marker on an integer/tag/simple
    } else {
      return errc::not_well_formed;  // 28-30 are reserved
    }
    switch (major) {
      case 0: case 1: break;
      case 2: case 3:
        if (size - pos < arg) return errc::truncated;
        pos += static_cast<std::size_t>(arg);
        break;
      case 4: case 5: {
        const std::uint64_t n = major == 5 ? arg * 2 : arg;
        if (major == 5 && arg > (UINT64_MAX >> 1)) return errc::not_well_formed;
        if (n > size - pos) return errc::truncated;  // each item needs at least one byte
        if (n == 0) break;
        if (depth + 1 > max_depth) return errc::too_deep;
        pending[depth++] = remaining;
        remaining = n;
        break;
      }
      case 6:  // a tag is followed by exactly one item
        remaining += 1;
        break;
      case 7:
        if (ai == 24 && arg < 32) return errc::not_well_formed;  // simple value in two bytes < 32
        break;
    }
  }
  item_size = pos;
  return {};
}

}  // namespace edgecqrs

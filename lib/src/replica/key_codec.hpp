// Row keys in the replica's bookkeeping (edgecqrs_r_rows, retries, dead letters): the primary-key
// values of a row in a compact, self-describing byte string (private, never on the wire).
// Per value: one type byte, then int64/double as 8 big-endian bytes, or a 4-byte big-endian
// length and the bytes of a TEXT/BLOB.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "edgecqrs/value.hpp"

namespace edgecqrs::replica_detail {

inline void append_be(std::string& out, std::uint64_t v, int bytes) {
  for (int s = (bytes - 1) * 8; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

inline std::uint64_t read_be(std::string_view in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int k = 0; k < bytes; ++k) v = (v << 8) | static_cast<std::uint8_t>(in[at + k]);
  return v;
}

inline void append_key(std::string& out, const value& v) {
  out.push_back(static_cast<char>(v.type()));
  switch (v.type()) {
    case value_type::null: break;
    case value_type::integer: append_be(out, static_cast<std::uint64_t>(v.as_integer()), 8); break;
    case value_type::real: {
      double d = v.as_real();
      std::uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      append_be(out, bits, 8);
      break;
    }
    case value_type::text:
    case value_type::blob:
      append_be(out, v.bytes().size(), 4);
      out.append(v.bytes());
      break;
  }
}

// False on a malformed key (only possible if the database was edited by hand).
inline bool decode_key(std::string_view in, std::vector<value>& out) {
  out.clear();
  std::size_t i = 0;
  while (i < in.size()) {
    auto t = static_cast<value_type>(static_cast<std::uint8_t>(in[i++]));
    switch (t) {
      case value_type::null: out.push_back(value::null()); break;
      case value_type::integer:
        if (in.size() - i < 8) return false;
        out.push_back(value::integer(static_cast<std::int64_t>(read_be(in, i, 8))));
        i += 8;
        break;
      case value_type::real: {
        if (in.size() - i < 8) return false;
        std::uint64_t bits = read_be(in, i, 8);
        double d;
        std::memcpy(&d, &bits, sizeof d);
        out.push_back(value::real(d));
        i += 8;
        break;
      }
      case value_type::text:
      case value_type::blob: {
        if (in.size() - i < 4) return false;
        std::size_t n = static_cast<std::size_t>(read_be(in, i, 4));
        i += 4;
        if (in.size() - i < n) return false;
        auto s = in.substr(i, n);
        out.push_back(t == value_type::text ? value::text(s) : value::blob(s));
        i += n;
        break;
      }
      default: return false;
    }
  }
  return true;
}

}  // namespace edgecqrs::replica_detail

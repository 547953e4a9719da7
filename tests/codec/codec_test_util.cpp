#include "codec_test_util.hpp"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace edgecqrs::test {
namespace {

std::string describe(const value& v) {
  char b[64];
  switch (v.type()) {
    case value_type::null: return "null";
    case value_type::integer:
      std::snprintf(b, sizeof b, "int %" PRId64, v.as_integer());
      return b;
    case value_type::real: {
      std::uint64_t bits;
      double d = v.as_real();
      std::memcpy(&bits, &d, 8);
      std::snprintf(b, sizeof b, "real %.17g (0x%016" PRIx64 ")", d, bits);
      return b;
    }
    case value_type::text: return "text \"" + std::string(v.bytes()) + "\"";
    case value_type::blob: return "blob[" + std::to_string(v.bytes().size()) + "]";
  }
  return "?";
}

std::string diff_values(const std::vector<value>& a, const std::vector<value>& b,
                        const std::string& where) {
  if (a.size() != b.size())
    return where + ": " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) + " values";
  for (std::size_t k = 0; k < a.size(); ++k)
    if (a[k] != b[k])
      return where + "[" + std::to_string(k) + "]: " + describe(a[k]) + " vs " + describe(b[k]);
  return {};
}

}  // namespace

std::string diff(const message& a, const message& b) {
  if (a.schema_tag != b.schema_tag) return "schema_tag";
  if (a.first_seq != b.first_seq) return "first_seq";
  if (a.target != b.target) return "target";
  if (a.expires_ms != b.expires_ms) return "expires_ms";
  if (a.has_resync != b.has_resync) return "has_resync";
  if (a.has_resync &&
      (a.resync.session != b.resync.session || a.resync.upto_seq != b.resync.upto_seq ||
       a.resync.part != b.resync.part || a.resync.last != b.resync.last))
    return "resync";
  if (a.reply_to != b.reply_to) return "reply_to";
  if (a.events.size() != b.events.size())
    return "event count " + std::to_string(a.events.size()) + " vs " +
           std::to_string(b.events.size());
  for (std::size_t i = 0; i < a.events.size(); ++i) {
    const event& x = a.events[i];
    const event& y = b.events[i];
    const std::string at = "event " + std::to_string(i);
    if (x.kind != y.kind) return at + " kind";
    if (x.row_version != y.row_version) return at + " row_version";
    if (x.updated_ms != y.updated_ms)
      return at + " updated_ms " + std::to_string(x.updated_ms) + " vs " +
             std::to_string(y.updated_ms);
    if (auto d = diff_values(x.values, y.values, at + " values"); !d.empty()) return d;
    if (x.previous.size() != y.previous.size()) return at + " previous count";
    for (std::size_t k = 0; k < x.previous.size(); ++k)
      if (x.previous[k].column != y.previous[k].column || x.previous[k].old != y.previous[k].old)
        return at + " previous[" + std::to_string(k) + "]";
    if (x.correlation_id != y.correlation_id) return at + " correlation_id";
    if (x.meta.size() != y.meta.size()) return at + " meta count";
    for (std::size_t k = 0; k < x.meta.size(); ++k)
      if (x.meta[k].first != y.meta[k].first || x.meta[k].second != y.meta[k].second)
        return at + " meta[" + std::to_string(k) + "]";
  }
  return {};
}

std::string diff(const schema& a, const schema& b) {
  if (a.cqrs_id != b.cqrs_id) return "cqrs_id";
  if (a.schema_tag != b.schema_tag) return "schema_tag";
  if (a.incarnation != b.incarnation) return "incarnation";
  if (a.columns.size() != b.columns.size()) return "column count";
  for (std::size_t k = 0; k < a.columns.size(); ++k)
    if (a.columns[k].name != b.columns[k].name || a.columns[k].decl_type != b.columns[k].decl_type)
      return "column " + std::to_string(k);
  if (a.pk != b.pk) return "pk";
  return {};
}

std::string diff(const control_request& a, const control_request& b) {
  if (a.op != b.op) return "op";
  if (a.replica != b.replica) return "replica";
  if (a.from_seq != b.from_seq) return "from_seq";
  if (a.to_seq != b.to_seq) return "to_seq";
  return {};
}

std::string to_hex(const bytes& b) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (auto c : b) {
    s += digits[c >> 4];
    s += digits[c & 15];
  }
  return s;
}

bytes from_hex(const std::string& hex) {
  bytes out;
  int hi = -1;
  for (char ch : hex) {
    if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r') continue;
    int v;
    if (ch >= '0' && ch <= '9') v = ch - '0';
    else if (ch >= 'a' && ch <= 'f') v = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F') v = ch - 'A' + 10;
    else throw std::invalid_argument("bad hex digit");
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<std::uint8_t>(hi << 4 | v));
      hi = -1;
    }
  }
  if (hi >= 0) throw std::invalid_argument("odd number of hex digits");
  return out;
}

namespace {

// An independent walker (not the library's reader) so the .diag twin checks the bytes
// from a second implementation.
struct diag_walker {
  const bytes& b;
  std::size_t pos = 0;

  std::uint8_t byte() {
    if (pos >= b.size()) throw std::runtime_error("truncated");
    return b[pos++];
  }
  std::uint64_t be(int n) {
    std::uint64_t v = 0;
    for (int k = 0; k < n; ++k) v = v << 8 | byte();
    return v;
  }
  static std::string real(double d) {
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
    char buf[40];
    for (int prec = 1; prec <= 17; ++prec) {
      std::snprintf(buf, sizeof buf, "%.*g", prec, d);
      if (std::strtod(buf, nullptr) == d) break;
    }
    std::string s = buf;
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
  }
  std::string item() {
    const std::uint8_t ib = byte();
    const int major = ib >> 5;
    const int ai = ib & 31;
    if (major == 7) {
      switch (ib) {
        case 0xf4: return "false";
        case 0xf5: return "true";
        case 0xf6: return "null";
        case 0xf7: return "undefined";
        case 0xf9: case 0xfa: case 0xfb: {
          const int n = ib == 0xf9 ? 2 : ib == 0xfa ? 4 : 8;
          const std::uint64_t bits = be(n);
          const char* suffix = n == 2 ? "_1" : n == 4 ? "_2" : "_3";
          double d;
          if (n == 8) {
            std::memcpy(&d, &bits, 8);
          } else if (n == 4) {
            const auto u = static_cast<std::uint32_t>(bits);
            float f;
            std::memcpy(&f, &u, 4);
            d = f;
          } else {
            const int e = (bits >> 10) & 31;
            const int m = bits & 1023;
            d = e == 0 ? std::ldexp(m, -24)
                       : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(m + 1024, e - 25);
            if (bits & 0x8000) d = -d;
          }
          std::string s = real(d);
          // NaNs with a payload cannot be told apart in plain notation: show the bits.
          if (std::isnan(d)) {
            char h[24];
            std::snprintf(h, sizeof h, "%0*" PRIx64, n * 2, bits);
            return "h'" + std::string(h) + "'" + suffix + " /NaN bits/";
          }
          return s + suffix;
        }
        default: throw std::runtime_error("unsupported simple value");
      }
    }
    if (ai > 27) throw std::runtime_error("indefinite or reserved");
    const std::uint64_t arg = ai < 24 ? static_cast<std::uint64_t>(ai) : be(1 << (ai - 24));
    switch (major) {
      case 0: return std::to_string(arg);
      case 1: {
        if (arg == ~std::uint64_t{0}) return "-18446744073709551616";
        return "-" + std::to_string(arg + 1);
      }
      case 2: {
        std::string s = "h'";
        bytes chunk;
        for (std::uint64_t k = 0; k < arg; ++k) chunk.push_back(byte());
        return s + to_hex(chunk) + "'";
      }
      case 3: {
        std::string s = "\"";
        for (std::uint64_t k = 0; k < arg; ++k) {
          const std::uint8_t c = byte();
          if (c == '"' || c == '\\') {
            s += '\\';
            s += static_cast<char>(c);
          } else if (c < 0x20) {
            char u[8];
            std::snprintf(u, sizeof u, "\\u%04x", c);
            s += u;
          } else {
            s += static_cast<char>(c);
          }
        }
        return s + "\"";
      }
      case 4: {
        std::string s = "[";
        for (std::uint64_t k = 0; k < arg; ++k) s += (k ? ", " : "") + item();
        return s + "]";
      }
      case 5: {
        std::string s = "{";
        for (std::uint64_t k = 0; k < arg; ++k) {
          s += k ? ", " : "";
          s += item();
          s += ": ";
          s += item();
        }
        return s + "}";
      }
      default: throw std::runtime_error("tag");
    }
  }
};

}  // namespace

std::string to_diag(const bytes& b) {
  diag_walker w{b};
  std::string s = w.item();
  if (w.pos != b.size()) throw std::runtime_error("trailing bytes");
  return s;
}

bytes encode(const message& m) {
  std::size_t n = 0;
  if (encode_message(m, nullptr, 0, n)) throw std::runtime_error("encode_message (measure)");
  bytes out(n);
  std::size_t w = 0;
  if (encode_message(m, out.data(), out.size(), w) || w != n)
    throw std::runtime_error("encode_message");
  return out;
}

bytes encode(const schema& s) {
  std::size_t n = 0;
  if (encode_schema(s, nullptr, 0, n)) throw std::runtime_error("encode_schema (measure)");
  bytes out(n);
  std::size_t w = 0;
  if (encode_schema(s, out.data(), out.size(), w) || w != n)
    throw std::runtime_error("encode_schema");
  return out;
}

bytes encode(const control_request& c) {
  std::size_t n = 0;
  if (encode_control(c, nullptr, 0, n)) throw std::runtime_error("encode_control (measure)");
  bytes out(n);
  std::size_t w = 0;
  if (encode_control(c, out.data(), out.size(), w) || w != n)
    throw std::runtime_error("encode_control");
  return out;
}

}  // namespace edgecqrs::test

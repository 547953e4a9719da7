// to_json: one readable JSON line per decoded message, for the demo and the CLI `decode`.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include "edgecqrs/codec.hpp"

namespace edgecqrs {
namespace {

void put_string(std::string& o, std::string_view s) {
  o += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += static_cast<char>(c);  // UTF-8 passes through: the decoder validated it
        }
    }
  }
  o += '"';
}

void put_base64(std::string& o, std::string_view s) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::size_t i = 0;
  for (; i + 3 <= s.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t{static_cast<unsigned char>(s[i])} << 16) |
                            (std::uint32_t{static_cast<unsigned char>(s[i + 1])} << 8) |
                            static_cast<unsigned char>(s[i + 2]);
    for (int k = 3; k >= 0; --k) o += tbl[(v >> (6 * k)) & 63];
  }
  const std::size_t rest = s.size() - i;
  if (rest) {
    std::uint32_t v = std::uint32_t{static_cast<unsigned char>(s[i])} << 16;
    if (rest == 2) v |= std::uint32_t{static_cast<unsigned char>(s[i + 1])} << 8;
    o += tbl[(v >> 18) & 63];
    o += tbl[(v >> 12) & 63];
    o += rest == 2 ? tbl[(v >> 6) & 63] : '=';
    o += '=';
  }
}

void put_int(std::string& o, std::int64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%" PRId64, v);
  o += b;
}

void put_uint(std::string& o, std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%" PRIu64, v);
  o += b;
}

// BLOBs become {"b64": "..."} so that they stay distinguishable from TEXT.
void put_value(std::string& o, const value& v) {
  switch (v.type()) {
    case value_type::null: o += "null"; return;
    case value_type::integer: put_int(o, v.as_integer()); return;
    case value_type::real: {
      const double d = v.as_real();
      if (std::isnan(d)) {
        o += "\"NaN\"";
      } else if (std::isinf(d)) {
        o += d < 0 ? "\"-Infinity\"" : "\"Infinity\"";
      } else {
        // The shortest text that reads back to the same double keeps the output readable
        // (21.5, not 21.500000000000000); plain decimals in the everyday range, else %g.
        char b[40];
        bool done = false;
        if (std::fabs(d) >= 1e-4 && std::fabs(d) < 1e15) {
          for (int prec = 1; prec <= 17 && !done; ++prec) {
            std::snprintf(b, sizeof b, "%.*f", prec, d);
            done = std::strtod(b, nullptr) == d;
          }
        }
        for (int prec = 1; prec <= 17 && !done; ++prec) {
          std::snprintf(b, sizeof b, "%.*g", prec, d);
          done = std::strtod(b, nullptr) == d;
        }
        std::string_view sv(b);
        o += sv;
        // Keep REAL visibly a real number: 21 would read back as INTEGER.
        if (sv.find_first_of(".eEn") == std::string_view::npos) o += ".0";
      }
      return;
    }
    case value_type::text: put_string(o, v.bytes()); return;
    case value_type::blob:
      o += "{\"b64\":\"";
      put_base64(o, v.bytes());
      o += "\"}";
      return;
  }
}

}  // namespace

namespace {

std::string json_of(const message& m, const schema* s) {
  if (s && s->schema_tag != m.schema_tag) s = nullptr;  // another stream's names would mislead
  // A hand-built schema may carry pk indices past its columns: then deletes stay positional.
  bool pk_valid = s != nullptr;
  if (s)
    for (auto i : s->pk) pk_valid = pk_valid && i < s->columns.size();
  std::string o;
  o.reserve(64 + 48 * m.events.size());
  o += "{\"schema_tag\":";
  put_uint(o, m.schema_tag);
  if (s) {
    o += ",\"cqrs_id\":";
    put_string(o, s->cqrs_id);
  }
  o += ",\"seq\":";
  put_uint(o, m.first_seq);
  if (!m.target.empty()) {
    o += ",\"target\":";
    put_string(o, m.target);
  }
  if (m.expires_ms) {
    o += ",\"expires_ms\":";
    put_int(o, m.expires_ms);
  }
  if (m.has_resync) {
    o += ",\"resync\":{\"session\":";
    put_uint(o, m.resync.session);
    o += ",\"upto_seq\":";
    put_uint(o, m.resync.upto_seq);
    o += ",\"part\":";
    put_uint(o, m.resync.part);
    o += m.resync.last ? ",\"last\":true}" : ",\"last\":false}";
  }
  if (!m.reply_to.empty()) {
    o += ",\"reply_to\":";
    put_string(o, m.reply_to);
  }
  o += ",\"events\":[";
  for (std::size_t i = 0; i < m.events.size(); ++i) {
    const event& e = m.events[i];
    if (i) o += ',';
    o += "{\"kind\":\"";
    o += to_string(e.kind);
    o += "\"";
    if (m.first_seq) {
      o += ",\"seq\":";
      put_uint(o, m.seq_of(i));
    }
    o += ",\"version\":";
    put_uint(o, e.row_version);
    o += ",\"updated_ms\":";
    put_int(o, e.updated_ms);
    // Names only when the shape matches the schema; otherwise positions.
    const bool is_delete = e.kind == event_kind::remove;
    const bool named = s && (is_delete ? pk_valid && e.values.size() == s->pk.size()
                                       : e.values.size() == s->columns.size());
    o += named ? ",\"values\":{" : ",\"values\":[";
    for (std::size_t k = 0; k < e.values.size(); ++k) {
      if (k) o += ',';
      if (named) {
        put_string(o, s->columns[is_delete ? s->pk[k] : k].name);
        o += ':';
      }
      put_value(o, e.values[k]);
    }
    o += named ? '}' : ']';
    if (!e.previous.empty()) {
      o += ",\"previous\":{";
      for (std::size_t k = 0; k < e.previous.size(); ++k) {
        if (k) o += ',';
        const std::uint32_t col = e.previous[k].column;
        if (s && col < s->columns.size()) {
          put_string(o, s->columns[col].name);
        } else {
          put_string(o, "#" + std::to_string(col));
        }
        o += ':';
        put_value(o, e.previous[k].old);
      }
      o += '}';
    }
    if (!e.correlation_id.empty()) {
      o += ",\"correlation_id\":";
      put_string(o, e.correlation_id);
    }
    if (!e.meta.empty()) {
      o += ",\"meta\":{";
      for (std::size_t k = 0; k < e.meta.size(); ++k) {
        if (k) o += ',';
        put_string(o, e.meta[k].first);
        o += ':';
        put_value(o, e.meta[k].second);
      }
      o += '}';
    }
    o += '}';
  }
  o += "]}";
  return o;
}

}  // namespace

// No exception crosses the public API: out of memory gives an empty string.
std::string to_json(const message& m, const schema* s) {
  try {
    return json_of(m, s);
  } catch (const std::bad_alloc&) {
    return {};
  }
}

}  // namespace edgecqrs

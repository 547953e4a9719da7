// Helpers for the replica tests: messages encoded with the real codec, a recording transport,
// and table dumps for comparisons.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/replica.hpp"
#include "edgecqrs/transport.hpp"

namespace edgecqrs::test {

using bytes = std::vector<std::uint8_t>;

// Encodes with `f` (encode_message, encode_schema, ...): empty bytes on failure.
template <class T, class F>
bytes encode_with(const T& x, F f) {
  std::size_t n = 0;
  if (f(x, nullptr, 0, n)) return {};
  bytes b(n);
  if (f(x, b.data(), b.size(), n)) return {};
  b.resize(n);
  return b;
}

inline bytes encode(const message& m) {
  return encode_with(m, [](const message& x, std::uint8_t* b, std::size_t c, std::size_t& n) {
    return encode_message(x, b, c, n);
  });
}

inline bytes encode(const schema& s) {
  return encode_with(s, [](const schema& x, std::uint8_t* b, std::size_t c, std::size_t& n) {
    return encode_schema(x, b, c, n);
  });
}

inline schema make_schema(const std::string& id, std::vector<column_def> cols,
                          std::vector<std::uint32_t> pk, std::uint8_t inc = 1) {
  schema s;
  s.cqrs_id = id;
  s.columns = std::move(cols);
  s.pk = std::move(pk);
  s.incarnation.fill(inc);
  s.schema_tag = compute_schema_tag(s);
  return s;
}

inline event ev(event_kind k, std::uint64_t version, std::vector<value> vals) {
  event e;
  e.kind = k;
  e.row_version = version;
  e.updated_ms = 1763800000000;
  e.values = std::move(vals);
  return e;
}
inline event save(std::uint64_t v, std::vector<value> vals) {
  return ev(event_kind::save, v, std::move(vals));
}
inline event del(std::uint64_t v, std::vector<value> key) {
  return ev(event_kind::remove, v, std::move(key));
}
inline event sync(std::uint64_t v, std::vector<value> vals) {
  return ev(event_kind::sync, v, std::move(vals));
}

inline message msg(const schema& s, std::uint64_t seq, std::vector<event> evs) {
  message m;
  m.schema_tag = s.schema_tag;
  m.first_seq = seq;
  m.events = std::move(evs);
  return m;
}

inline value I(std::int64_t v) { return value::integer(v); }
inline value T(const char* s) { return value::text(s); }

// Records publishes and subscriptions; delivers nothing by itself.
class recording_transport final : public transport {
 public:
  struct published {
    std::string topic;
    bytes data;
  };
  std::vector<published> sent;
  std::map<std::string, message_callback> subs;

  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options&, publish_callback done) override {
    sent.push_back({std::string(topic), bytes(data, data + size)});
    if (done) done({});
    return {};
  }
  std::error_code subscribe(std::string_view filter, message_callback cb) override {
    subs[std::string(filter)] = std::move(cb);
    return {};
  }
  std::error_code unsubscribe(std::string_view filter) override {
    subs.erase(std::string(filter));
    return {};
  }
  bool connected() const override { return true; }
  std::size_t max_in_flight() const override { return 32; }

  // Decoded control requests sent so far (and forgets them).
  std::vector<control_request> take_controls() {
    std::vector<control_request> out;
    for (const auto& p : sent) {
      control_request c;
      if (!decode_control(p.data.data(), p.data.size(), c)) out.push_back(c);
    }
    sent.clear();
    return out;
  }
};

// Every row of a table as text, ordered by the given columns: for equality checks.
inline std::vector<std::string> dump(sqlite3* db, const std::string& sql) {
  std::vector<std::string> rows;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    rows.push_back(std::string("ERROR: ") + sqlite3_errmsg(db));
    return rows;
  }
  while (sqlite3_step(st) == SQLITE_ROW) {
    std::string r;
    for (int c = 0; c < sqlite3_column_count(st); ++c) {
      if (c) r += '|';
      switch (sqlite3_column_type(st, c)) {
        case SQLITE_NULL:
          r += "NULL";
          break;
        case SQLITE_INTEGER:
          r += std::to_string(sqlite3_column_int64(st, c));
          break;
        case SQLITE_FLOAT:
          r += "f" + std::to_string(sqlite3_column_double(st, c));
          break;
        case SQLITE_TEXT:
          r += "'" + std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, c))) + "'";
          break;
        default:
          r += "x" + std::to_string(sqlite3_column_bytes(st, c));
          break;
      }
    }
    rows.push_back(r);
  }
  sqlite3_finalize(st);
  return rows;
}

inline std::string one(sqlite3* db, const std::string& sql) {
  auto r = dump(db, sql);
  return r.empty() ? std::string("<none>") : r[0];
}

}  // namespace edgecqrs::test

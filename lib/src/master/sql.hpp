// Small RAII helpers over the SQLite C API for the master (private).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "edgecqrs/value.hpp"

namespace edgecqrs::detail {

class stmt {
 public:
  stmt() = default;
  ~stmt() { sqlite3_finalize(s_); }
  stmt(const stmt&) = delete;
  stmt& operator=(const stmt&) = delete;
  stmt(stmt&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  stmt& operator=(stmt&& o) noexcept {
    if (this != &o) {
      sqlite3_finalize(s_);
      s_ = o.s_;
      o.s_ = nullptr;
    }
    return *this;
  }
  int prepare(sqlite3* db, std::string_view sql) {
    sqlite3_finalize(s_);
    s_ = nullptr;
    return sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &s_, nullptr);
  }
  sqlite3_stmt* get() const { return s_; }
  explicit operator bool() const { return s_ != nullptr; }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// Resets a statement at scope exit, so a failed step never leaves it holding a read lock.
struct reset_guard {
  sqlite3_stmt* s;
  ~reset_guard() {
    if (s) sqlite3_reset(s);
  }
};

inline int bind_view(sqlite3_stmt* s, int i, const value_view& v) {
  switch (v.type) {
    case value_type::integer: return sqlite3_bind_int64(s, i, v.i);
    case value_type::real: return sqlite3_bind_double(s, i, v.d);
    case value_type::text:
      return sqlite3_bind_text64(s, i, static_cast<const char*>(v.data ? v.data : ""), v.size,
                                 SQLITE_TRANSIENT, SQLITE_UTF8);
    case value_type::blob:
      return sqlite3_bind_blob64(s, i, v.data ? v.data : "", v.size, SQLITE_TRANSIENT);
    default: return sqlite3_bind_null(s, i);
  }
}

// A view of column `i` of the current row: valid until the statement steps or resets.
inline value_view column_view(sqlite3_stmt* s, int i) {
  switch (sqlite3_column_type(s, i)) {
    case SQLITE_INTEGER: return value_view::integer(sqlite3_column_int64(s, i));
    case SQLITE_FLOAT: return value_view::real(sqlite3_column_double(s, i));
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_column_text(s, i);
      int n = sqlite3_column_bytes(s, i);
      return value_view::text(std::string_view(reinterpret_cast<const char*>(p), n));
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_column_blob(s, i);
      int n = sqlite3_column_bytes(s, i);
      return value_view::blob(p, static_cast<std::size_t>(n));
    }
    default: return value_view::null();
  }
}

inline value_view sqlite_value_view(sqlite3_value* v) {
  if (!v) return value_view::null();
  switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER: return value_view::integer(sqlite3_value_int64(v));
    case SQLITE_FLOAT: return value_view::real(sqlite3_value_double(v));
    case SQLITE_TEXT: {
      const unsigned char* p = sqlite3_value_text(v);
      int n = sqlite3_value_bytes(v);
      return value_view::text(std::string_view(reinterpret_cast<const char*>(p), n));
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_value_blob(v);
      int n = sqlite3_value_bytes(v);
      return value_view::blob(p, static_cast<std::size_t>(n));
    }
    default: return value_view::null();
  }
}

// "name" quoted as an SQL identifier.
inline std::string quote_ident(std::string_view name) {
  std::string q = "\"";
  for (char c : name) {
    if (c == '"') q += '"';
    q += c;
  }
  q += '"';
  return q;
}

}  // namespace edgecqrs::detail

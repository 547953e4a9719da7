// Small RAII helpers over the SQLite C API, shared by the master and the replica (private).
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "edgecqrs/value.hpp"

namespace edgecqrs::detail {

// A prepared statement (SQLITE_PREPARE_PERSISTENT), finalized on destruction.
class statement {
 public:
  statement() = default;
  ~statement() { sqlite3_finalize(s_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  statement(statement&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  statement& operator=(statement&& o) noexcept {
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
  explicit operator bool() const { return s_ != nullptr; }
  sqlite3_stmt* get() const { return s_; }

  // Leaves the statement ready for new bindings.
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int step() { return sqlite3_step(s_); }

  int bind(int i, std::int64_t v) { return sqlite3_bind_int64(s_, i, v); }
  // Text and blobs are bound SQLITE_STATIC: the bytes must stay alive until the statement is
  // reset (no temporaries).
  int bind_text(int i, std::string_view v) {
    return sqlite3_bind_text64(s_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8);
  }
  int bind_blob(int i, const void* p, std::size_t n) {
    // A zero-length blob must stay a BLOB, not become NULL.
    if (n == 0) return sqlite3_bind_zeroblob(s_, i, 0);
    return sqlite3_bind_blob64(s_, i, p, n, SQLITE_STATIC);
  }
  int bind_null(int i) { return sqlite3_bind_null(s_, i); }
  int bind_value(int i, const value& v) {
    switch (v.type()) {
      case value_type::null: return bind_null(i);
      case value_type::integer: return bind(i, v.as_integer());
      case value_type::real: return sqlite3_bind_double(s_, i, v.as_real());
      case value_type::text: return bind_text(i, v.bytes());
      case value_type::blob: return bind_blob(i, v.bytes().data(), v.bytes().size());
    }
    return SQLITE_MISUSE;
  }

  std::int64_t col_int(int c) const { return sqlite3_column_int64(s_, c); }
  std::string_view col_text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, c)))
             : std::string_view();
  }
  std::string_view col_blob(int c) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s_, c));
    return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, c)))
             : std::string_view();
  }
  bool col_is_null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// Resets the statement when the scope ends, so no statement stays active (it would hold locks).
class statement_reset {
 public:
  explicit statement_reset(statement& s) : s_(s) {}
  ~statement_reset() { s_.reset(); }
  statement_reset(const statement_reset&) = delete;
  statement_reset& operator=(const statement_reset&) = delete;

 private:
  statement& s_;
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

// "name" quoted as an SQL identifier. Identifiers only ever come from registration (validated
// against the real table), never from the wire; quoting still guards against names that need it.
inline std::string quote_ident(std::string_view name) {
  std::string q;
  q.reserve(name.size() + 2);
  q.push_back('"');
  for (char c : name) {
    if (c == '"') q.push_back('"');
    q.push_back(c);
  }
  q.push_back('"');
  return q;
}

inline int exec(sqlite3* db, const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr); }

}  // namespace edgecqrs::detail

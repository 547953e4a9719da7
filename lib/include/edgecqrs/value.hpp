// A SQLite value (NULL, INTEGER, REAL, TEXT, BLOB) as carried by events.
// `value` owns its bytes; `value_view` borrows them (used on the encode hot path).
// Thread-safety: plain values, no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

namespace edgecqrs {

enum class value_type : std::uint8_t { null = 0, integer = 1, real = 2, text = 3, blob = 4 };

// Non-owning view of a value; the bytes of text/blob must outlive the view.
struct value_view {
  value_type type = value_type::null;
  std::int64_t i = 0;
  double d = 0.0;
  const void* data = nullptr;
  std::size_t size = 0;

  static value_view null() { return {}; }
  static value_view integer(std::int64_t v) { value_view x; x.type = value_type::integer; x.i = v; return x; }
  static value_view real(double v) { value_view x; x.type = value_type::real; x.d = v; return x; }
  static value_view text(std::string_view s) {
    value_view x; x.type = value_type::text; x.data = s.data(); x.size = s.size(); return x;
  }
  static value_view blob(const void* p, std::size_t n) {
    value_view x; x.type = value_type::blob; x.data = p; x.size = n; return x;
  }
  std::string_view bytes() const { return {static_cast<const char*>(data), size}; }
};

// Owning value. Equality is exact: REALs compare by bit pattern (so -0.0 != 0.0 and a NaN equals
// the same NaN), TEXT never equals BLOB.
class value {
 public:
  value() = default;
  static value null() { return {}; }
  static value integer(std::int64_t v) { value x; x.type_ = value_type::integer; x.i_ = v; return x; }
  static value real(double v) { value x; x.type_ = value_type::real; x.d_ = v; return x; }
  static value text(std::string_view s) { value x; x.type_ = value_type::text; x.s_ = std::string(s); return x; }
  static value blob(std::string_view bytes) { value x; x.type_ = value_type::blob; x.s_ = std::string(bytes); return x; }
  static value blob(const void* p, std::size_t n) { return blob(std::string_view(static_cast<const char*>(p), n)); }
  static value from(const value_view& v) {
    switch (v.type) {
      case value_type::integer: return integer(v.i);
      case value_type::real: return real(v.d);
      case value_type::text: return text(v.bytes());
      case value_type::blob: return blob(v.bytes());
      default: return null();
    }
  }

  value_type type() const { return type_; }
  bool is_null() const { return type_ == value_type::null; }
  std::int64_t as_integer() const { return i_; }
  double as_real() const { return d_; }
  // Bytes of a TEXT or BLOB (empty for other types).
  std::string_view bytes() const { return s_; }
  value_view view() const {
    value_view v; v.type = type_; v.i = i_; v.d = d_; v.data = s_.data(); v.size = s_.size(); return v;
  }

  friend bool operator==(const value& a, const value& b) {
    if (a.type_ != b.type_) return false;
    switch (a.type_) {
      case value_type::null: return true;
      case value_type::integer: return a.i_ == b.i_;
      case value_type::real: return std::memcmp(&a.d_, &b.d_, sizeof(double)) == 0;
      default: return a.s_ == b.s_;
    }
  }
  friend bool operator!=(const value& a, const value& b) { return !(a == b); }

 private:
  value_type type_ = value_type::null;
  std::int64_t i_ = 0;
  double d_ = 0.0;
  std::string s_;
};

}  // namespace edgecqrs

// Decoders for docs/wire-format.md: event, schema and control messages. Recursive descent over
// cbor_reader; each parser fills a local object and hands it over only on success.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

#include "codec/cbor_reader.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"

namespace edgecqrs {
namespace {

using detail::cbor_reader;
using detail::cbor_token;
using tk = cbor_token::kind;

constexpr std::uint64_t int64_max =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
constexpr std::uint64_t head_kind_mask = 3;
constexpr std::uint64_t head_has_dt = 4;
constexpr std::uint64_t head_has_extras = 8;

class parser {
 public:
  parser(const std::uint8_t* data, std::size_t size, const decode_limits& limits) noexcept
      : r_(data, size, limits), remaining_hint_(size) {}

  bool at_end() const { return r_.at_end(); }
  std::error_code parse_message(message& m);
  std::error_code parse_schema(schema& s);
  std::error_code parse_control(control_request& c);

 private:
  // Reads a container head at nesting `depth` (the top-level item is depth 1).
  std::error_code container(tk want, std::size_t depth, std::uint64_t& n, errc wrong) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    if (t.k != want) return wrong;
    if (depth > r_.limits().max_depth) return errc::too_deep;
    n = t.u;
    return {};
  }
  std::error_code array(std::size_t depth, std::uint64_t& n, errc wrong = errc::wrong_type) {
    return container(tk::array, depth, n, wrong);
  }
  std::error_code map(std::size_t depth, std::uint64_t& n, errc wrong = errc::wrong_type) {
    return container(tk::map, depth, n, wrong);
  }
  std::error_code uint(std::uint64_t& v, std::uint64_t max = ~std::uint64_t{0}) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    if (t.k != tk::uint) return errc::wrong_type;
    if (t.u > max) return errc::integer_out_of_range;
    v = t.u;
    return {};
  }
  std::error_code sint(std::int64_t& v) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    return token_int(t, v, errc::wrong_type);
  }
  static std::error_code token_int(const cbor_token& t, std::int64_t& v, errc wrong) {
    if (t.k != tk::uint && t.k != tk::negint) return wrong;
    if (t.u > int64_max) return errc::integer_out_of_range;
    v = t.k == tk::uint ? static_cast<std::int64_t>(t.u) : -1 - static_cast<std::int64_t>(t.u);
    return {};
  }
  std::error_code text(std::string& s) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    if (t.k != tk::text) return errc::wrong_type;
    s.assign(reinterpret_cast<const char*>(t.p), t.n);
    return {};
  }
  std::error_code boolean(bool& b) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    if (t.k != tk::boolean) return errc::wrong_type;
    b = t.b;
    return {};
  }
  std::error_code parse_value(value& v) {
    cbor_token t;
    if (auto ec = r_.next(t)) return ec;
    switch (t.k) {
      case tk::null: v = value::null(); return {};
      case tk::uint:
      case tk::negint: {
        std::int64_t i = 0;
        if (auto ec = token_int(t, i, errc::bad_value)) return ec;
        v = value::integer(i);
        return {};
      }
      case tk::real: v = value::real(t.d); return {};
      case tk::text:
        v = value::text(std::string_view(reinterpret_cast<const char*>(t.p), t.n));
        return {};
      case tk::bytes: v = value::blob(t.p, t.n); return {};
      default: return errc::bad_value;
    }
  }
  // Never reserve what the input cannot hold: every element is at least one byte.
  std::size_t reserve_bound(std::uint64_t n) const {
    const std::size_t left = remaining_hint_ - r_.position();
    return n < left ? static_cast<std::size_t>(n) : left;
  }

  std::error_code group(std::vector<event>& out);
  std::error_code parse_event(std::int64_t t0, event& e);
  std::error_code extras(event& e);
  std::error_code ext(message& m);
  std::error_code fmt(errc bad_shape, std::uint64_t& n, std::uint64_t min_len,
                      std::uint64_t max_len);

  cbor_reader r_;
  std::size_t remaining_hint_;
  std::uint64_t events_ = 0;
};

// Reads the top-level array and its fmt. fmt is checked before the length so that a future
// format with another shape reports unsupported_format, not a shape error.
std::error_code parser::fmt(errc bad_shape, std::uint64_t& n, std::uint64_t min_len,
                            std::uint64_t max_len) {
  if (auto ec = array(1, n, bad_shape)) return ec;
  if (n == 0) return bad_shape;
  cbor_token t;
  if (auto ec = r_.next(t)) return ec;
  if (t.k != tk::uint) return errc::wrong_type;
  if (t.u != wire_format_version) return errc::unsupported_format;
  if (n < min_len || n > max_len) return bad_shape;
  return {};
}

std::error_code parser::parse_message(message& m) {
  std::uint64_t n = 0;
  if (auto ec = fmt(errc::bad_message, n, 4, 5)) return ec;
  std::uint64_t tag = 0;
  if (auto ec = uint(tag, std::numeric_limits<std::uint32_t>::max())) return ec;
  m.schema_tag = static_cast<std::uint32_t>(tag);
  if (auto ec = uint(m.first_seq)) return ec;
  std::uint64_t n_groups = 0;
  if (auto ec = array(2, n_groups)) return ec;
  for (std::uint64_t g = 0; g < n_groups; ++g)
    if (auto ec = group(m.events)) return ec;
  if (n == 5)
    if (auto ec = ext(m)) return ec;
  return {};
}

std::error_code parser::group(std::vector<event>& out) {
  std::uint64_t n = 0;
  if (auto ec = array(3, n)) return ec;
  if (n < 2) return errc::bad_message;  // a group has t0 and at least one event
  const std::uint64_t n_events = n - 1;
  if (n_events > r_.limits().max_events || events_ + n_events > r_.limits().max_events)
    return errc::too_many_events;
  events_ += n_events;
  std::uint64_t t0 = 0;
  if (auto ec = uint(t0, int64_max)) return ec;
  out.reserve(out.size() + reserve_bound(n_events));
  for (std::uint64_t k = 0; k < n_events; ++k) {
    event e;
    if (auto ec = parse_event(static_cast<std::int64_t>(t0), e)) return ec;
    out.push_back(std::move(e));
  }
  return {};
}

std::error_code parser::parse_event(std::int64_t t0, event& e) {
  std::uint64_t n = 0;
  if (auto ec = array(4, n)) return ec;
  if (n < 2) return errc::bad_event;
  std::uint64_t head = 0;
  if (auto ec = uint(head)) return ec;
  if (head & ~std::uint64_t{15}) return errc::bad_event;
  if ((head & head_kind_mask) == 3) return errc::bad_event;
  e.kind = static_cast<event_kind>(head & head_kind_mask);
  const bool has_dt = head & head_has_dt;
  const bool has_extras = head & head_has_extras;
  const std::uint64_t fixed = 2 + (has_dt ? 1 : 0) + (has_extras ? 1 : 0);
  if (n < fixed) return errc::bad_event;
  const std::uint64_t n_values = n - fixed;
  if (n_values > r_.limits().max_values) return errc::too_many_values;
  if (auto ec = uint(e.row_version)) return ec;
  std::int64_t dt = 0;
  if (has_dt)
    if (auto ec = sint(dt)) return ec;
  // t0 >= 0: only a positive dt can overflow, and a negative sum is not a time.
  if (dt > 0 && t0 > std::numeric_limits<std::int64_t>::max() - dt)
    return errc::integer_out_of_range;
  if (t0 + dt < 0) return errc::integer_out_of_range;
  e.updated_ms = t0 + dt;
  e.values.reserve(reserve_bound(n_values));
  for (std::uint64_t k = 0; k < n_values; ++k) {
    value v;
    if (auto ec = parse_value(v)) return ec;
    e.values.push_back(std::move(v));
  }
  if (has_extras) return extras(e);
  return {};
}

std::error_code parser::extras(event& e) {
  std::uint64_t n = 0;
  if (auto ec = map(5, n, errc::bad_event)) return ec;
  unsigned seen = 0;
  for (std::uint64_t k = 0; k < n; ++k) {
    std::uint64_t key = 0;
    if (auto ec = uint(key)) return ec;
    if (key < 1 || key > 3) return errc::unknown_key;
    if (seen & (1u << key)) return errc::duplicate_key;
    seen |= 1u << key;
    if (key == 1) {
      std::uint64_t m = 0;
      if (auto ec = map(6, m)) return ec;
      e.previous.reserve(reserve_bound(m));
      for (std::uint64_t j = 0; j < m; ++j) {
        std::uint64_t col = 0;
        if (auto ec = uint(col, std::numeric_limits<std::uint32_t>::max())) return ec;
        prev_value p;
        p.column = static_cast<std::uint32_t>(col);
        if (auto ec = parse_value(p.old)) return ec;
        e.previous.push_back(std::move(p));
      }
      std::vector<std::uint32_t> cols;
      cols.reserve(e.previous.size());
      for (const auto& p : e.previous) cols.push_back(p.column);
      std::sort(cols.begin(), cols.end());
      if (std::adjacent_find(cols.begin(), cols.end()) != cols.end()) return errc::duplicate_key;
    } else if (key == 2) {
      if (auto ec = text(e.correlation_id)) return ec;
    } else {
      std::uint64_t m = 0;
      if (auto ec = map(6, m)) return ec;
      e.meta.reserve(reserve_bound(m));
      for (std::uint64_t j = 0; j < m; ++j) {
        std::pair<std::string, value> kv;
        if (auto ec = text(kv.first)) return ec;
        if (auto ec = parse_value(kv.second)) return ec;
        e.meta.push_back(std::move(kv));
      }
      std::vector<std::string_view> keys;
      keys.reserve(e.meta.size());
      for (const auto& kv : e.meta) keys.emplace_back(kv.first);
      std::sort(keys.begin(), keys.end());
      if (std::adjacent_find(keys.begin(), keys.end()) != keys.end()) return errc::duplicate_key;
    }
  }
  return {};
}

std::error_code parser::ext(message& m) {
  std::uint64_t n = 0;
  if (auto ec = map(2, n, errc::bad_message)) return ec;
  unsigned seen = 0;
  for (std::uint64_t k = 0; k < n; ++k) {
    std::uint64_t key = 0;
    if (auto ec = uint(key)) return ec;
    if (key < 1 || key > 4) return errc::unknown_key;
    if (seen & (1u << key)) return errc::duplicate_key;
    seen |= 1u << key;
    switch (key) {
      case 1:
        if (auto ec = text(m.target)) return ec;
        break;
      case 2: {
        std::uint64_t exp = 0;
        if (auto ec = uint(exp, int64_max)) return ec;
        m.expires_ms = static_cast<std::int64_t>(exp);
        break;
      }
      case 3: {
        std::uint64_t len = 0;
        if (auto ec = array(3, len)) return ec;
        if (len != 4) return errc::bad_message;
        if (auto ec = uint(m.resync.session)) return ec;
        if (auto ec = uint(m.resync.upto_seq)) return ec;
        if (auto ec = uint(m.resync.part)) return ec;
        if (auto ec = boolean(m.resync.last)) return ec;
        m.has_resync = true;
        break;
      }
      default:
        if (auto ec = text(m.reply_to)) return ec;
        break;
    }
  }
  return {};
}

std::error_code parser::parse_schema(schema& s) {
  std::uint64_t n = 0;
  if (auto ec = fmt(errc::bad_schema, n, 7, 7)) return ec;
  std::string word;
  if (auto ec = text(word)) return ec;
  if (word != "schema") return errc::bad_schema;
  if (auto ec = text(s.cqrs_id)) return ec;
  std::uint64_t tag = 0;
  if (auto ec = uint(tag, std::numeric_limits<std::uint32_t>::max())) return ec;
  s.schema_tag = static_cast<std::uint32_t>(tag);
  cbor_token t;
  if (auto ec = r_.next(t)) return ec;
  if (t.k != tk::bytes) return errc::wrong_type;
  if (t.n != s.incarnation.size()) return errc::bad_schema;
  std::copy(t.p, t.p + t.n, s.incarnation.begin());
  std::uint64_t n_cols = 0;
  if (auto ec = array(2, n_cols)) return ec;
  if (n_cols == 0) return errc::bad_schema;
  s.columns.reserve(reserve_bound(n_cols));
  for (std::uint64_t k = 0; k < n_cols; ++k) {
    std::uint64_t len = 0;
    if (auto ec = array(3, len)) return ec;
    if (len != 2) return errc::bad_schema;
    column_def c;
    if (auto ec = text(c.name)) return ec;
    if (auto ec = text(c.decl_type)) return ec;
    s.columns.push_back(std::move(c));
  }
  std::uint64_t n_pk = 0;
  if (auto ec = array(2, n_pk)) return ec;
  if (n_pk == 0) return errc::bad_schema;
  s.pk.reserve(reserve_bound(n_pk));
  for (std::uint64_t k = 0; k < n_pk; ++k) {
    std::uint64_t i = 0;
    if (auto ec = uint(i, std::numeric_limits<std::uint32_t>::max())) return ec;
    if (i >= s.columns.size()) return errc::bad_schema;
    s.pk.push_back(static_cast<std::uint32_t>(i));
  }
  return {};
}

std::error_code parser::parse_control(control_request& c) {
  std::uint64_t n = 0;
  if (auto ec = fmt(errc::bad_control, n, 5, 5)) return ec;
  std::uint64_t op = 0;
  if (auto ec = uint(op)) return ec;
  if (op > 2) return errc::bad_control;
  c.op = static_cast<control_op>(op);
  if (auto ec = text(c.replica)) return ec;
  if (auto ec = uint(c.from_seq)) return ec;
  if (auto ec = uint(c.to_seq)) return ec;
  return {};
}

// Shared frame: input checks, parse into a fresh object, trailing bytes, hand over.
template <class T, class Parse>
std::error_code decode_top(const std::uint8_t* data, std::size_t size, T& out,
                           const decode_limits& limits, Parse parse) noexcept {
  out = T{};
  if (size == 0 || data == nullptr) return errc::empty_input;
  if (size > limits.max_message_bytes) return errc::too_large;
  try {
    T tmp;
    parser p(data, size, limits);
    if (auto ec = parse(p, tmp)) return ec;
    if (!p.at_end()) return errc::trailing_bytes;
    out = std::move(tmp);
    return {};
  } catch (const std::bad_alloc&) {
    // Limits bound every allocation; this only fires when the device is already out of memory.
    return std::make_error_code(std::errc::not_enough_memory);
  }
}

}  // namespace

std::error_code decode_message(const std::uint8_t* data, std::size_t size, message& out,
                               const decode_limits& limits) noexcept {
  return decode_top(data, size, out, limits,
                    [](parser& p, message& m) { return p.parse_message(m); });
}

std::error_code decode_schema(const std::uint8_t* data, std::size_t size, schema& out,
                              const decode_limits& limits) noexcept {
  return decode_top(data, size, out, limits, [](parser& p, schema& s) { return p.parse_schema(s); });
}

std::error_code decode_control(const std::uint8_t* data, std::size_t size, control_request& out,
                               const decode_limits& limits) noexcept {
  return decode_top(data, size, out, limits,
                    [](parser& p, control_request& c) { return p.parse_control(c); });
}

}  // namespace edgecqrs

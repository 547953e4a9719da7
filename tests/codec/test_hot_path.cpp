// The master's hot-path pieces (encode_message_head, encode_group_head, encode_event,
// encode_message_ext, encode_value) produce exactly what encode_message produces, measure
// what they write, and fail cleanly on short buffers. The decoder accepts non-shortest heads.
#include <doctest/doctest.h>

#include <functional>
#include <random>

#include "codec_test_util.hpp"
#include "edgecqrs/errors.hpp"
#include "golden_cases.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

using piece_fn = std::function<std::error_code(std::uint8_t*, std::size_t, std::size_t&)>;

// Measures, writes, checks both sizes agree and that every shorter buffer fails without
// writing past its cap.
void append_checked(bytes& out, const piece_fn& fn) {
  std::size_t need = 0;
  REQUIRE(!fn(nullptr, 0, need));
  bytes buf(need + 4, 0xcc);
  std::size_t w = 0;
  REQUIRE(!fn(buf.data(), need, w));
  REQUIRE(w == need);
  for (std::size_t k = need; k < buf.size(); ++k) REQUIRE(buf[k] == 0xcc);
  for (std::size_t cap = 0; cap < need; cap += 1 + cap / 4) {
    bytes small(need, 0x33);
    std::size_t w2 = 0;
    REQUIRE(fn(small.data(), cap, w2) == errc::buffer_too_small);
    REQUIRE(w2 == need);
    for (std::size_t k = cap; k < need; ++k) REQUIRE(small[k] == 0x33);
  }
  out.insert(out.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(need));
}

// What the master does: one group per message with views over its own storage.
bytes encode_with_pieces(const message& m) {
  bytes out;
  const bool has_ext = message_has_ext(m);
  append_checked(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
    return encode_message_head(m.schema_tag, m.first_seq, m.events.empty() ? 0 : 1, has_ext, b,
                               cap, w);
  });
  if (!m.events.empty()) {
    const std::int64_t t0 = m.events.front().updated_ms;
    append_checked(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
      return encode_group_head(t0, m.events.size(), b, cap, w);
    });
    for (const auto& e : m.events) {
      std::vector<value_view> vals, prev_vals;
      std::vector<std::uint32_t> prev_cols;
      std::vector<std::pair<std::string_view, value_view>> meta;
      for (const auto& v : e.values) vals.push_back(v.view());
      for (const auto& p : e.previous) {
        prev_cols.push_back(p.column);
        prev_vals.push_back(p.old.view());
      }
      for (const auto& kv : e.meta) meta.emplace_back(kv.first, kv.second.view());
      event_view ev;
      ev.kind = e.kind;
      ev.row_version = e.row_version;
      ev.dt_ms = e.updated_ms - t0;
      ev.values = vals.data();
      ev.n_values = vals.size();
      ev.prev_columns = prev_cols.data();
      ev.prev_values = prev_vals.data();
      ev.n_prev = prev_cols.size();
      ev.correlation_id = e.correlation_id;
      ev.meta = meta.data();
      ev.n_meta = meta.size();
      append_checked(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
        return encode_event(ev, b, cap, w);
      });
    }
  }
  if (has_ext) {
    append_checked(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
      return encode_message_ext(m, b, cap, w);
    });
  }
  return out;
}

}  // namespace

TEST_CASE("hot-path pieces concatenate to exactly encode_message's bytes") {
  for (const auto& c : golden_cases()) {
    if (c.kind != golden_kind::message) continue;
    CAPTURE(c.name);
    CHECK(to_hex(encode_with_pieces(c.msg)) == to_hex(encode(c.msg)));
  }
}

TEST_CASE("encode_value writes each type in its shortest form") {
  auto hex = [](const value_view& v) {
    bytes out;
    append_checked(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
      return encode_value(v, b, cap, w);
    });
    return to_hex(out);
  };
  CHECK(hex(value_view::null()) == "f6");
  CHECK(hex(value_view::integer(0)) == "00");
  CHECK(hex(value_view::integer(23)) == "17");
  CHECK(hex(value_view::integer(24)) == "1818");
  CHECK(hex(value_view::integer(-1)) == "20");
  CHECK(hex(value_view::integer(-25)) == "3818");
  CHECK(hex(value_view::integer(INT64_MIN)) == "3b7fffffffffffffff");
  CHECK(hex(value_view::integer(INT64_MAX)) == "1b7fffffffffffffff");
  CHECK(hex(value_view::real(21.5)) == "f94d60");
  CHECK(hex(value_view::real(-0.0)) == "f98000");
  CHECK(hex(value_view::real(100000.0)) == "fa47c35000");
  CHECK(hex(value_view::real(1.1)) == "fb3ff199999999999a");
  CHECK(hex(value_view::text("")) == "60");
  CHECK(hex(value_view::text(std::string_view("a\0", 2))) == "626100");
  CHECK(hex(value_view::blob("", 0)) == "40");
  CHECK(hex(value_view::blob("\x01\x02", 2)) == "420102");
  const std::string long_text(300, 'x');
  CHECK(hex(value_view::text(long_text)).substr(0, 6) == "79012c");
  std::size_t n = 0;
  value_view bad;
  bad.type = static_cast<value_type>(9);
  CHECK(encode_value(bad, nullptr, 0, n) == errc::invalid_argument);
  CHECK(encode_value(value_view::text("\xc0\xaf"), nullptr, 0, n) == errc::invalid_argument);
}

TEST_CASE("the decoder accepts non-shortest heads (encoders write shortest, decoders accept)") {
  // save_reading with every head in a longer form than needed.
  const bytes longer = from_hex(
      "98041b00000000000000011b000000009e3779b91b00000000000186a0990001"
      "9a000000021b0000019aaaac26009b0000000000000006"
      "1800"                    // head 0 in one extra byte
      "190001"                  // row_version 1 in two
      "1b000000000001e240"      // 123456 as uint64
      "7809" "73656e736f722d3432"  // text with a 1-byte length
      "fb4035800000000000"      // 21.5 as float64
      "1b00000000692173c0");    // 1763800000 as uint64
  message m;
  const auto ec = decode_message(longer.data(), longer.size(), m);
  REQUIRE_MESSAGE(!ec, ec.message());
  CHECK(diff(m, save_reading_message()) == "");
  // Re-encoding gives the canonical 49 bytes.
  CHECK(encode(m).size() == 49);
}

TEST_CASE("random messages: hot-path pieces equal encode_message") {
  std::mt19937_64 rng(seed_or(99));
  for (int i = 0; i < 200; ++i) {
    message m;
    m.schema_tag = static_cast<std::uint32_t>(rng());
    m.first_seq = rng() >> (rng() % 64);
    const std::size_t n = rng() % 6;
    const std::int64_t base = static_cast<std::int64_t>(rng() >> 20);
    for (std::size_t k = 0; k < n; ++k) {
      event e;
      e.kind = static_cast<event_kind>(rng() % 3);
      e.row_version = rng() >> (rng() % 64);
      e.updated_ms = base + static_cast<std::int64_t>(rng() % 2000) - 1000;
      if (e.updated_ms < 0) e.updated_ms = 0;
      e.values = {value::integer(static_cast<std::int64_t>(rng())), value::text("t"),
                  value::real(static_cast<double>(rng() % 1000) / 8)};
      if (rng() % 3 == 0) e.previous = {{1, value::text("old")}};
      if (rng() % 3 == 0) e.correlation_id = "corr";
      if (rng() % 3 == 0) e.meta = {{"m", value::integer(1)}};
      m.events.push_back(e);
    }
    if (rng() % 2) m.expires_ms = static_cast<std::int64_t>(rng() >> 1);
    CAPTURE(i);
    CHECK(to_hex(encode_with_pieces(m)) == to_hex(encode(m)));
  }
}

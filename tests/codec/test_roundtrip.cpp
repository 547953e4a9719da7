// Property-style tests: thousands of random messages (fixed seed; EDGECQRS_SEED overrides)
// round-trip exactly; measuring equals writing; short buffers fail cleanly; every prefix of a
// valid encoding is rejected as truncated. Plus exhaustive checks of the float narrowing.
#include <doctest/doctest.h>

#include <cstring>
#include <iostream>
#include <limits>
#include <random>

#include "codec/float_bits.hpp"
#include "codec_test_util.hpp"
#include "edgecqrs/errors.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

class gen {
 public:
  explicit gen(std::uint64_t seed) : rng_(seed) {}

  std::uint64_t u64() { return rng_(); }
  std::uint64_t below(std::uint64_t n) { return n ? rng_() % n : 0; }
  bool chance(int percent) { return below(100) < static_cast<std::uint64_t>(percent); }

  std::int64_t integer() {
    switch (below(6)) {
      case 0: return std::numeric_limits<std::int64_t>::min() + static_cast<std::int64_t>(below(3));
      case 1: return std::numeric_limits<std::int64_t>::max() - static_cast<std::int64_t>(below(3));
      case 2: return static_cast<std::int64_t>(below(50)) - 25;
      case 3: return static_cast<std::int64_t>(u64() >> below(64));
      default: return static_cast<std::int64_t>(u64());
    }
  }

  double real() {
    std::uint64_t bits;
    switch (below(10)) {
      case 0: bits = 0x8000000000000000; break;                       // -0.0
      case 1: bits = chance(50) ? 0x7ff0000000000000 : 0xfff0000000000000; break;  // +-Inf
      case 2: bits = 0x7ff0000000000000 | (u64() & 0x000fffffffffffff) | 1; break;  // NaN payloads
      case 3: bits = u64() & 0x800fffffffffffff; break;              // float64 subnormal
      case 4: {  // float16-exact values, including its subnormals
        const auto h = static_cast<std::uint32_t>(below(65536));
        bits = detail::widen_float_bits(h, 5, 10);
        break;
      }
      case 5: {  // float32-exact values
        const auto f = static_cast<std::uint32_t>(u64());
        bits = detail::widen_float_bits(f, 8, 23);
        break;
      }
      case 6: {
        const double d = static_cast<double>(static_cast<std::int64_t>(below(2000)) - 1000) / 4;
        std::memcpy(&bits, &d, 8);
        break;
      }
      default: bits = u64(); break;
    }
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
  }

  std::string utf8(std::size_t max_cps) {
    std::string s;
    const std::size_t n = below(max_cps + 1);
    for (std::size_t k = 0; k < n; ++k) {
      std::uint32_t cp;
      switch (below(5)) {
        case 0: cp = static_cast<std::uint32_t>(below(0x80)); break;  // includes NUL
        case 1: cp = 0x80 + static_cast<std::uint32_t>(below(0x780)); break;
        case 2:
          do cp = 0x800 + static_cast<std::uint32_t>(below(0xf800));
          while (cp >= 0xd800 && cp <= 0xdfff);
          break;
        case 3: cp = 0x10000 + static_cast<std::uint32_t>(below(0x100000)); break;
        default: cp = 'a' + static_cast<std::uint32_t>(below(26)); break;
      }
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xc0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        s += static_cast<char>(0xe0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        s += static_cast<char>(0x80 | (cp & 0x3f));
      } else {
        s += static_cast<char>(0xf0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        s += static_cast<char>(0x80 | (cp & 0x3f));
      }
    }
    return s;
  }

  value any_value() {
    switch (below(5)) {
      case 0: return value::null();
      case 1: return value::integer(integer());
      case 2: return value::real(real());
      case 3: return value::text(utf8(chance(3) ? 3000 : 12));
      default: {
        std::string b(below(chance(3) ? 5000 : 10), '\0');
        for (auto& c : b) c = static_cast<char>(u64());
        return value::blob(b);
      }
    }
  }

  message any_message() {
    message m;
    m.schema_tag = static_cast<std::uint32_t>(u64());
    m.first_seq = chance(20) ? 0 : u64() >> below(64);
    const std::size_t n_events = chance(10) ? 0 : 1 + below(chance(10) ? 60 : 4);
    const std::int64_t base = static_cast<std::int64_t>(below(1ull << 44));
    for (std::size_t i = 0; i < n_events; ++i) {
      event e;
      e.kind = static_cast<event_kind>(below(3));
      e.row_version = u64() >> below(64);
      e.updated_ms = chance(50) ? base : static_cast<std::int64_t>(u64() >> 1 >> below(63));
      const std::size_t n_values = below(chance(5) ? 200 : 8);
      for (std::size_t k = 0; k < n_values; ++k) e.values.push_back(any_value());
      if (chance(20)) {
        const std::size_t n = 1 + below(4);
        for (std::size_t k = 0; k < n; ++k)
          e.previous.push_back({static_cast<std::uint32_t>(k * 3 + below(3)), any_value()});
      }
      if (chance(15)) e.correlation_id = utf8(20);
      if (chance(15)) {
        const std::size_t n = 1 + below(4);
        for (std::size_t k = 0; k < n; ++k)
          e.meta.emplace_back("k" + std::to_string(k) + utf8(3), any_value());
      }
      m.events.push_back(std::move(e));
    }
    if (chance(20)) m.target = utf8(10);
    if (chance(20)) m.expires_ms = static_cast<std::int64_t>(u64() >> 1);
    if (chance(20)) {
      m.has_resync = true;
      m.resync = {u64(), u64() >> below(64), below(100), chance(50)};
    }
    if (chance(20)) m.reply_to = utf8(10);
    return m;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

TEST_CASE("random messages round-trip exactly; measure == write; re-encoding is stable") {
  const std::uint64_t seed = seed_or(20261123);
  INFO("EDGECQRS_SEED=" << seed);
  gen g(seed);
  std::size_t total_bytes = 0;
  std::size_t total_events = 0;
  const int n_messages = 3000;
  for (int i = 0; i < n_messages; ++i) {
    CAPTURE(i);
    const message m = g.any_message();
    std::size_t need = 0;
    REQUIRE(!encode_message(m, nullptr, 0, need));
    bytes buf(need + 8, 0xa5);
    std::size_t written = 0;
    REQUIRE(!encode_message(m, buf.data(), need, written));
    REQUIRE(written == need);
    for (std::size_t k = need; k < buf.size(); ++k) REQUIRE(buf[k] == 0xa5);  // never past cap
    buf.resize(need);
    total_bytes += need;
    total_events += m.events.size();

    message back;
    const auto ec = decode_message(buf.data(), buf.size(), back);
    REQUIRE_MESSAGE(!ec, ec.message());
    REQUIRE(diff(back, m) == "");
    REQUIRE(encode(back) == buf);

    // A short buffer: buffer_too_small, the size needed, nothing written past the cap.
    if (need > 1) {
      const std::size_t cap = g.below(need);
      bytes small(need, 0x5a);
      std::size_t w = 0;
      CHECK(encode_message(m, small.data(), cap, w) == errc::buffer_too_small);
      CHECK(w == need);
      for (std::size_t k = cap; k < need; ++k) REQUIRE(small[k] == 0x5a);
    }
  }
  std::cout << "round trip: " << n_messages << " messages, " << total_events << " events, "
            << total_bytes << " bytes\n";
}

TEST_CASE("every proper prefix of a valid encoding is rejected as truncated") {
  gen g(seed_or(7));
  std::size_t prefixes = 0;
  for (int i = 0; i < 300; ++i) {
    message m = g.any_message();
    if (m.events.size() > 4) m.events.resize(4);  // keep the quadratic loop fast
    const bytes b = encode(m);
    if (b.size() > 1024) continue;  // long strings add nothing here but time
    for (std::size_t len = 0; len < b.size(); ++len) {
      message out;
      const auto ec = decode_message(b.data(), len, out);
      REQUIRE(ec == (len == 0 ? errc::empty_input : errc::truncated));
      REQUIRE(out.events.empty());
      ++prefixes;
    }
  }
  // Schema and control messages too.
  schema s;
  s.cqrs_id = "reading";
  s.columns = {{"id", "INTEGER"}, {"v", "REAL"}};
  s.pk = {0};
  s.schema_tag = compute_schema_tag(s);
  const bytes sb = encode(s);
  for (std::size_t len = 1; len < sb.size(); ++len) {
    schema out;
    REQUIRE(decode_schema(sb.data(), len, out) == errc::truncated);
  }
  control_request c{control_op::schema, "gw-1", 1, 2};
  const bytes cb = encode(c);
  for (std::size_t len = 1; len < cb.size(); ++len) {
    control_request out;
    REQUIRE(decode_control(cb.data(), len, out) == errc::truncated);
  }
  CHECK(prefixes > 1000);
}

TEST_CASE("float narrowing is bit-exact: all float16 patterns and random float32 patterns") {
  // Every half pattern (NaN payloads, subnormals, +-0, +-Inf) survives half -> double -> half.
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const std::uint64_t d = detail::widen_float_bits(h, 5, 10);
    std::uint32_t back = 0;
    REQUIRE(detail::narrow_float_bits(d, 5, 10, back));
    REQUIRE(back == h);
    // And the value agrees with the FPU for everything but NaN (the FPU would quiet it).
    const std::uint32_t exp = (h >> 10) & 31;
    if (exp != 31 || (h & 1023) == 0) {
      const double x = detail::bits_double(d);
      const double ref = std::ldexp((exp == 0 ? 0 : 1024) + (h & 1023),
                                    (exp == 0 ? 1 : static_cast<int>(exp)) - 25);
      REQUIRE(std::fabs(x) == (exp == 31 ? std::numeric_limits<double>::infinity() : ref));
      REQUIRE(std::signbit(x) == ((h & 0x8000) != 0));
    }
  }
  gen g(seed_or(11));
  for (int i = 0; i < 200000; ++i) {
    const auto f = static_cast<std::uint32_t>(g.u64());
    const std::uint64_t d = detail::widen_float_bits(f, 8, 23);
    std::uint32_t back = 0;
    REQUIRE(detail::narrow_float_bits(d, 8, 23, back));
    REQUIRE(back == f);
    float ff;
    std::memcpy(&ff, &f, 4);
    if (!std::isnan(ff)) {
      const double ref = ff;  // the FPU is exact for non-NaN float -> double
      REQUIRE(detail::double_bits(ref) == d);
    }
    // A double that needs more mantissa than float32 must not narrow.
    if (!std::isnan(ff) && !std::isinf(ff) && ff != 0.0f) {
      std::uint32_t out = 0;
      REQUIRE(!detail::narrow_float_bits(d ^ 1, 8, 23, out));
    }
  }
}

TEST_CASE("encoder picks the shortest exact float width") {
  auto width = [](double d) {
    std::size_t n = 0;
    REQUIRE(!encode_value(value_view::real(d), nullptr, 0, n));
    return n;
  };
  CHECK(width(0.0) == 3);
  CHECK(width(-0.0) == 3);
  CHECK(width(21.5) == 3);
  CHECK(width(65504.0) == 3);
  CHECK(width(65505.0) == 5);
  CHECK(width(std::numeric_limits<double>::infinity()) == 3);
  CHECK(width(std::numeric_limits<double>::quiet_NaN()) == 3);
  CHECK(width(5.960464477539063e-08) == 3);   // 2^-24, smallest half subnormal
  CHECK(width(2.9802322387695312e-08) == 5);  // 2^-25: below half, a float32 normal
  CHECK(width(1.401298464324817e-45) == 5);   // 2^-149, smallest float32 subnormal
  CHECK(width(0.1) == 9);
  CHECK(width(std::numeric_limits<double>::denorm_min()) == 9);
  CHECK(width(std::numeric_limits<double>::max()) == 9);
}

TEST_CASE("encoder refuses what the wire cannot carry") {
  std::size_t n = 0;
  message m;
  m.events.resize(1);
  m.events[0].updated_ms = -1;
  CHECK(encode_message(m, nullptr, 0, n) == errc::invalid_argument);
  m.events[0].updated_ms = 5;
  m.events[0].values.push_back(value::text("\xff"));
  CHECK(encode_message(m, nullptr, 0, n) == errc::invalid_argument);
  m.events[0].values.clear();
  m.events[0].previous = {{1, value::null()}, {1, value::integer(2)}};
  CHECK(encode_message(m, nullptr, 0, n) == errc::invalid_argument);
  m.events[0].previous.clear();
  m.events[0].meta = {{"a", value::null()}, {"a", value::null()}};
  CHECK(encode_message(m, nullptr, 0, n) == errc::invalid_argument);
  m.events[0].meta.clear();
  m.expires_ms = -5;
  CHECK(encode_message(m, nullptr, 0, n) == errc::invalid_argument);
  m.expires_ms = 0;
  CHECK(!encode_message(m, nullptr, 0, n));

  CHECK(encode_group_head(0, 0, nullptr, 0, n) == errc::invalid_argument);
  CHECK(encode_group_head(-1, 1, nullptr, 0, n) == errc::invalid_argument);
  event_view ev;
  ev.n_values = 2;  // values == nullptr
  CHECK(encode_event(ev, nullptr, 0, n) == errc::invalid_argument);
  schema s;
  CHECK(encode_schema(s, nullptr, 0, n) == errc::invalid_argument);
  s.columns = {{"id", "INTEGER"}};
  s.pk = {1};
  CHECK(encode_schema(s, nullptr, 0, n) == errc::invalid_argument);
  control_request c;
  c.op = static_cast<control_op>(3);
  CHECK(encode_control(c, nullptr, 0, n) == errc::invalid_argument);
}

TEST_CASE("decode limits at their exact boundaries") {
  message m;
  m.schema_tag = 1;
  m.first_seq = 1;
  event e;
  e.updated_ms = 1;
  e.values = {value::text("abcd"), value::integer(1)};
  m.events = {e, e, e};
  const bytes b = encode(m);
  message out;
  decode_limits l;
  l.max_message_bytes = b.size();
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_message_bytes = b.size() - 1;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::too_large);
  l = {};
  l.max_string_bytes = 4;
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_string_bytes = 3;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::string_too_long);
  l = {};
  l.max_events = 3;
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_events = 2;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::too_many_events);
  l = {};
  l.max_values = 2;
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_values = 1;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::too_many_values);
  l = {};
  l.max_depth = 4;
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_depth = 3;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::too_deep);
  // Items: message, fmt, tag, seq, groups, group, t0 (7) + 3 events x (array, head, version,
  // 2 values) = 22.
  l = {};
  l.max_items = 22;
  CHECK(!decode_message(b.data(), b.size(), out, l));
  l.max_items = 21;
  CHECK(decode_message(b.data(), b.size(), out, l) == errc::too_many_items);
}

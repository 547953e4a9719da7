// The master's hot-path event encoder (lib/src/master/fast_encode.hpp) must write the very bytes
// of the codec's encode_event: compared here over edge values of every type.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "master/fast_encode.hpp"

using namespace edgecqrs;

namespace {

std::vector<std::uint8_t> reference(event_kind kind, std::uint64_t ver,
                                    const std::vector<value_view>& v, std::error_code& ec) {
  event_view ev;
  ev.kind = kind;
  ev.row_version = ver;
  ev.values = v.data();
  ev.n_values = v.size();
  std::vector<std::uint8_t> buf(1 << 20);
  std::size_t w = 0;
  ec = encode_event(ev, buf.data(), buf.size(), w);
  buf.resize(ec ? 0 : w);
  return buf;
}

void same_bytes(event_kind kind, std::uint64_t ver, const std::vector<value_view>& v) {
  std::error_code ref_ec;
  std::vector<std::uint8_t> ref = reference(kind, ver, v, ref_ec);
  std::vector<std::uint8_t> out = {0xAA, 0xBB};  // appended after existing bytes
  std::error_code ec = detail::append_plain_event(out, kind, ver, v.data(), v.size());
  CHECK(ec == ref_ec);
  if (ec) {
    CHECK(out == std::vector<std::uint8_t>{0xAA, 0xBB});  // unchanged on error
    return;
  }
  REQUIRE(out.size() == ref.size() + 2);
  CHECK(std::vector<std::uint8_t>(out.begin() + 2, out.end()) == ref);
}

}  // namespace

TEST_CASE("fast event encoder: same bytes as encode_event") {
  const std::string s23(23, 'a'), s24(24, 'b'), s255(255, 'c'), s256(256, 'd'), s70k(70000, 'e');
  const std::string utf8 = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  const std::int64_t imin = std::numeric_limits<std::int64_t>::min();
  const std::int64_t imax = std::numeric_limits<std::int64_t>::max();
  std::vector<value_view> scalars = {
      value_view::null(), value_view::integer(0), value_view::integer(23),
      value_view::integer(24), value_view::integer(255), value_view::integer(256),
      value_view::integer(65535), value_view::integer(65536), value_view::integer(4294967295LL),
      value_view::integer(4294967296LL), value_view::integer(imax), value_view::integer(-1),
      value_view::integer(-24), value_view::integer(-25), value_view::integer(-256),
      value_view::integer(-257), value_view::integer(imin), value_view::real(0.0),
      value_view::real(-0.0), value_view::real(21.5), value_view::real(1.0 / 3.0),
      value_view::real(65504.0), value_view::real(65536.0), value_view::real(1e300),
      value_view::real(5.960464477539063e-08), value_view::real(1.401298464324817e-45),
      value_view::real(std::numeric_limits<double>::infinity()),
      value_view::real(-std::numeric_limits<double>::infinity()),
      value_view::real(std::numeric_limits<double>::quiet_NaN()),
      value_view::real(std::numeric_limits<double>::denorm_min()),
      value_view::text(""), value_view::text(s23), value_view::text(s24),
      value_view::text(s255), value_view::text(s256), value_view::text(s70k),
      value_view::text(utf8), value_view::blob("", 0), value_view::blob("\x00\x01\xff", 3),
      value_view::blob(s256.data(), s256.size()),
  };
  for (event_kind kind : {event_kind::save, event_kind::remove, event_kind::sync}) {
    for (std::uint64_t ver : {0ull, 1ull, 23ull, 24ull, 70000ull, 1ull << 40, ~0ull}) {
      same_bytes(kind, ver, scalars);
      for (const value_view& v : scalars) same_bytes(kind, ver, {v});
    }
  }
  same_bytes(event_kind::save, 1, {});
  // 30 values: the array head takes two bytes.
  std::vector<value_view> many(30, value_view::integer(7));
  same_bytes(event_kind::save, 2, many);
}

TEST_CASE("fast event encoder: refuses what encode_event refuses, leaving the buffer as it was") {
  const std::string bad = "ab\xff";
  const std::string surrogate = "\xed\xa0\x80";
  const std::string overlong = "\xc0\xaf";
  same_bytes(event_kind::save, 1, {value_view::integer(1), value_view::text(bad)});
  same_bytes(event_kind::save, 1, {value_view::text(surrogate)});
  same_bytes(event_kind::save, 1, {value_view::text(overlong), value_view::integer(2)});
  value_view dangling;
  dangling.type = value_type::blob;
  dangling.size = 3;  // data == nullptr
  same_bytes(event_kind::save, 1, {dangling});
  value_view odd;
  odd.type = static_cast<value_type>(9);
  same_bytes(event_kind::save, 1, {odd});
}

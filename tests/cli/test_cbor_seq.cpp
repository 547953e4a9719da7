// cbor_item_size: item boundaries in CBOR sequences (dump files, decode input).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "edgecqrs/cbor_seq.hpp"
#include "edgecqrs/errors.hpp"

using namespace edgecqrs;

namespace {
std::vector<std::uint8_t> hex(const std::string& h) {
  std::vector<std::uint8_t> v;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) v.push_back(std::uint8_t(std::stoi(h.substr(i, 2), nullptr, 16)));
  return v;
}
std::error_code size_of(const std::string& h, std::size_t& n) {
  auto v = hex(h);
  return cbor_item_size(v.data(), v.size(), n);
}
}  // namespace

TEST_CASE("item sizes of well-formed items") {
  struct row { const char* hex; std::size_t size; };
  for (const row& r : {row{"00", 1}, row{"1818", 2}, row{"1b0000000000000001", 9}, row{"3b7fffffffffffffff", 9},
                       row{"40", 1}, row{"4401020304", 5}, row{"6161", 2}, row{"80", 1}, row{"83010203", 4},
                       row{"a1016161", 4}, row{"8301820203820405", 8}, row{"f6", 1}, row{"f94d60", 3},
                       row{"fb3ff0000000000000", 9}, row{"c10100", 2}, row{"0001", 1} /* sequence: first item */}) {
    std::size_t n = 0;
    CHECK_MESSAGE(!size_of(r.hex, n), r.hex);
    CHECK_MESSAGE(n == r.size, r.hex);
  }
}

TEST_CASE("item size errors") {
  struct row { const char* hex; errc e; };
  for (const row& r : {row{"", errc::empty_input}, row{"18", errc::truncated}, row{"4401", errc::truncated},
                       row{"83", errc::truncated}, row{"8301", errc::truncated}, row{"a101", errc::truncated},
                       row{"1c", errc::not_well_formed}, row{"ff", errc::not_well_formed},
                       row{"9f", errc::indefinite_length}, row{"5f", errc::indefinite_length},
                       row{"f801", errc::not_well_formed}, row{"c1", errc::truncated},
                       row{"9bffffffffffffffff", errc::truncated}}) {
    std::size_t n = 99;
    CHECK_MESSAGE(size_of(r.hex, n) == r.e, r.hex);
    CHECK(n == 0);
  }
}

TEST_CASE("nesting beyond max_depth is refused, not recursed") {
  std::vector<std::uint8_t> deep(10000, 0x81);
  deep.push_back(0x00);
  std::size_t n = 0;
  CHECK(cbor_item_size(deep.data(), deep.size(), n, 16) == errc::too_deep);
  std::vector<std::uint8_t> ok(16, 0x81);
  ok.push_back(0x00);
  CHECK(!cbor_item_size(ok.data(), ok.size(), n, 16));
  CHECK(n == 17);
}

TEST_CASE("item count limit") {
  std::vector<std::uint8_t> v{0x99, 0x03, 0xe8};  // array(1000)
  v.insert(v.end(), 1000, 0x00);
  std::size_t n = 0;
  CHECK(cbor_item_size(v.data(), v.size(), n, 16, 500) == errc::too_many_items);
  CHECK(!cbor_item_size(v.data(), v.size(), n, 16, 2000));
  CHECK(n == v.size());
}

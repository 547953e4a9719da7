// Golden vectors (tests/vectors/NAME.cbor with .hex and .diag twins), checked both ways:
// encoding the expected struct gives exactly the bytes, decoding the bytes gives exactly the
// struct. EDGECQRS_WRITE_VECTORS=1 rewrites the files from the encoder (review the diff!).
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "codec_test_util.hpp"
#include "edgecqrs/errors.hpp"
#include "golden_cases.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

bytes expected_bytes(const golden_case& c) {
  if (c.encode_fn) return c.encode_fn();
  switch (c.kind) {
    case golden_kind::message: return encode(c.msg);
    case golden_kind::schema: return encode(c.sch);
    case golden_kind::control: return encode(c.ctl);
  }
  return {};
}

void write_text(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f << s;
}

std::string vector_path(const std::string& name, const char* ext) {
  return source_path("vectors/" + name + ext);
}

bytes to_bytes(const std::string& s) { return bytes(s.begin(), s.end()); }

}  // namespace

TEST_CASE("golden vectors: encode gives the committed bytes, decode gives the struct") {
  const bool rewrite = std::getenv("EDGECQRS_WRITE_VECTORS") != nullptr;
  for (const auto& c : golden_cases()) {
    CAPTURE(c.name);
    const bytes enc = expected_bytes(c);
    if (rewrite) {
      write_text(vector_path(c.name, ".cbor"), std::string(enc.begin(), enc.end()));
      write_text(vector_path(c.name, ".hex"), to_hex(enc) + "\n");
      write_text(vector_path(c.name, ".diag"), to_diag(enc) + "\n");
    }
    const bytes file = to_bytes(read_file(vector_path(c.name, ".cbor")));
    REQUIRE_MESSAGE(!file.empty(), "missing vector " << c.name);
    CHECK(to_hex(enc) == to_hex(file));
    // The twins describe the same bytes.
    CHECK(read_file(vector_path(c.name, ".hex")) == to_hex(file) + "\n");
    CHECK(read_file(vector_path(c.name, ".diag")) == to_diag(file) + "\n");

    switch (c.kind) {
      case golden_kind::message: {
        message m;
        REQUIRE(!decode_message(file.data(), file.size(), m));
        CHECK(diff(m, c.msg) == "");
        break;
      }
      case golden_kind::schema: {
        schema s;
        REQUIRE(!decode_schema(file.data(), file.size(), s));
        CHECK(diff(s, c.sch) == "");
        break;
      }
      case golden_kind::control: {
        control_request r;
        REQUIRE(!decode_control(file.data(), file.size(), r));
        CHECK(diff(r, c.ctl) == "");
        break;
      }
    }
  }
}

TEST_CASE("save_reading is the 49-byte message of wire-format.md §2.3") {
  const bytes enc = encode(save_reading_message());
  std::cout << "save_reading: " << enc.size() << " bytes (django-cqrs JSON: 216)\n";
  CHECK(enc.size() <= 54);
  CHECK(enc.size() == 49);
  // The annotated bytes of the document, verbatim.
  CHECK(to_hex(enc) ==
        "84011a9e3779b91a000186a081821b0000019aaaac2600860001"
        "1a0001e2406973656e736f722d3432f94d601a692173c0");
}

TEST_CASE("a further event of the same group costs 26 bytes") {
  message m = save_reading_message();
  const std::size_t one = encode(m).size();
  event e = m.events[0];
  e.values[0] = value::integer(123457);
  m.events.push_back(e);
  CHECK(encode(m).size() - one == 26);
  e.updated_ms += 250;  // a different time adds dt (2 bytes for 250)
  m.events.push_back(e);
  CHECK(encode(m).size() - one == 26 + 26 + 2);
}

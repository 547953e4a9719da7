// Fuzz target for the decoders of outside input: decode_message, decode_schema and
// decode_control. On success the result is re-encoded, decoded again and re-encoded: both
// encodings must be identical (the encoding carries every field, so this is struct equality),
// and to_json must not fail. Any violation aborts, which libFuzzer and the replay test report.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "edgecqrs/codec.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_decode: %s\n", what);
  std::abort();
}

template <class T, class Enc>
std::vector<std::uint8_t> encode_all(const T& v, Enc enc) {
  std::size_t n = 0;
  if (enc(v, nullptr, 0, n)) fail("re-encode (measure) failed on decoded input");
  std::vector<std::uint8_t> out(n);
  std::size_t w = 0;
  if (enc(v, out.data(), out.size(), w) || w != n) fail("re-encode failed or size differs");
  return out;
}

template <class T, class Dec, class Enc>
void check(const std::uint8_t* data, std::size_t size, Dec dec, Enc enc) {
  T first;
  if (dec(data, size, first, edgecqrs::decode_limits{})) return;
  const auto b1 = encode_all(first, enc);
  T second;
  if (dec(b1.data(), b1.size(), second, edgecqrs::decode_limits{}))
    fail("decoding our own encoding failed");
  if (encode_all(second, enc) != b1) fail("round trip changed the message");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace edgecqrs;
  check<message>(data, size, decode_message, encode_message);
  check<schema>(data, size, decode_schema, encode_schema);
  check<control_request>(data, size, decode_control, encode_control);
  message m;
  if (!decode_message(data, size, m) && to_json(m).empty()) fail("empty JSON");
  return 0;
}

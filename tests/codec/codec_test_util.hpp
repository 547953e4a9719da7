// Helpers for the codec tests: exact comparison of decoded structs, hex and CBOR diagnostic
// notation (RFC 8949 §8) for the golden vectors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/event.hpp"

namespace edgecqrs::test {

using bytes = std::vector<std::uint8_t>;

// Empty string when equal, else a description of the first difference.
std::string diff(const message& a, const message& b);
std::string diff(const schema& a, const schema& b);
std::string diff(const control_request& a, const control_request& b);

std::string to_hex(const bytes& b);
bytes from_hex(const std::string& hex);  // ignores whitespace; throws on bad digits
// Diagnostic notation of one CBOR data item (well-formed input only; throws otherwise).
std::string to_diag(const bytes& b);

bytes encode(const message& m);
bytes encode(const schema& s);
bytes encode(const control_request& c);

}  // namespace edgecqrs::test

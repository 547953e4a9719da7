// Pull reader over cbor_stream_decode: see cbor_reader.hpp.
#include "codec/cbor_reader.hpp"

#include <cbor.h>

#include "codec/float_bits.hpp"
#include "edgecqrs/errors.hpp"
#include "utf8.hpp"

namespace edgecqrs::detail {
namespace {

using tk = cbor_token::kind;

// What one cbor_stream_decode call reported through its callbacks.
struct decode_ctx {
  cbor_token* t;
  errc err = errc::ok;
  int float_width = 0;  // 2, 4 or 8 when a float was seen
};

decode_ctx* ctx(void* c) { return static_cast<decode_ctx*>(c); }
void set_uint(void* c, std::uint64_t v) { ctx(c)->t->k = tk::uint; ctx(c)->t->u = v; }
void set_neg(void* c, std::uint64_t v) { ctx(c)->t->k = tk::negint; ctx(c)->t->u = v; }

void on_uint8(void* c, std::uint8_t v) { set_uint(c, v); }
void on_uint16(void* c, std::uint16_t v) { set_uint(c, v); }
void on_uint32(void* c, std::uint32_t v) { set_uint(c, v); }
void on_uint64(void* c, std::uint64_t v) { set_uint(c, v); }
void on_neg8(void* c, std::uint8_t v) { set_neg(c, v); }
void on_neg16(void* c, std::uint16_t v) { set_neg(c, v); }
void on_neg32(void* c, std::uint32_t v) { set_neg(c, v); }
void on_neg64(void* c, std::uint64_t v) { set_neg(c, v); }
void on_bytes(void* c, cbor_data p, std::size_t n) {
  ctx(c)->t->k = tk::bytes; ctx(c)->t->p = p; ctx(c)->t->n = n;
}
void on_text(void* c, cbor_data p, std::size_t n) {
  ctx(c)->t->k = tk::text; ctx(c)->t->p = p; ctx(c)->t->n = n;
}
void on_indef(void* c) { ctx(c)->err = errc::indefinite_length; }
void on_array(void* c, std::size_t n) { ctx(c)->t->k = tk::array; ctx(c)->t->u = n; }
void on_map(void* c, std::size_t n) { ctx(c)->t->k = tk::map; ctx(c)->t->u = n; }
void on_tag(void* c, std::uint64_t) { ctx(c)->err = errc::tag_not_allowed; }
// libcbor hands floats over already converted (and its half decoder drops NaN payloads), so
// only the width is taken here; the bits are re-read from the input.
void on_float2(void* c, float) { ctx(c)->t->k = tk::real; ctx(c)->float_width = 2; }
void on_float4(void* c, float) { ctx(c)->t->k = tk::real; ctx(c)->float_width = 4; }
void on_float8(void* c, double) { ctx(c)->t->k = tk::real; ctx(c)->float_width = 8; }
void on_undefined(void* c) { ctx(c)->t->k = tk::undefined; }
void on_null(void* c) { ctx(c)->t->k = tk::null; }
void on_bool(void* c, bool b) { ctx(c)->t->k = tk::boolean; ctx(c)->t->b = b; }
void on_break(void* c) { ctx(c)->err = errc::not_well_formed; }

const cbor_callbacks callbacks = [] {
  cbor_callbacks cb = cbor_empty_callbacks;
  cb.uint8 = on_uint8;
  cb.uint16 = on_uint16;
  cb.uint32 = on_uint32;
  cb.uint64 = on_uint64;
  cb.negint8 = on_neg8;
  cb.negint16 = on_neg16;
  cb.negint32 = on_neg32;
  cb.negint64 = on_neg64;
  cb.byte_string = on_bytes;
  cb.byte_string_start = on_indef;
  cb.string = on_text;
  cb.string_start = on_indef;
  cb.array_start = on_array;
  cb.indef_array_start = on_indef;
  cb.map_start = on_map;
  cb.indef_map_start = on_indef;
  cb.tag = on_tag;
  cb.float2 = on_float2;
  cb.float4 = on_float4;
  cb.float8 = on_float8;
  cb.undefined = on_undefined;
  cb.null = on_null;
  cb.boolean = on_bool;
  cb.indef_break = on_break;
  return cb;
}();

std::uint64_t load_be(const std::uint8_t* p, std::size_t n) {
  std::uint64_t v = 0;
  for (std::size_t k = 0; k < n; ++k) v = (v << 8) | p[k];
  return v;
}

}  // namespace

// Lengths and counts are checked on the raw head as 64-bit numbers before libcbor sees them:
// its callbacks take size_t, which would truncate a hostile 8-byte length on 32-bit targets.
std::error_code cbor_reader::precheck() const noexcept {
  const std::uint8_t ib = data_[pos_];
  const int major = ib >> 5;
  const int ai = ib & 31;
  if (major < 2 || major > 5 || ai > 27) return {};
  std::uint64_t arg = static_cast<std::uint64_t>(ai);
  if (ai >= 24) {
    const std::size_t len = std::size_t{1} << (ai - 24);
    if (size_ - pos_ - 1 < len) return errc::truncated;
    arg = load_be(data_ + pos_ + 1, len);
  }
  if (major <= 3) {
    if (arg > limits_.max_string_bytes) return errc::string_too_long;
    return {};
  }
  // Each announced element is at least one more item (two for a map entry).
  const std::uint64_t cap = limits_.max_items;
  const std::uint64_t room = promised_ < cap ? cap - promised_ : 0;
  if (arg > room || (major == 5 && arg > room / 2)) return errc::too_many_items;
  return {};
}

std::error_code cbor_reader::next(cbor_token& t) noexcept {
  if (pos_ >= size_) return errc::truncated;
  if (auto ec = precheck()) return ec;
  t = cbor_token{};
  decode_ctx c{&t};
  const cbor_decoder_result res = cbor_stream_decode(data_ + pos_, size_ - pos_, &callbacks, &c);
  if (res.status == CBOR_DECODER_NEDATA) return errc::truncated;
  if (res.status != CBOR_DECODER_FINISHED) return errc::not_well_formed;
  if (c.err != errc::ok) return c.err;
  const std::uint8_t* item = data_ + pos_;
  pos_ += res.read;
  if (++items_ > limits_.max_items) return errc::too_many_items;
  if (items_ > promised_) promised_ = items_;
  switch (t.k) {
    case tk::array: promised_ += t.u; break;
    case tk::map: promised_ += 2 * t.u; break;
    case tk::bytes:
    case tk::text:
      if (t.n > limits_.max_string_bytes) return errc::string_too_long;
      if (t.k == tk::text && !valid_utf8(t.p, t.n)) return errc::invalid_utf8;
      break;
    case tk::real:
      if (c.float_width == 2) {
        const auto half = static_cast<std::uint32_t>(load_be(item + 1, 2));
        t.d = bits_double(widen_float_bits(half, 5, 10));
      } else if (c.float_width == 4) {
        const auto single = static_cast<std::uint32_t>(load_be(item + 1, 4));
        t.d = bits_double(widen_float_bits(single, 8, 23));
      } else {
        t.d = bits_double(load_be(item + 1, 8));
      }
      break;
    default: break;
  }
  return {};
}

}  // namespace edgecqrs::detail

// CBOR codec for the wire format in docs/wire-format.md.
// Decoding uses libcbor's streaming decoder (no item tree) and enforces decode_limits; encoding
// writes into a caller-provided buffer with no heap allocation (pass buf == nullptr to only
// measure: `written` then receives the size needed).
// Errors: std::error_code in the edgecqrs category (errc 100-199); never throws.
// Thread-safety: all functions are reentrant; no global state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <system_error>
#include <utility>

#include "edgecqrs/event.hpp"
#include "edgecqrs/export.hpp"
#include "edgecqrs/value.hpp"

namespace edgecqrs {

struct decode_limits {
  std::size_t max_message_bytes = 256 * 1024;
  std::size_t max_depth = 8;
  std::size_t max_items = 65536;
  std::size_t max_string_bytes = 65536;
  std::size_t max_events = 4096;
  std::size_t max_values = 2000;
};

// ---- decoding outside input (never partially fills `out` on error: it is reset first) ----
// Errors: one distinct errc per rejection (codes 100-124, see errors.hpp and
// tests/vectors/invalid.txt), e.g. truncated, trailing_bytes, wrong_type, integer_out_of_range,
// invalid_utf8, duplicate_key, unknown_key, unsupported_format, bad_event and the limit errors.
// Memory: bounded by `limits` (nothing is reserved beyond what the input can hold).
EDGECQRS_API std::error_code decode_message(const std::uint8_t* data, std::size_t size,
                                            message& out,
                                            const decode_limits& limits = {}) noexcept;
EDGECQRS_API std::error_code decode_schema(const std::uint8_t* data, std::size_t size, schema& out,
                                           const decode_limits& limits = {}) noexcept;
EDGECQRS_API std::error_code decode_control(const std::uint8_t* data, std::size_t size,
                                            control_request& out,
                                            const decode_limits& limits = {}) noexcept;

// ---- encoding whole messages (convenience; allocation-free) ----
// Errors of every encode_* function: buffer_too_small (nothing is written past `cap`, and
// `written` receives the size needed), invalid_argument (input the wire cannot carry or that
// the decoder would reject: negative time or expiry, text that is not valid UTF-8, a repeated
// prev column or meta key, kind/op out of range, a schema without columns or pk, or a pk index
// out of range). With buf == nullptr nothing is written and `written` is the size needed.
// A message is encoded as one group per run of events: group t0 is the first event's
// updated_ms and later events carry dt when their time differs.
EDGECQRS_API std::error_code encode_message(const message& m, std::uint8_t* buf, std::size_t cap,
                                            std::size_t& written) noexcept;
EDGECQRS_API std::error_code encode_schema(const schema& s, std::uint8_t* buf, std::size_t cap,
                                           std::size_t& written) noexcept;
EDGECQRS_API std::error_code encode_control(const control_request& c, std::uint8_t* buf,
                                            std::size_t cap, std::size_t& written) noexcept;

// ---- hot-path pieces, used by the master to build outbox records and messages ----
// A non-owning event: arrays must outlive the call.
struct event_view {
  event_kind kind = event_kind::save;
  std::uint64_t row_version = 0;
  std::int64_t dt_ms = 0;                       // relative to the group's t0; 0 omits dt
  const value_view* values = nullptr;
  std::size_t n_values = 0;
  const std::uint32_t* prev_columns = nullptr;  // tracked previous values (parallel arrays)
  const value_view* prev_values = nullptr;
  std::size_t n_prev = 0;
  std::string_view correlation_id;              // empty: none
  const std::pair<std::string_view, value_view>* meta = nullptr;
  std::size_t n_meta = 0;
};

// One value item.
EDGECQRS_API std::error_code encode_value(const value_view& v, std::uint8_t* buf, std::size_t cap,
                                          std::size_t& written) noexcept;
// One event item.
EDGECQRS_API std::error_code encode_event(const event_view& ev, std::uint8_t* buf, std::size_t cap,
                                          std::size_t& written) noexcept;
// The head of a group: array header for 1 + n_events items, then t0. Append n_events events.
EDGECQRS_API std::error_code encode_group_head(std::int64_t t0_ms, std::size_t n_events,
                                               std::uint8_t* buf, std::size_t cap,
                                               std::size_t& written) noexcept;
// The head of a message: array header (4, or 5 with ext), fmt, tag, seq and the groups array
// header. Append n_groups pre-encoded groups, then encode_message_ext when has_ext.
EDGECQRS_API std::error_code encode_message_head(std::uint32_t schema_tag, std::uint64_t first_seq,
                                                 std::size_t n_groups, bool has_ext,
                                                 std::uint8_t* buf, std::size_t cap,
                                                 std::size_t& written) noexcept;
// The ext map from m.target, m.expires_ms, m.has_resync/m.resync and m.reply_to.
// message_has_ext(m) tells whether there is anything to write.
EDGECQRS_API bool message_has_ext(const message& m) noexcept;
EDGECQRS_API std::error_code encode_message_ext(const message& m, std::uint8_t* buf,
                                                std::size_t cap, std::size_t& written) noexcept;

// Readable one-line JSON of a decoded message (column names from `s` when given, else
// positional). BLOBs are {"b64": "<base64>"}, non-finite reals are strings ("NaN", "Infinity",
// "-Infinity"). Returns an empty string only when memory runs out.
EDGECQRS_API std::string to_json(const message& m, const schema* s = nullptr);

}  // namespace edgecqrs

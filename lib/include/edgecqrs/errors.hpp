// edgecqrs error codes: one std::error_code category for the whole library.
// No exception crosses the public API; every fallible call returns std::error_code.
#pragma once

#include <string>
#include <system_error>

#include "edgecqrs/export.hpp"

namespace edgecqrs {

// Values are stable (they appear in logs and dead letters); new codes are appended within
// their area's range.
enum class errc : int {
  ok = 0,

  // 100-199: codec (decoding outside input)
  truncated = 100,           // input ends inside an item
  trailing_bytes,            // bytes after the top-level item
  not_well_formed,           // reserved additional info, bad simple value, break outside indefinite
  indefinite_length,         // indefinite-length string/array/map (forbidden)
  tag_not_allowed,           // a CBOR tag (none are used)
  wrong_type,                // an item of the wrong major type for its field
  bad_value,                 // a value that is not NULL/INTEGER/REAL/TEXT/BLOB
  integer_out_of_range,      // integer outside its field's range (e.g. > INT64_MAX for a value)
  invalid_utf8,              // text string is not valid UTF-8
  duplicate_key,             // a map repeats a key
  unknown_key,               // a map key this format version does not define
  unsupported_format,        // fmt is not 1
  bad_message,               // message envelope of the wrong shape (array length, field)
  bad_event,                 // event of the wrong shape (head bits, kind 3, missing fields)
  bad_schema,                // schema message of the wrong shape
  bad_control,               // control message of the wrong shape
  too_large,                 // input exceeds decode_limits::max_message_bytes
  too_deep,                  // nesting exceeds decode_limits::max_depth
  too_many_items,            // item count exceeds decode_limits::max_items
  string_too_long,           // string exceeds decode_limits::max_string_bytes
  too_many_events,           // events exceed decode_limits::max_events
  too_many_values,           // values in one event exceed decode_limits::max_values
  empty_input,               // zero bytes
  buffer_too_small,          // encoder: caller's buffer cannot hold the output
  bad_dump,                  // dump file header or record of the wrong shape

  // 200-299: master
  invalid_cqrs_id = 200,     // empty, too long, or contains '/', '+', '#', NUL, leading '$'
  duplicate_cqrs_id,
  unknown_table,
  unknown_column,
  missing_primary_key,       // column subset without the primary key, or table without one
  unsupported_table,         // e.g. WITHOUT ROWID, virtual table
  already_registered,        // table registered twice
  not_in_transaction,
  nested_transaction,
  unmanaged_write,           // a registered table was written outside the transaction API
  outbox_full,               // outbox limit reached (policy: refuse)
  sqlite_error,              // any other SQLite failure (details in the message/log)
  serialization_failed,      // custom serializer failed or returned the wrong shape
  invalid_argument,
  invalid_replica_name,
  invalid_topic_prefix,
  closed,                    // object already closed / detached

  // 300-399: replica
  unknown_stream = 300,      // message for a CQRS_ID not registered here
  unknown_schema,            // schema_tag not (yet) known
  schema_mismatch,           // event values do not fit the schema / local table
  missing_required_column,   // a local NOT NULL column without default is absent from the events
  expired,                   // message expiry in the past on arrival
  handler_failed,            // user handler returned an error
  apply_failed,              // SQL error while applying
  stale_version,             // skipped: older or equal version (not an error for callers)
  dead_letter_full,
  not_for_this_replica,      // direct message targeted at another replica

  // 400-499: transport
  not_connected = 400,
  publish_failed,
  subscribe_failed,
  connect_failed,
  auth_failed,
  tls_failed,
  window_full,               // too many unacknowledged publishes
  timeout,
  transport_error,

  // 500-599: configuration / tools
  bad_config = 500,
  io_error,
};

EDGECQRS_API const std::error_category& edgecqrs_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), edgecqrs_category()};
}

}  // namespace edgecqrs

template <>
struct std::is_error_code_enum<edgecqrs::errc> : std::true_type {};

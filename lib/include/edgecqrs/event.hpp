// Decoded forms of the wire messages (docs/wire-format.md): event messages, schema messages and
// control messages. Plain data; the codec (codec.hpp) converts them to and from CBOR.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "edgecqrs/export.hpp"
#include "edgecqrs/value.hpp"

namespace edgecqrs {

constexpr std::uint32_t wire_format_version = 1;

enum class event_kind : std::uint8_t { save = 0, remove = 1, sync = 2 };

EDGECQRS_API const char* to_string(event_kind k) noexcept;  // "save", "delete", "sync"

struct prev_value {
  std::uint32_t column = 0;  // index into the schema's columns
  value old;
};

struct event {
  event_kind kind = event_kind::save;
  std::uint64_t row_version = 0;
  std::int64_t updated_ms = 0;     // ms since the Unix epoch (group t0 + dt on the wire)
  std::vector<value> values;       // save/sync: all schema columns in order; remove: pk columns
  std::vector<prev_value> previous;                     // tracked columns that changed
  std::string correlation_id;                           // empty: none
  std::vector<std::pair<std::string, value>> meta;      // empty: none
};

struct resync_marker {
  std::uint64_t session = 0;
  std::uint64_t upto_seq = 0;
  std::uint64_t part = 0;
  bool last = false;
};

struct message {
  std::uint32_t schema_tag = 0;
  std::uint64_t first_seq = 0;   // 0: outside the stream sequence (sync messages)
  std::vector<event> events;
  // Extensions (absent when empty / zero / has_resync == false).
  std::string target;            // direct sync: the replica name
  std::int64_t expires_ms = 0;   // 0: never
  bool has_resync = false;
  resync_marker resync;
  std::string reply_to;

  // Stream sequence of events[i] (0 when first_seq is 0).
  std::uint64_t seq_of(std::size_t i) const { return first_seq ? first_seq + i : 0; }
};

struct column_def {
  std::string name;
  std::string decl_type;   // declared type as written in CREATE TABLE (may be empty)
};

struct schema {
  std::string cqrs_id;
  std::uint32_t schema_tag = 0;
  std::array<std::uint8_t, 16> incarnation{};
  std::vector<column_def> columns;
  std::vector<std::uint32_t> pk;  // indices into columns, in primary-key order
};

enum class control_op : std::uint8_t { replay = 0, resync = 1, schema = 2 };

struct control_request {
  control_op op = control_op::replay;
  std::string replica;
  std::uint64_t from_seq = 0;
  std::uint64_t to_seq = 0;
};

// FNV-1a 32-bit schema tag as defined in docs/wire-format.md §4 (never 0).
EDGECQRS_API std::uint32_t compute_schema_tag(const schema& s) noexcept;

}  // namespace edgecqrs

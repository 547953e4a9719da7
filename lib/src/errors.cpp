// The edgecqrs error category: readable messages for every errc.
#include "edgecqrs/errors.hpp"

namespace edgecqrs {
namespace {

// One table of C strings and a single std::string construction in message(): returning a string
// literal from each case would inline a std::string constructor per case (about 1 KB of code).
const char* describe(int c) noexcept {
  switch (static_cast<errc>(c)) {
    case errc::ok: return "success";
    case errc::truncated: return "truncated input: an item ends past the end of the data";
    case errc::trailing_bytes: return "trailing bytes after the top-level item";
    case errc::not_well_formed: return "CBOR not well-formed";
    case errc::indefinite_length: return "indefinite-length items are not allowed";
    case errc::tag_not_allowed: return "CBOR tags are not allowed";
    case errc::wrong_type: return "item of the wrong type for its field";
    case errc::bad_value: return "value is not NULL, INTEGER, REAL, TEXT or BLOB";
    case errc::integer_out_of_range: return "integer out of range for its field";
    case errc::invalid_utf8: return "text is not valid UTF-8";
    case errc::duplicate_key: return "map has a duplicate key";
    case errc::unknown_key: return "map has a key this format version does not define";
    case errc::unsupported_format: return "unsupported wire format version";
    case errc::bad_message: return "malformed event message envelope";
    case errc::bad_event: return "malformed event";
    case errc::bad_schema: return "malformed schema message";
    case errc::bad_control: return "malformed control message";
    case errc::too_large: return "input larger than the size limit";
    case errc::too_deep: return "nesting deeper than the depth limit";
    case errc::too_many_items: return "more items than the item limit";
    case errc::string_too_long: return "string longer than the string limit";
    case errc::too_many_events: return "more events in one message than the limit";
    case errc::too_many_values: return "more values in one event than the limit";
    case errc::empty_input: return "empty input";
    case errc::buffer_too_small: return "output buffer too small";
    case errc::bad_dump: return "malformed dump file";

    case errc::invalid_cqrs_id: return "invalid CQRS_ID (empty, over 128 bytes, or contains '/', '+', '#', NUL or a leading '$')";
    case errc::duplicate_cqrs_id: return "CQRS_ID already registered";
    case errc::unknown_table: return "no such table";
    case errc::unknown_column: return "no such column";
    case errc::missing_primary_key: return "primary key missing (table has none, or the column subset omits it)";
    case errc::unsupported_table: return "table kind not supported";
    case errc::already_registered: return "table already registered";
    case errc::not_in_transaction: return "not inside a transaction";
    case errc::nested_transaction: return "transaction already open";
    case errc::unmanaged_write: return "registered table written outside the edgecqrs transaction API";
    case errc::outbox_full: return "outbox full: write refused (publish or raise the limit)";
    case errc::sqlite_error: return "SQLite error";
    case errc::serialization_failed: return "custom serialization failed";
    case errc::invalid_argument: return "invalid argument";
    case errc::invalid_replica_name: return "invalid replica name (empty, over 128 bytes, or contains '/', '+', '#', NUL or a leading '$')";
    case errc::invalid_topic_prefix: return "invalid topic prefix";
    case errc::closed: return "object is closed";

    case errc::unknown_stream: return "unknown CQRS_ID (not registered on this replica)";
    case errc::unknown_schema: return "unknown schema tag (schema message not received yet)";
    case errc::schema_mismatch: return "event does not fit the schema";
    case errc::missing_required_column: return "a required local column is not sent by the master";
    case errc::expired: return "message expired before it arrived";
    case errc::handler_failed: return "handler failed";
    case errc::apply_failed: return "applying the event failed";
    case errc::stale_version: return "older or equal row version: skipped";
    case errc::dead_letter_full: return "dead-letter table full";
    case errc::not_for_this_replica: return "direct message for another replica";

    case errc::not_connected: return "not connected to the broker";
    case errc::publish_failed: return "publish failed";
    case errc::subscribe_failed: return "subscribe failed";
    case errc::connect_failed: return "connect failed";
    case errc::auth_failed: return "broker refused the credentials";
    case errc::tls_failed: return "TLS handshake or certificate check failed";
    case errc::window_full: return "too many unacknowledged publishes";
    case errc::timeout: return "timed out";
    case errc::transport_error: return "transport error";

    case errc::bad_config: return "invalid configuration";
    case errc::io_error: return "I/O error";
  }
  return nullptr;
}

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "edgecqrs"; }
  std::string message(int c) const override {
    if (const char* text = describe(c)) return text;
    return "unknown edgecqrs error " + std::to_string(c);
  }
};

}  // namespace

const std::error_category& edgecqrs_category() noexcept {
  static const category c;
  return c;
}

}  // namespace edgecqrs

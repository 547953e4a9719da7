// Validation of CQRS_IDs, replica names and topic prefixes, and the topic map of docs/topics.md.
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <system_error>

#include "edgecqrs/export.hpp"

namespace edgecqrs {

constexpr std::size_t max_name_bytes = 128;

// 1..128 bytes of valid UTF-8, no '/', '+', '#', NUL, not starting with '$'.
EDGECQRS_API std::error_code validate_cqrs_id(
    std::string_view id) noexcept;  // errc::invalid_cqrs_id
EDGECQRS_API std::error_code validate_replica_name(
    std::string_view n) noexcept;  // errc::invalid_replica_name
// Levels separated by '/', each non-empty and valid like a CQRS_ID.
EDGECQRS_API std::error_code validate_topic_prefix(
    std::string_view p) noexcept;  // errc::invalid_topic_prefix

EDGECQRS_API std::string event_topic(std::string_view prefix, std::string_view cqrs_id);
EDGECQRS_API std::string direct_topic(std::string_view prefix, std::string_view replica,
                                      std::string_view cqrs_id);
EDGECQRS_API std::string schema_topic(std::string_view prefix, std::string_view cqrs_id);
EDGECQRS_API std::string control_topic(std::string_view prefix, std::string_view cqrs_id);

constexpr std::string_view default_topic_prefix = "edgecqrs";

}  // namespace edgecqrs

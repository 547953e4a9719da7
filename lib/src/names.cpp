// CQRS_ID / replica name / prefix validation and the topic map (docs/topics.md).
#include "edgecqrs/names.hpp"

#include "edgecqrs/errors.hpp"
#include "utf8.hpp"

namespace edgecqrs {
namespace {

bool valid_level(std::string_view s) {
  if (s.empty() || s.size() > max_name_bytes || s[0] == '$') return false;
  for (char c : s)
    if (c == '/' || c == '+' || c == '#' || c == '\0') return false;
  return detail::valid_utf8(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

std::string join(std::string_view a, std::string_view b, std::string_view c,
                 std::string_view d = {}) {
  std::string t;
  t.reserve(a.size() + b.size() + c.size() + d.size() + 4);
  t.append(a).append("/v1/").append(b).append("/").append(c);
  if (!d.empty()) t.append("/").append(d);
  return t;
}

}  // namespace

std::error_code validate_cqrs_id(std::string_view id) noexcept {
  return valid_level(id) ? std::error_code{} : make_error_code(errc::invalid_cqrs_id);
}

std::error_code validate_replica_name(std::string_view n) noexcept {
  return valid_level(n) ? std::error_code{} : make_error_code(errc::invalid_replica_name);
}

std::error_code validate_topic_prefix(std::string_view p) noexcept {
  if (p.empty() || p.size() > 512) return make_error_code(errc::invalid_topic_prefix);
  std::size_t start = 0;
  while (true) {
    std::size_t slash = p.find('/', start);
    std::string_view level = p.substr(start, slash == std::string_view::npos ? p.npos : slash - start);
    if (!valid_level(level)) return make_error_code(errc::invalid_topic_prefix);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

std::string event_topic(std::string_view prefix, std::string_view id) { return join(prefix, "e", id); }
std::string direct_topic(std::string_view prefix, std::string_view replica, std::string_view id) {
  return join(prefix, "d", replica, id);
}
std::string schema_topic(std::string_view prefix, std::string_view id) { return join(prefix, "s", id); }
std::string control_topic(std::string_view prefix, std::string_view id) { return join(prefix, "c", id); }

}  // namespace edgecqrs

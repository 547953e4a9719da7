// Small helpers of event.hpp: kind names and the schema tag (docs/wire-format.md §4).
#include "edgecqrs/event.hpp"

namespace edgecqrs {

const char* to_string(event_kind k) noexcept {
  switch (k) {
    case event_kind::save: return "save";
    case event_kind::remove: return "delete";
    case event_kind::sync: return "sync";
  }
  return "?";
}

namespace {
constexpr std::uint32_t fnv_offset = 2166136261u;
constexpr std::uint32_t fnv_prime = 16777619u;
void fnv(std::uint32_t& h, const void* p, std::size_t n) {
  auto* b = static_cast<const std::uint8_t*>(p);
  for (std::size_t i = 0; i < n; ++i) { h ^= b[i]; h *= fnv_prime; }
}
}  // namespace

std::uint32_t compute_schema_tag(const schema& s) noexcept {
  std::uint32_t h = fnv_offset;
  const std::uint8_t zero = 0;
  fnv(h, s.incarnation.data(), s.incarnation.size());
  fnv(h, s.cqrs_id.data(), s.cqrs_id.size());
  for (const auto& c : s.columns) {
    fnv(h, c.name.data(), c.name.size());
    fnv(h, &zero, 1);
    fnv(h, c.decl_type.data(), c.decl_type.size());
    fnv(h, &zero, 1);
  }
  for (auto i : s.pk) {
    std::uint8_t b = static_cast<std::uint8_t>(i);
    fnv(h, &b, 1);
  }
  return h ? h : 1;
}

}  // namespace edgecqrs

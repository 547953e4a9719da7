// edgecqrs demo: encodes the events of one `reading` stream (a save, an update carrying the
// previous value, a delete and a direct re-sync answer), decodes them again, prints each as
// one JSON line and compares the wire size with django-cqrs' JSON. Exits non-zero when a
// decoded message differs from what was encoded.
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"

using namespace edgecqrs;

namespace {

// django-cqrs' JSON for the same 4-field row (measured, docs/wire-format.md §2.3).
constexpr double django_cqrs_json_bytes = 216;

std::vector<std::uint8_t> encode_or_die(const message& m, bool& ok) {
  std::size_t n = 0;
  if (auto ec = encode_message(m, nullptr, 0, n)) {
    std::fprintf(stderr, "encode (measure): %s\n", ec.message().c_str());
    ok = false;
    return {};
  }
  std::vector<std::uint8_t> b(n);
  std::size_t w = 0;
  if (auto ec = encode_message(m, b.data(), b.size(), w); ec || w != n) {
    std::fprintf(stderr, "encode: %s\n", ec ? ec.message().c_str() : "size differs");
    ok = false;
  }
  return b;
}

// Encode, decode, re-encode: the bytes must match (the encoding carries every field).
bool show(const char* what, const message& m, const schema& s) {
  bool ok = true;
  const auto bytes = encode_or_die(m, ok);
  if (!ok) return false;
  message back;
  if (auto ec = decode_message(bytes.data(), bytes.size(), back)) {
    std::fprintf(stderr, "%s: decode failed: %s\n", what, ec.message().c_str());
    return false;
  }
  if (encode_or_die(back, ok) != bytes || !ok) {
    std::fprintf(stderr, "%s: decoded message differs from the original\n", what);
    return false;
  }
  const std::size_t n_events = back.events.empty() ? 1 : back.events.size();
  std::printf("%-8s %3zu B, %5.1f B/event  %s\n", what, bytes.size(),
              static_cast<double>(bytes.size()) / static_cast<double>(n_events),
              to_json(back, &s).c_str());
  return true;
}

event make(event_kind kind, std::uint64_t version, std::int64_t t, std::vector<value> values) {
  event e;
  e.kind = kind;
  e.row_version = version;
  e.updated_ms = t;
  e.values = std::move(values);
  return e;
}

}  // namespace

int main() {
  schema s;
  s.cqrs_id = "reading";
  s.incarnation = {0x5e, 0x11, 0x0a, 0x42, 0x9c, 0x01, 0x7d, 0x33,
                   0x28, 0xee, 0x14, 0x90, 0x0b, 0x6f, 0xd2, 0x57};
  s.columns = {{"id", "INTEGER"}, {"name", "TEXT"}, {"temp", "REAL"}, {"ts", "INTEGER"}};
  s.pk = {0};
  s.schema_tag = compute_schema_tag(s);

  bool ok = true;
  {
    std::array<std::uint8_t, 256> buf{};
    std::size_t n = 0;
    schema back;
    if (encode_schema(s, buf.data(), buf.size(), n) || decode_schema(buf.data(), n, back) ||
        back.schema_tag != s.schema_tag || back.columns.size() != s.columns.size()) {
      std::fprintf(stderr, "schema message did not round-trip\n");
      ok = false;
    }
    std::printf("schema   %3zu B  (retained, once per stream) tag %u\n", n, s.schema_tag);
  }

  const std::int64_t t0 = 1763800000000;
  auto row = [](std::int64_t id, double temp, std::int64_t ts) {
    return std::vector<value>{value::integer(id), value::text("sensor-42"), value::real(temp),
                              value::integer(ts)};
  };

  message save;
  save.schema_tag = s.schema_tag;
  save.first_seq = 100000;
  save.events.push_back(make(event_kind::save, 1, t0, row(123456, 21.5, 1763800000)));
  ok = show("save", save, s) && ok;

  message update;
  update.schema_tag = s.schema_tag;
  update.first_seq = 100001;
  event u = make(event_kind::save, 2, t0 + 30000, row(123456, 22.25, 1763800030));
  u.previous.push_back({2, value::real(21.5)});
  u.correlation_id = "req-7f3a";
  update.events.push_back(u);
  ok = show("update", update, s) && ok;

  message del;
  del.schema_tag = s.schema_tag;
  del.first_seq = 100002;
  del.events.push_back(make(event_kind::remove, 3, t0 + 60000, {value::integer(123456)}));
  ok = show("delete", del, s) && ok;

  message sync;
  sync.schema_tag = s.schema_tag;
  sync.first_seq = 0;
  sync.target = "gw-1";
  sync.has_resync = true;
  sync.resync = {7, 100002, 0, true};
  for (int i = 0; i < 10; ++i)
    sync.events.push_back(make(event_kind::sync, 1, t0 - 1000 * i,
                               row(200000 + i, 18.0 + 0.25 * i, 1763800000 - i)));
  ok = show("sync", sync, s) && ok;

  bool dummy = true;
  const double save_bytes = static_cast<double>(encode_or_die(save, dummy).size());
  std::printf("save event: %.0f B vs django-cqrs JSON %.0f B (%.1fx smaller)\n", save_bytes,
              django_cqrs_json_bytes, django_cqrs_json_bytes / save_bytes);
  if (!ok) std::fprintf(stderr, "demo: FAILED\n");
  return ok ? 0 : 1;
}

// Fuzz target: the full replica apply path. Bytes go through replica::on_message into a
// registered stream ("items", schema known, initial re-sync done) on an in-memory database.
// The first input byte picks the topic (event, direct, schema, unknown stream); the rest is the
// message. Asserts the replica keeps working: a valid event applies after every input.
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/replica.hpp"

namespace {

using bytes = std::vector<std::uint8_t>;

template <class T, class F>
bytes encode_with(const T& x, F f) {
  std::size_t n = 0;
  if (f(x, nullptr, 0, n)) return {};
  bytes b(n);
  if (f(x, b.data(), b.size(), n)) return {};
  b.resize(n);
  return b;
}

struct state {
  sqlite3* db = nullptr;
  edgecqrs::fake_clock clk;
  std::unique_ptr<edgecqrs::replica> r;
  edgecqrs::schema sch;
  std::int64_t probes = 0;

  state() {
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) std::abort();
    sqlite3_exec(db, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)",
                 nullptr, nullptr, nullptr);
    edgecqrs::replica_options ro;
    ro.name = "gw1";
    ro.time = &clk;
    ro.max_dead_letters = 64;
    ro.max_pending_retries = 64;
    if (edgecqrs::replica::open(db, ro, r)) std::abort();
    edgecqrs::replica_table_options t;
    t.local_table = "items";
    if (r->register_table("items", t)) std::abort();
    sch.cqrs_id = "items";
    sch.columns = {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}};
    sch.pk = {0};
    sch.incarnation.fill(1);
    sch.schema_tag = edgecqrs::compute_schema_tag(sch);
    auto s = encode_with(sch, [](const edgecqrs::schema& x, std::uint8_t* b, std::size_t c,
                                 std::size_t& n) { return edgecqrs::encode_schema(x, b, c, n); });
    if (r->on_message("edgecqrs/v1/s/items", s.data(), s.size())) std::abort();
    edgecqrs::message m;
    m.schema_tag = sch.schema_tag;
    m.has_resync = true;
    m.resync = {1, 0, 0, true};
    m.target = "gw1";
    auto b = encode_message(m);
    r->on_message("edgecqrs/v1/d/gw1/items", b.data(), b.size());
  }
  static bytes encode_message(const edgecqrs::message& m) {
    return encode_with(m, [](const edgecqrs::message& x, std::uint8_t* b, std::size_t c,
                             std::size_t& n) { return edgecqrs::encode_message(x, b, c, n); });
  }
  // A sync event (outside the sequence) for a fresh key must never fail to apply for a database
  // reason (a fuzzed schema message may legitimately retire the probe's schema: ignored then).
  void probe_still_works() {
    edgecqrs::message m;
    m.schema_tag = sch.schema_tag;
    edgecqrs::event e;
    e.kind = edgecqrs::event_kind::sync;
    // 1000 keys cycled with rising versions: the database stays bounded over long runs.
    e.row_version = static_cast<std::uint64_t>(++probes);
    e.updated_ms = 1763800000000;
    const std::int64_t id = 1000000 + probes % 1000;
    e.values = {edgecqrs::value::integer(id), edgecqrs::value::text("p"),
                edgecqrs::value::integer(1)};
    m.events.push_back(e);
    auto b = encode_message(m);
    const auto ec = r->on_message("edgecqrs/v1/e/items", b.data(), b.size());
    if (ec == edgecqrs::errc::apply_failed || ec == edgecqrs::errc::sqlite_error) std::abort();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static state* st = new state();
  if (size == 0) return 0;
  static const char* const topics[] = {"edgecqrs/v1/e/items", "edgecqrs/v1/d/gw1/items",
                                       "edgecqrs/v1/s/items", "edgecqrs/v1/e/other",
                                       "edgecqrs/v1/d/gw2/items"};
  const char* topic = topics[data[0] % 5];
  (void)st->r->on_message(topic, data + 1, size - 1);
  st->clk.advance(1000);
  (void)st->r->poll();
  st->probe_still_works();
  return 0;
}

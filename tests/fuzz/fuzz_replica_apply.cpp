// Fuzz target: the full replica apply path. Bytes go through replica::on_message into a
// registered stream ("items", schema known, initial re-sync done) on an in-memory database.
// The first input byte picks the topic (event, direct, schema, unknown stream); the rest is the
// message. Asserts the replica keeps working: a valid event applies after every input.
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>

#include "edgecqrs/codec.hpp"
#include "items_replica.hpp"

namespace {

// The fuzzed replica, after its schema and initial re-sync.
struct state : edgecqrs::fuzz::items_replica {
  edgecqrs::schema sch = edgecqrs::test::make_schema(
      "items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});

  state() {
    auto s = edgecqrs::test::encode(sch);
    if (r->on_message("edgecqrs/v1/s/items", s.data(), s.size())) std::abort();
    edgecqrs::message m;
    m.schema_tag = sch.schema_tag;
    m.has_resync = true;
    m.resync = {1, 0, 0, true};
    m.target = "gw1";
    auto b = edgecqrs::test::encode(m);
    r->on_message("edgecqrs/v1/d/gw1/items", b.data(), b.size());
  }
  // A sync event (outside the sequence) for a fresh key must never fail to apply for a database
  // reason (a fuzzed schema message may legitimately retire the probe's schema: ignored then).
  void probe_still_works() {
    auto b = edgecqrs::test::encode(next_probe(sch.schema_tag));
    if (database_failure(r->on_message("edgecqrs/v1/e/items", b.data(), b.size()))) std::abort();
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

// Fuzz target: the full replica apply path. Bytes go through replica::on_message into a
// registered stream ("items", schema known, initial re-sync done) on an in-memory database.
// The first input byte picks the topic (event, direct, schema, unknown stream); the rest is the
// message. Asserts the replica keeps working: a valid event applies after every input.
//
// Re-sync sessions: the replica runs only sessions whose id is the nonce of one of its own
// re-sync requests (docs/replication.md §4), which no input can know. A message for the direct
// topic that carries a resync ext with a placeholder session id gets a nonce the replica asked
// for instead (decoded, rewritten, re-encoded): session 1 a request the harness makes the replica
// send just before (request_resync), 2..4 the replica's last, second-last and third-last
// request (a run over several inputs, competing sessions, parts of a completed session). Any
// other session id goes through unchanged (a forged session).
#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>

#include "edgecqrs/codec.hpp"
#include "items_replica.hpp"

namespace {

constexpr std::uint64_t session_ask_now = 1;     // placeholder: a request sent for this input
constexpr std::uint64_t session_asked_last = 4;  // 2..4: earlier requests, newest first

// The fuzzed replica, after its schema and initial re-sync.
struct state : edgecqrs::fuzz::items_replica {
  edgecqrs::schema sch = edgecqrs::test::make_schema(
      "items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});

  state() {
    auto s = edgecqrs::test::encode(sch);
    if (r->on_message("edgecqrs/v1/s/items", s.data(), s.size())) std::abort();
    // The schema's arrival asked for the initial re-sync: answered as the master does, with the
    // request's nonce, by one empty part.
    if (collect_asks() == 0) std::abort();
    edgecqrs::message m;
    m.schema_tag = sch.schema_tag;
    m.has_resync = true;
    m.resync = {asked.back(), 0, 0, true};
    m.target = "gw1";
    auto b = edgecqrs::test::encode(m);
    if (r->on_message("edgecqrs/v1/d/gw1/items", b.data(), b.size())) std::abort();
    if (r->stats().resyncs_completed != 1) std::abort();
  }

  // The nonce a placeholder session id stands for (0: not a placeholder, or no such request).
  std::uint64_t nonce_for(std::uint64_t session) {
    if (session == session_ask_now) return ask_resync();
    if (session > session_ask_now && session <= session_asked_last) {
      const std::size_t back = static_cast<std::size_t>(session - session_ask_now);
      return back <= asked.size() ? asked[asked.size() - back] : 0;
    }
    return 0;
  }

  // Applies a message for the direct topic, its placeholder session id (if any) replaced.
  void deliver_direct(const char* topic, const std::uint8_t* data, std::size_t size) {
    edgecqrs::message m;
    if (!edgecqrs::decode_message(data, size, m) && m.has_resync) {
      if (const std::uint64_t nonce = nonce_for(m.resync.session)) {
        m.resync.session = nonce;
        const auto b = edgecqrs::test::encode(m);
        if (!b.empty()) {
          (void)r->on_message(topic, b.data(), b.size());
          return;
        }
      }
    }
    (void)r->on_message(topic, data, size);
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
  const std::size_t t = data[0] % 5;
  if (t == 1)
    st->deliver_direct(topics[t], data + 1, size - 1);
  else
    (void)st->r->on_message(topics[t], data + 1, size - 1);
  st->clk.advance(1000);
  (void)st->r->poll();
  st->probe_still_works();
  st->collect_asks();  // requests of the input and of poll(); the transport keeps nothing
  return 0;
}

// The replica the replica-side fuzz targets (fuzz_replica_apply, fuzz_dump) drive: an in-memory
// database with items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER), replica "gw1"
// on a fake clock with bounded dead letters and pending retries, stream "items" registered, on a
// recording transport: the re-sync requests it publishes carry the nonces (the session ids) the
// replica accepts, which collect_asks() keeps. Setup failures abort (a fuzz target has no test
// framework).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <system_error>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"

namespace edgecqrs::fuzz {

struct items_replica {
  sqlite3* db = nullptr;
  fake_clock clk;
  test::recording_transport tp;  // before r: the replica holds a pointer to it
  std::unique_ptr<replica> r;
  std::int64_t probes = 0;
  // Nonces of the replica's last re-sync requests, oldest first (as many as the replica
  // remembers: edgecqrs_r_streams.resync_asked keeps 8).
  std::vector<std::uint64_t> asked;

  items_replica() {
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) std::abort();
    sqlite3_exec(db, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)",
                 nullptr, nullptr, nullptr);
    replica_options ro;
    ro.name = "gw1";
    ro.time = &clk;
    ro.max_dead_letters = 64;
    ro.max_pending_retries = 64;
    if (replica::open(db, ro, r)) std::abort();
    replica_table_options t;
    t.local_table = "items";
    if (r->register_table("items", t)) std::abort();
    if (r->attach(tp)) std::abort();
  }

  // Takes the control requests published so far (the transport keeps nothing afterwards),
  // remembers the nonces of the re-sync requests among them and returns how many there were.
  std::size_t collect_asks() {
    std::size_t n = 0;
    for (const auto& c : tp.take_controls()) {
      if (c.op != control_op::resync) continue;
      asked.push_back(c.from_seq);
      if (asked.size() > 8) asked.erase(asked.begin());
      ++n;
    }
    return n;
  }

  // Makes the replica ask for a re-sync now (request_resync always sends a request with a fresh
  // nonce) and returns that nonce, 0 when no request went out.
  std::uint64_t ask_resync() {
    collect_asks();  // earlier requests are not this one
    if (r->request_resync("items")) return 0;
    return collect_asks() > 0 ? asked.back() : 0;
  }

  // The next probe: one sync event (outside the sequence) for a fresh key of `schema_tag`.
  // 1000 keys cycled with rising versions: the database stays bounded over long runs.
  message next_probe(std::uint32_t schema_tag) {
    message m;
    m.schema_tag = schema_tag;
    ++probes;
    m.events.push_back(
        test::sync(static_cast<std::uint64_t>(probes),
                   {value::integer(1000000 + probes % 1000), value::text("p"), value::integer(1)}));
    return m;
  }

  // A probe that fails for a database reason means the replica stopped working.
  static bool database_failure(std::error_code ec) {
    return ec == errc::apply_failed || ec == errc::sqlite_error;
  }
};

}  // namespace edgecqrs::fuzz

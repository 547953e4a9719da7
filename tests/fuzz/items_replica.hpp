// The replica the replica-side fuzz targets (fuzz_replica_apply, fuzz_dump) drive: an in-memory
// database with items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER), replica "gw1"
// on a fake clock with bounded dead letters and pending retries, stream "items" registered.
// Setup failures abort (a fuzz target has no test framework).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <system_error>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"

namespace edgecqrs::fuzz {

struct items_replica {
  sqlite3* db = nullptr;
  fake_clock clk;
  std::unique_ptr<replica> r;
  std::int64_t probes = 0;

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

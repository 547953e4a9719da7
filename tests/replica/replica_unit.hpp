// One replica over a fresh database and a recording transport, fake clock, messages handed to
// replica::on_message directly: the common part of the unit fixtures of the replica tests.
// Needs doctest (replica_helpers.hpp does not: the fuzz targets build on it).
#pragma once

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

namespace edgecqrs::test {

inline constexpr const char* items_ddl =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)";

struct replica_unit {
  temp_dir dir;
  std::string path = dir.file("replica.db");
  fake_clock clk;
  sqlite3* db = nullptr;
  std::unique_ptr<replica> r;
  recording_transport tp;
  schema sch = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});
  replica_options ro;

  // A database in a fresh directory named after `tag`, `ddl` run on it, replica `name`.
  replica_unit(const char* tag, const char* ddl, const char* name = "gw1") : dir(tag) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, ddl, nullptr, nullptr, nullptr) == SQLITE_OK);
    ro.name = name;
    ro.time = &clk;
  }
  ~replica_unit() {
    r.reset();
    sqlite3_close(db);
  }
  replica_unit(const replica_unit&) = delete;
  replica_unit& operator=(const replica_unit&) = delete;

  // (Re)opens the replica with `ro`, registers stream items into `t` and attaches the transport.
  void open(replica_table_options t = into_table("items")) {
    r.reset();
    REQUIRE_FALSE(replica::open(db, ro, r));
    REQUIRE_FALSE(r->register_table("items", std::move(t)));
    REQUIRE_FALSE(r->attach(tp));
  }
  std::error_code deliver(const std::string& topic, const bytes& b) {
    return r->on_message(topic, b.data(), b.size());
  }
  std::error_code send(const message& m) { return deliver("edgecqrs/v1/e/items", encode(m)); }
  std::error_code send_direct(const message& m) {
    return deliver("edgecqrs/v1/d/" + ro.name + "/items", encode(m));
  }
  std::vector<std::string> rows() {
    return dump(db, "SELECT id, name, qty FROM items ORDER BY id");
  }
  stream_status status() {
    stream_status ss;
    CHECK_FALSE(r->status("items", ss));
    return ss;
  }
};

}  // namespace edgecqrs::test

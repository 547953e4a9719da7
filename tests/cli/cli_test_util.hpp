// Helpers shared by the CLI process tests (test_cli_process.cpp, test_cli_broker.cpp): SQL on a
// connection and changes made on the master database through the library.
#pragma once

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <memory>
#include <string>
#include <system_error>

#include "edgecqrs/master.hpp"
#include "test_support.hpp"

namespace edgecqrs::test {

// The master's table in these tests.
inline const char* const item_ddl =
    "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)";

// Runs `sql` on `db`; fails the test on error.
inline void exec_sql(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO(sql << ": " << (err ? err : ""));
  REQUIRE(rc == SQLITE_OK);
  sqlite3_free(err);
}

// No heartbeats: the replicas here see only what the tests send.
inline master_config quiet_master() {
  master_config c;
  c.heartbeat_interval_ms = 0;
  return c;
}

// One master transaction running `sql`; requires success.
inline void master_txn(master& m, const std::string& sql) {
  REQUIRE_FALSE(m.transaction([&](sqlite3* db) {
    exec_sql(db, sql);
    return std::error_code{};
  }));
}

// Runs a change on the master database through the library (versions bump, events queued):
// opens it (no transport), runs `create_sql` first when given, registers stream "item".
inline void master_change(const std::string& path, const std::string& sql,
                          const std::string& create_sql = "") {
  std::unique_ptr<master> m;
  REQUIRE_FALSE(master::open(path, quiet_master(), nullptr, m));
  if (!create_sql.empty()) exec_sql(m->db(), create_sql);
  REQUIRE_FALSE(m->register_table(stream_of("item")));
  master_txn(*m, sql);
}

}  // namespace edgecqrs::test

// Kill-test helper: writes rows through the master in a loop and reports each committed id on
// stdout (after commit returns), until killed. Usage: master_kill_child <db> <start-id>
#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/master.hpp"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::unique_ptr<edgecqrs::master> m;
  edgecqrs::master_config cfg;
  if (edgecqrs::master::open(argv[1], cfg, nullptr, m)) return 3;
  sqlite3* db = m->db();
  if (sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS row(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
                   nullptr, nullptr, nullptr) != SQLITE_OK)
    return 4;
  edgecqrs::table_options o;
  o.table = "row";
  o.cqrs_id = "row";
  if (m->register_table(o)) return 5;
  sqlite3_stmt* ins = nullptr;
  sqlite3_stmt* upd = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO row VALUES(?1, 'value-' || ?1, 0)", -1, &ins, nullptr);
  sqlite3_prepare_v2(db, "UPDATE row SET n = n + 1 WHERE id = ?1", -1, &upd, nullptr);
  long id = std::atol(argv[2]);
  for (;; id += 3) {
    // Three rows per transaction, one of them updated twice: one event per row.
    auto ec = m->transaction([&](sqlite3*) -> std::error_code {
      for (long k = id; k < id + 3; ++k) {
        sqlite3_bind_int64(ins, 1, k);
        int rc = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (rc != SQLITE_DONE) return make_error_code(edgecqrs::errc::sqlite_error);
      }
      for (int r = 0; r < 2; ++r) {
        sqlite3_bind_int64(upd, 1, id);
        int rc = sqlite3_step(upd);
        sqlite3_reset(upd);
        if (rc != SQLITE_DONE) return make_error_code(edgecqrs::errc::sqlite_error);
      }
      return {};
    });
    if (ec) return 6;
    std::printf("%ld\n", id + 2);
    std::fflush(stdout);
  }
}

// P1: insert rate with capture + outbox relative to bare SQLite (100-row transactions by default, WAL,
// synchronous=NORMAL), the table reading(id INTEGER PRIMARY KEY, name TEXT, value REAL,
// updated INTEGER). Prints both rates and the ratio (goal >= 0.6), medians of several runs.
// Usage: bench_capture [rows] [runs] [txn_rows=100]
#include <sqlite3.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/master.hpp"

namespace {

int txn_rows = 100;

sqlite3* open_db(const std::string& path) {
  ::unlink(path.c_str());
  ::unlink((path + "-wal").c_str());
  ::unlink((path + "-shm").c_str());
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) std::exit(1);
  sqlite3_exec(db,
               "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
               "CREATE TABLE reading(id INTEGER PRIMARY KEY, name TEXT, value REAL, updated INTEGER)",
               nullptr, nullptr, nullptr);
  return db;
}

// Inserts rows [0, n) in transactions of txn_rows through `run_txn`; returns rows per second.
template <class Txn>
double insert_rate(sqlite3* db, int n, Txn run_txn) {
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO reading VALUES(?1, ?2, ?3, ?4)", -1, &s, nullptr);
  char name[32];
  // CPU time (user + system) of the process: the machine is shared, so wall time is noisy;
  // the work measured here (SQLite, capture, write syscalls) is all on this thread.
  std::clock_t c0 = std::clock();
  for (int base = 0; base < n; base += txn_rows) {
    run_txn([&] {
      for (int i = base; i < base + txn_rows && i < n; ++i) {
        int len = std::snprintf(name, sizeof name, "sensor-%d", i % 1000);
        sqlite3_bind_int64(s, 1, i + 1);
        sqlite3_bind_text(s, 2, name, len, SQLITE_STATIC);
        sqlite3_bind_double(s, 3, 20.0 + (i % 100) * 0.25);
        sqlite3_bind_int64(s, 4, 1763800000 + i);
        if (sqlite3_step(s) != SQLITE_DONE) std::exit(2);
        sqlite3_reset(s);
      }
    });
  }
  double secs = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  sqlite3_finalize(s);
  return n / secs;
}

double bare(const std::string& path, int n) {
  sqlite3* db = open_db(path);
  double r = insert_rate(db, n, [&](auto body) {
    sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    body();
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  });
  sqlite3_close(db);
  return r;
}

double captured(const std::string& path, int n, std::uint64_t& events) {
  sqlite3* db = open_db(path);
  std::unique_ptr<edgecqrs::master> m;
  edgecqrs::master_config cfg;
  cfg.outbox_max_records = 10'000'000;
  cfg.outbox_max_bytes = 1u << 30;
  if (edgecqrs::master::attach(db, cfg, nullptr, m)) std::exit(3);
  edgecqrs::table_options o;
  o.table = "reading";
  o.cqrs_id = "reading";
  if (m->register_table(o)) std::exit(4);
  double r = insert_rate(db, n, [&](auto body) {
    if (m->begin()) std::exit(5);
    body();
    if (auto ec = m->commit()) {
      std::fprintf(stderr, "commit: %s %s\n", ec.message().c_str(), m->last_error_message().c_str());
      std::exit(6);
    }
  });
  events = m->stats().events;
  m.reset();
  sqlite3_close(db);
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 100000;
  int runs = argc > 2 ? std::atoi(argv[2]) : 5;
  if (argc > 3) txn_rows = std::atoi(argv[3]);
  if (txn_rows < 1) txn_rows = 1;
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgecqrs-bench-capture-" +
                     std::to_string(::getpid()) + ".db";
  std::vector<double> b, c;
  std::uint64_t events = 0;
  for (int r = 0; r < runs; ++r) {
    b.push_back(bare(path, n));
    c.push_back(captured(path, n, events));
  }
  for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  double mb = median(b), mc = median(c);
  std::printf("bench_capture: %d rows in %d-row transactions, WAL, synchronous=NORMAL, %d runs "
              "(pre-update hook: %s)\n",
              n, txn_rows, runs, edgecqrs::master::has_preupdate_hook() ? "yes" : "no");
  std::printf("  bare SQLite:        %10.0f rows/s of CPU time\n", mb);
  std::printf("  capture + outbox:   %10.0f rows/s of CPU time (%llu events)\n", mc,
              static_cast<unsigned long long>(events));
  std::printf("  ratio (P1, goal >= 0.6): %.2f\n", mc / mb);
  return 0;
}

// Power loss (design.md promise 1): a SQLite VFS keeps unsynced writes in memory and a "power
// cut" discards them, which is what a real cut may do to the page cache. Two promises:
//  - a replica never holds a change that a power cut undoes on the master: the master makes the
//    outbox durable before it publishes (with synchronous=NORMAL a WAL commit is not synced
//    until a checkpoint, and an undone commit would give its sequence numbers to new events,
//    which a replica would then skip as duplicates: lost on the replica for good);
//  - with master::open (synchronous=FULL) a commit that returned survives the cut.
// Seeded: EDGECQRS_SEED=S; cuts: EDGECQRS_POWER_CUTS=N (default 12).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "lossy_vfs.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

std::string dump(sqlite3* db, const char* sql) {
  std::string out;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) return "error";
  while (sqlite3_step(s) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(s); ++i) {
      const unsigned char* t = sqlite3_column_text(s, i);
      out += t ? reinterpret_cast<const char*>(t) : "NULL";
      out += '|';
    }
    out += '\n';
  }
  sqlite3_finalize(s);
  return out;
}

std::int64_t count(sqlite3* db, const char* sql) {
  sqlite3_stmt* s = nullptr;
  std::int64_t n = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
    n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return n;
}

int cuts_from_env() {
  const char* e = std::getenv("EDGECQRS_POWER_CUTS");
  return e && *e ? std::atoi(e) : 12;
}

// The master device: its database on the lossy VFS, WAL, synchronous=NORMAL (the throughput
// setting of bench_capture), attached through the app's own connection.
std::error_code run_sql(sqlite3* db, const std::string& sql) {
  return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
             ? std::error_code{}
             : make_error_code(errc::sqlite_error);
}

struct device {
  std::string path;
  sqlite3* db = nullptr;
  std::unique_ptr<loopback::client> client;
  std::unique_ptr<master> m;

  void boot(loopback::broker& broker, edgecqrs::clock& clk) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                         "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT,"
                         " qty INTEGER)",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    client = broker.make_client("master", 64);
    master_config cfg;
    cfg.heartbeat_interval_ms = 500;
    REQUIRE_FALSE(master::attach(db, cfg, client.get(), m, clk));
    REQUIRE_FALSE(m->register_table(stream_of("items")));
  }
  // The power goes: nothing more reaches the disk; the process dies with it.
  void power_cut(lossy_vfs& vfs) {
    vfs.cut(path);
    m.reset();
    client.reset();
    sqlite3_close(db);
    db = nullptr;
    vfs.restore();
    std::remove((path + "-shm").c_str());  // shared memory does not survive a reboot
  }
  void shutdown() {
    m.reset();
    client.reset();
    if (db) sqlite3_close(db);
    db = nullptr;
  }
  // One transaction through the master.
  void write(const std::string& sql) {
    REQUIRE_FALSE(m->transaction([&](sqlite3* c) { return run_sql(c, sql); }));
  }
};

// The replica: its database on the same VFS (cut only when a test says so).
struct dashboard {
  std::string path;
  std::unique_ptr<loopback::client> sub;
  std::unique_ptr<replica> r;

  void create() {
    exec_file(path, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
  }
  void boot(loopback::broker& broker, fake_clock& clk) {
    sub = broker.make_client("replica", 64);
    replica_options ro;
    ro.name = "r1";
    ro.time = &clk;
    ro.request_backoff_initial_ms = 100;
    ro.request_backoff_max_ms = 1000;
    REQUIRE_FALSE(replica::open(path, ro, r));
    REQUIRE_FALSE(r->register_table("items", into_table("items")));
    REQUIRE_FALSE(r->attach(*sub));
  }
  void shutdown() {
    r.reset();
    sub.reset();
  }
};

// One seeded run: the lossy VFS (registered before any database opens), the master device
// booted on dir/master.db, the replica's database dir/replica.db created (the replica not
// started yet), over a loopback broker seeded with EDGECQRS_SEED or `default_seed`.
struct seeded_run {
  lossy_vfs vfs;
  temp_dir dir;
  const std::uint64_t seed;
  std::mt19937_64 rng;
  fake_clock clk;
  loopback::broker broker;
  device dev;
  dashboard d;

  seeded_run(const char* tag, std::uint64_t default_seed)
      : dir(tag), seed(seed_or(default_seed)), rng(seed), broker(seed, &clk) {
    dev.path = dir.file("master.db");
    dev.boot(broker, clk);
    d.path = dir.file("replica.db");
    d.create();
  }
};

std::string upsert(long long k, long long v) {
  return "INSERT INTO items VALUES(" + std::to_string(k) + ", 'n" + std::to_string(v) + "', " +
         std::to_string(v) + ") ON CONFLICT(id) DO UPDATE SET qty=qty+1, name=excluded.name";
}

// Master publishes, broker delivers, replica applies; time moves on.
void step(device& dev, loopback::broker& broker, dashboard& d, fake_clock& clk) {
  REQUIRE_FALSE(dev.m->poll());
  broker.pump_all();
  REQUIRE_FALSE(d.r->poll());
  broker.pump_all();
  clk.advance(50);
}

// The replica's rows equal the master's and its checkpoint is the master's head.
bool in_sync(dashboard& d, device& dev) {
  stream_status ss;
  REQUIRE_FALSE(d.r->status("items", ss));
  sqlite3* rdb = nullptr;
  REQUIRE(sqlite3_open(d.path.c_str(), &rdb) == SQLITE_OK);
  const std::string rows = dump(rdb, "SELECT id, name, qty FROM items ORDER BY id");
  sqlite3_close(rdb);
  INFO("master head " << dev.m->head_seq("items") << ", replica checkpoint " << ss.checkpoint
                      << ", seen ranges " << ss.seen_ranges);
  return ss.checkpoint == dev.m->head_seq("items") &&
         rows == dump(dev.db, "SELECT id, name, qty FROM items ORDER BY id");
}

// Drains until the replica is in sync (at most 400 steps).
bool drain(device& dev, loopback::broker& broker, dashboard& d, fake_clock& clk) {
  for (int i = 0; i < 400; ++i) {
    step(dev, broker, d, clk);
    if (in_sync(d, dev)) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("power cut on the master: a replica never keeps a change the cut undid, and converges") {
  seeded_run run("power", 7);
  auto& [vfs, dir, seed, rng, clk, broker, dev, d] = run;
  // The device was installed long ago: its schema is on disk.
  REQUIRE(sqlite3_exec(dev.db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr) ==
          SQLITE_OK);

  d.boot(broker, clk);

  auto write = [&](int n) {
    for (int i = 0; i < n; ++i) {
      long long k = static_cast<long long>(rng() % 40), v = static_cast<long long>(rng() % 1000);
      dev.write(rng() % 5 == 0 ? "DELETE FROM items WHERE id=" + std::to_string(k) : upsert(k, v));
    }
  };

  const int cuts = cuts_from_env();
  std::uint64_t committed = 0, undone_unpublished = 0, max_replica_ahead = 0;
  for (int c = 0; c < cuts; ++c) {
    // Commits, published and applied as they go...
    int rounds = 5 + static_cast<int>(rng() % 20);
    for (int i = 0; i < rounds; ++i) {
      int n = 1 + static_cast<int>(rng() % 4);
      write(n);
      committed += static_cast<std::uint64_t>(n);
      step(dev, broker, d, clk);
    }
    // ...then a few that are committed but not yet published when the power goes.
    int late = static_cast<int>(rng() % 4);
    write(late);
    committed += static_cast<std::uint64_t>(late);
    const std::uint64_t head_before = dev.m->head_seq("items");

    dev.power_cut(vfs);
    dev.boot(broker, clk);

    // The cut may undo commits, but only ones that no replica has seen: the master's head
    // is never behind what the replica has applied.
    stream_status ss;
    REQUIRE_FALSE(d.r->status("items", ss));
    const std::uint64_t head_after = dev.m->head_seq("items");
    INFO("cut " << c << ": head before " << head_before << ", after " << head_after
                << ", replica checkpoint " << ss.checkpoint);
    CHECK(ss.checkpoint <= head_after);
    if (ss.checkpoint > head_after)
      max_replica_ahead = std::max(max_replica_ahead, ss.checkpoint - head_after);
    undone_unpublished += head_before - head_after;
  }

  // Drain: the replica equals the master, and its checkpoint is the master's head.
  write(10);
  committed += 10;
  const bool same = drain(dev, broker, d, clk);
  const auto rs = d.r->stats();
  std::printf(
      "power cuts: %d (seed %llu): %llu transactions committed, %llu events undone by cuts "
      "before publishing, replica ahead of master after a cut: %llu, applied %llu, duplicates "
      "%llu, gaps repaired %llu, WAL/db syncs %llu, unsynced bytes lost %llu; replica equals "
      "master: %s\n",
      cuts, static_cast<unsigned long long>(seed), static_cast<unsigned long long>(committed),
      static_cast<unsigned long long>(undone_unpublished),
      static_cast<unsigned long long>(max_replica_ahead),
      static_cast<unsigned long long>(rs.events_applied),
      static_cast<unsigned long long>(rs.duplicates),
      static_cast<unsigned long long>(rs.gaps_repaired),
      static_cast<unsigned long long>(vfs.syncs()),
      static_cast<unsigned long long>(vfs.bytes_lost()), same ? "yes" : "NO");
  CHECK(same);
  d.shutdown();
  dev.shutdown();
}

TEST_CASE("power cut: with master::open every commit that returned survives, with its events") {
  lossy_vfs vfs;
  temp_dir dir("power-open");
  const std::string path = dir.file("device.db");
  fake_clock clk;
  loopback::broker broker(3, &clk);
  std::int64_t returned = 0;
  std::uint64_t head = 0;
  exec_file(path, "CREATE TABLE readings(id INTEGER PRIMARY KEY, v REAL)");
  for (int boot = 0; boot < 3; ++boot) {
    auto client = broker.make_client("master", 64);
    std::unique_ptr<master> m;
    REQUIRE_FALSE(master::open(path, master_config{}, client.get(), m, clk));
    REQUIRE_FALSE(m->register_table(stream_of("readings")));
    CHECK(m->head_seq("readings") == head);  // every event of every returned commit is there
    for (int i = 0; i < 50; ++i) {
      REQUIRE_FALSE(m->transaction(
          [](sqlite3* c) { return run_sql(c, "INSERT INTO readings(v) VALUES(1.5)"); }));
      ++returned;
    }
    head = m->head_seq("readings");
    CHECK(head == static_cast<std::uint64_t>(returned));
    vfs.cut(path);
    m.reset();
    client.reset();
    vfs.restore();
    std::remove((path + "-shm").c_str());
  }
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  CHECK(count(db, "SELECT count(*) FROM readings") == returned);
  sqlite3_close(db);
}

TEST_CASE("power cut on the replica: what the cut undid is repaired from the master") {
  // The master is on a disk that never loses power here (its path is never cut).
  seeded_run run("power-replica", 11);
  auto& [vfs, dir, seed, rng, clk, broker, dev, d] = run;

  d.boot(broker, clk);
  // Installed long ago: the replica's schema is on disk.
  exec_file(d.path, "PRAGMA wal_checkpoint(TRUNCATE)");

  std::uint64_t committed = 0, gaps_repaired = 0, resyncs = 0, applied = 0;
  const int cuts = cuts_from_env();
  for (int c = 0; c < cuts; ++c) {
    int rounds = 5 + static_cast<int>(rng() % 20);
    for (int i = 0; i < rounds; ++i) {
      long long k = static_cast<long long>(rng() % 40), v = static_cast<long long>(rng() % 1000);
      dev.write(upsert(k, v));
      ++committed;
      step(dev, broker, d, clk);
    }
    // The replica applied and acknowledged these; the cut may undo them on its disk.
    auto s = d.r->stats();
    gaps_repaired += s.gaps_repaired;
    resyncs += s.resyncs_completed;
    applied += s.events_applied;
    vfs.cut(d.path);
    d.shutdown();
    vfs.restore();
    std::remove((d.path + "-shm").c_str());
    d.boot(broker, clk);
  }
  const bool same = drain(dev, broker, d, clk);
  auto s = d.r->stats();
  std::printf(
      "replica power cuts: %d (seed %llu): %llu transactions, applied %llu, gaps repaired %llu, "
      "re-syncs %llu, unsynced bytes lost %llu; replica equals master: %s\n",
      cuts, static_cast<unsigned long long>(seed), static_cast<unsigned long long>(committed),
      static_cast<unsigned long long>(applied + s.events_applied),
      static_cast<unsigned long long>(gaps_repaired + s.gaps_repaired),
      static_cast<unsigned long long>(resyncs + s.resyncs_completed),
      static_cast<unsigned long long>(vfs.bytes_lost()), same ? "yes" : "NO");
  CHECK(vfs.bytes_lost() > 0);  // the cuts did undo applied events
  CHECK(same);
  d.shutdown();
  dev.shutdown();
}

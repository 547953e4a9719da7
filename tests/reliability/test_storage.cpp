// Storage faults (issue 7): SQLITE_FULL (a size-limited database, PRAGMA max_page_count) and
// SQLITE_BUSY (another connection holding the write lock) on the master and on the replica.
// The real master and replica on files, over the deterministic loopback broker (no mosquitto:
// unit label, runs under the sanitizers). Each case checks: the failing write reports a clear
// error (errc + a message naming the problem) or waits per the busy policy; nothing committed is
// lost; nothing that did not commit is published or applied; the replica never acknowledges or
// dead-letters an event it could not store; and once space (or the lock) returns the backlog
// drains and replica == master. Policy: tests/reliability/README.md "Storage faults".
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace std::chrono_literals;

namespace {

const char* const ddl =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB);";

std::string rows_of(sqlite3* db) {
  std::string out;
  sqlite3_stmt* q = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT id, name, hex(payload) FROM items ORDER BY id", -1, &q,
                             nullptr) == SQLITE_OK);
  while (sqlite3_step(q) == SQLITE_ROW) {
    out += std::to_string(sqlite3_column_int64(q, 0)) + "|";
    out += reinterpret_cast<const char*>(sqlite3_column_text(q, 1));
    out += "|";
    const unsigned char* p = sqlite3_column_text(q, 2);
    out += p ? std::to_string(std::string(reinterpret_cast<const char*>(p)).size()) : "-";
    out += "\n";
  }
  sqlite3_finalize(q);
  return out;
}

long long scalar(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* q = nullptr;
  long long v = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) == SQLITE_OK &&
      sqlite3_step(q) == SQLITE_ROW)
    v = sqlite3_column_int64(q, 0);
  sqlite3_finalize(q);
  return v;
}

bool has_id(sqlite3* db, long long id) {
  return scalar(db, "SELECT count(*) FROM items WHERE id=" + std::to_string(id)) == 1;
}

// Another process's connection holding the write lock (BEGIN IMMEDIATE) until release().
struct writer_lock {
  sqlite3* db = nullptr;
  explicit writer_lock(const std::string& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  void release() {
    if (db) {
      sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      sqlite3_close(db);
      db = nullptr;
    }
  }
  ~writer_lock() { release(); }
};

// Master (master::open, the library's own connection: WAL, busy timeout 5 s) and replica
// (replica::open over the test's connection so the test can limit its size) on files in a
// temporary directory, joined by the loopback broker.
class rig {
 public:
  explicit rig(bool replica_owns_db = false) : broker_(7, &clk_) {
    test::exec_file(mpath(), ddl);
    test::exec_file(rpath(), ddl);
    pub_ = broker_.make_client("master", 64);
    master_config cfg;
    cfg.heartbeat_interval_ms = 500;
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 400;
    REQUIRE_FALSE(master::open(mpath(), cfg, pub_.get(), m_, clk_));
    REQUIRE_FALSE(m_->register_table(test::stream_of("items")));
    owns_ = replica_owns_db;
    start_replica();
  }
  ~rig() {
    r_.reset();
    if (rdb_) sqlite3_close(rdb_);
    m_.reset();
  }

  std::string mpath() const { return dir_.file("master.db"); }
  std::string rpath() const { return dir_.file("replica.db"); }
  master& m() { return *m_; }
  replica& r() { return *r_; }
  sqlite3* rdb() { return rdb_; }  // null when the replica owns its connection
  fake_clock& clk() { return clk_; }

  void start_replica() {
    r_.reset();
    sub_.reset();
    if (rdb_) sqlite3_close(rdb_);
    rdb_ = nullptr;
    sub_ = broker_.make_client("replica", 64);
    replica_options ro;
    ro.name = "r1";
    ro.time = &clk_;
    ro.reorder_window_ms = 200;
    ro.request_backoff_initial_ms = 200;
    ro.request_backoff_max_ms = 1000;
    ro.retry_initial_ms = 100;
    ro.retry_max_ms = 400;
    ro.max_retries = 3;  // small on purpose: a storage fault must not use these up
    if (owns_) {
      REQUIRE_FALSE(replica::open(rpath(), ro, r_));
    } else {
      REQUIRE(sqlite3_open(rpath().c_str(), &rdb_) == SQLITE_OK);
      sqlite3_busy_timeout(rdb_, 5000);
      sqlite3_exec(rdb_, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr);
      REQUIRE_FALSE(replica::open(rdb_, ro, r_));
    }
    REQUIRE_FALSE(r_->register_table("items", test::into_table("items")));
    REQUIRE_FALSE(r_->attach(*sub_));
  }

  // One publisher / broker / replica round (errors are read from the stats afterwards).
  void step() {
    (void)m_->poll();
    broker_.pump_all();
    (void)r_->poll();
    broker_.pump_all();
    clk_.advance(100);
  }

  // Delivers what the broker holds (to the replica; acknowledgements to the master).
  void step_broker() { broker_.pump_all(); }

  // Writes `n` rows with a `blob`-byte payload in one transaction through the API.
  std::error_code write(long long first_id, int n, int blob = 64) {
    return m_->transaction([&](sqlite3* db) -> std::error_code {
      for (int i = 0; i < n; ++i) {
        const std::string sql = "INSERT INTO items VALUES(" + std::to_string(first_id + i) +
                                ", 'n" + std::to_string(first_id + i) + "', randomblob(" +
                                std::to_string(blob) + "))";
        if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK)
          return make_error_code(errc::sqlite_error);
      }
      return std::error_code{};
    });
  }

  bool replica_equals_master() {
    sqlite3* a = nullptr;
    sqlite3* b = nullptr;
    REQUIRE(sqlite3_open(mpath().c_str(), &a) == SQLITE_OK);
    REQUIRE(sqlite3_open(rpath().c_str(), &b) == SQLITE_OK);
    sqlite3_busy_timeout(a, 2000);
    sqlite3_busy_timeout(b, 2000);
    const bool same = rows_of(a) == rows_of(b) && !rows_of(a).empty();
    sqlite3_close(a);
    sqlite3_close(b);
    return same;
  }

  // Drains: rounds until replica == master, the replica's checkpoint is the master's head and
  // the outbox is empty (bounded).
  bool drain(int rounds = 600) {
    for (int i = 0; i < rounds; ++i) {
      step();
      if (i % 10 != 9) continue;
      stream_status ss;
      if (r_->status("items", ss)) continue;
      if (ss.checkpoint == m_->head_seq("items") && ss.seen_ranges == 0 &&
          m_->stats().records_pending == 0 && replica_equals_master())
        return true;
    }
    return false;
  }

 private:
  edgecqrs::test::temp_dir dir_{"storage"};
  fake_clock clk_;
  loopback::broker broker_;
  std::unique_ptr<loopback::client> pub_, sub_;
  std::unique_ptr<master> m_;
  std::unique_ptr<replica> r_;
  sqlite3* rdb_ = nullptr;
  bool owns_ = false;
};

std::size_t dead_letters(replica& r) {
  std::size_t n = 0;
  REQUIRE_FALSE(r.dead_letter_count(n));
  return n;
}

void limit_pages(sqlite3* db, long long extra) {
  const long long pages = scalar(db, "PRAGMA page_count");
  REQUIRE(pages > 0);
  REQUIRE(scalar(db, "PRAGMA max_page_count=" + std::to_string(pages + extra)) == pages + extra);
}

void unlimit_pages(sqlite3* db) { REQUIRE(scalar(db, "PRAGMA max_page_count=1000000") == 1000000); }

}  // namespace

TEST_CASE("master: SQLITE_FULL refuses the commit, publishes nothing of it, recovers") {
  rig g;
  REQUIRE_FALSE(g.write(1, 5));
  REQUIRE(g.drain());
  // A few pages of headroom: transactions of 1 KiB rows fill them within a few commits.
  limit_pages(g.m().db(), 6);
  std::vector<long long> committed, refused;
  long long id = 100;
  for (int i = 0; i < 60 && refused.size() < 5; ++i, id += 4) {
    const auto ec = g.write(id, 4, 1000);
    if (ec) {
      refused.push_back(id);
      INFO("commit refusal: " << ec.message() << ": " << g.m().last_error_message());
      CHECK(ec == errc::sqlite_error);
      CHECK(g.m().last_error_message().find("full") != std::string::npos);
    } else {
      committed.push_back(id);
    }
    g.step();
  }
  REQUIRE_FALSE(refused.empty());
  std::printf("[storage] master SQLITE_FULL: %zu transactions committed, %zu refused (\"%s\")\n",
              committed.size(), refused.size(), g.m().last_error_message().c_str());
  const auto head_full = g.m().head_seq("items");
  for (long long r : refused)
    for (int k = 0; k < 4; ++k) CHECK_FALSE(has_id(g.m().db(), r + k));  // rolled back whole
  // Nothing of a refused transaction reaches the replica (it drains what did commit).
  REQUIRE(g.drain());
  for (long long r : refused) {
    sqlite3* rdb = g.rdb();
    for (int k = 0; k < 4; ++k) CHECK_FALSE(has_id(rdb, r + k));
  }
  // Space returns: new commits succeed, the stream has no hole (seqs continue), all drains.
  unlimit_pages(g.m().db());
  REQUIRE_FALSE(g.write(10000, 20, 1000));
  CHECK(g.m().head_seq("items") > head_full);
  REQUIRE(g.drain());
  CHECK(dead_letters(g.r()) == 0);
  CHECK(g.r().stats().dead_letters == 0);
}

TEST_CASE("master: a statement undone by its own failure inside a transaction publishes nothing") {
  rig g;
  REQUIRE_FALSE(g.write(1, 3));
  REQUIRE(g.drain());
  SUBCASE("constraint failure (statement rollback)") {
    // Rows 50 and 51 are inserted, then row 1 conflicts: the statement is undone as a whole
    // but the transaction stays open; the application carries on and commits.
    REQUIRE_FALSE(g.m().transaction([](sqlite3* db) -> std::error_code {
      CHECK(sqlite3_exec(db, "INSERT INTO items VALUES(50,'a',NULL),(51,'b',NULL),(1,'dup',NULL)",
                         nullptr, nullptr, nullptr) == SQLITE_CONSTRAINT);
      CHECK(sqlite3_exec(db, "UPDATE items SET name = CASE WHEN id=3 THEN NULL ELSE 'y' END",
                         nullptr, nullptr, nullptr) == SQLITE_CONSTRAINT);
      // Rows 1 and 2 are updated, then row 3 violates NOT NULL: the statement is undone.
      return std::error_code{};
    }));
  }
  SUBCASE("SQLITE_FULL in the middle of a statement") {
    limit_pages(g.m().db(), 8);
    REQUIRE_FALSE(g.m().transaction([](sqlite3* db) -> std::error_code {
      CHECK(sqlite3_exec(db, "UPDATE items SET name='kept' WHERE id=1", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
      CHECK(sqlite3_exec(db,
                         "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c"
                         " WHERE x < 64) INSERT INTO items SELECT 200+x, 'big',"
                         " randomblob(3000) FROM c",
                         nullptr, nullptr, nullptr) == SQLITE_FULL);
      return std::error_code{};
    }));
    unlimit_pages(g.m().db());
    CHECK_FALSE(has_id(g.m().db(), 201));
  }
  REQUIRE(g.drain());
  CHECK_FALSE(has_id(g.rdb(), 50));
  CHECK_FALSE(has_id(g.rdb(), 201));
  CHECK(dead_letters(g.r()) == 0);
}

TEST_CASE(
    "master: SQLITE_BUSY waits up to the busy timeout, then fails clearly, and acks it could not "
    "record are resent") {
  rig g;
  REQUIRE_FALSE(g.write(1, 3));
  REQUIRE(g.drain());
  {
    // Held 300 ms: begin() waits (busy timeout 5 s) and the transaction commits.
    auto lock = std::make_unique<writer_lock>(g.mpath());
    std::thread t([&] {
      std::this_thread::sleep_for(300ms);
      lock->release();
    });
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(g.write(10, 2));
    CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
    t.join();
  }
  {
    // Held longer than the busy timeout: begin() fails with a clear error, nothing is written.
    writer_lock lock(g.mpath());
    const auto t0 = std::chrono::steady_clock::now();
    const auto ec = g.write(20, 2);
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(ec == errc::sqlite_error);
    CHECK(g.m().last_error_message().find("locked") != std::string::npos);
    CHECK(waited >= 4500ms);
    std::printf("[storage] master SQLITE_BUSY: refused after %lld ms (\"%s\")\n",
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()),
                g.m().last_error_message().c_str());
  }
  CHECK_FALSE(has_id(g.m().db(), 20));
  REQUIRE(g.drain());
  CHECK_FALSE(has_id(g.rdb(), 20));
  {
    // The publisher records the broker's acknowledgements in the outbox: when that write meets
    // the lock (short busy timeout here), poll() reports it, the records stay pending and are
    // sent again (the replica skips the duplicates).
    sqlite3_busy_timeout(g.m().db(), 200);
    REQUIRE_FALSE(g.write(30, 3));
    REQUIRE_FALSE(g.m().poll());  // published
    g.step_broker();              // delivered, acknowledged to the publisher
    writer_lock lock(g.mpath());
    const auto ec = g.m().poll();
    CHECK(ec == errc::sqlite_error);
    CHECK(g.m().last_error_message().find("locked") != std::string::npos);
    CHECK(g.m().stats().records_pending > 0);
  }
  sqlite3_busy_timeout(g.m().db(), 5000);
  const auto dups = g.r().stats().duplicates;
  REQUIRE(g.drain());
  CHECK(g.m().stats().records_pending == 0);
  CHECK(g.r().stats().duplicates > dups);
  CHECK(has_id(g.rdb(), 32));
}

TEST_CASE(
    "replica: SQLITE_FULL is not acknowledged, not dead-lettered, repaired when space returns") {
  rig g;
  REQUIRE_FALSE(g.write(1, 5));
  REQUIRE(g.drain());
  limit_pages(g.rdb(), 4);
  const auto before = g.r().stats();
  // Messages that cannot all fit: some fail to commit on the replica.
  for (int i = 0; i < 12; ++i) {
    REQUIRE_FALSE(g.write(100 + i * 5, 5, 1500));
    g.step();
  }
  for (int i = 0; i < 20; ++i) g.step();
  const auto during = g.r().stats();
  INFO("replica last_error: " << g.r().last_error());
  CHECK(during.commit_failures > before.commit_failures);
  std::printf("[storage] replica SQLITE_FULL: %llu messages not committed (\"%s\")\n",
              static_cast<unsigned long long>(during.commit_failures - before.commit_failures),
              g.r().last_error().c_str());
  CHECK(g.r().last_error().find("full") != std::string::npos);
  // Not skipped: the checkpoint stays below the master's head, no dead letter, no retry.
  stream_status ss;
  REQUIRE_FALSE(g.r().status("items", ss));
  CHECK(ss.checkpoint < g.m().head_seq("items"));
  CHECK(dead_letters(g.r()) == 0);
  std::size_t pending = 0;
  REQUIRE_FALSE(g.r().pending_retries(pending));
  CHECK(pending == 0);
  // No partial apply: every message is all or nothing (rows come in groups of 5).
  for (int i = 0; i < 12; ++i) {
    const long long n =
        scalar(g.rdb(), "SELECT count(*) FROM items WHERE id BETWEEN " +
                            std::to_string(100 + i * 5) + " AND " + std::to_string(104 + i * 5));
    CHECK((n == 0 || n == 5));
  }
  // Space returns: gap repair brings the missing messages back; replica == master.
  unlimit_pages(g.rdb());
  REQUIRE(g.drain());
  CHECK(dead_letters(g.r()) == 0);
  CHECK(g.r().stats().dead_letters == 0);
}

TEST_CASE("replica: SQLITE_BUSY waits up to the busy timeout, then is repaired, not lost") {
  rig g(true);  // replica::open(path): the library's own connection and busy timeout (5 s)
  REQUIRE_FALSE(g.write(1, 3));
  REQUIRE(g.drain());
  {
    // Held 300 ms: the apply waits and commits.
    auto lock = std::make_unique<writer_lock>(g.rpath());
    std::thread t([&] {
      std::this_thread::sleep_for(300ms);
      lock->release();
    });
    REQUIRE_FALSE(g.write(10, 2));
    const auto t0 = std::chrono::steady_clock::now();
    g.step();
    CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
    t.join();
    stream_status ss;
    REQUIRE_FALSE(g.r().status("items", ss));
    CHECK(ss.checkpoint == g.m().head_seq("items"));
  }
  const auto before = g.r().stats();
  {
    // Held beyond the busy timeout: the message is not committed (and so not acknowledged as
    // applied); nothing is dead-lettered.
    writer_lock lock(g.rpath());
    REQUIRE_FALSE(g.write(20, 2));
    g.step();
  }
  const auto after = g.r().stats();
  CHECK(after.commit_failures > before.commit_failures);
  CHECK(g.r().last_error().find("locked") != std::string::npos);
  std::printf("[storage] replica SQLITE_BUSY: %llu messages not committed (\"%s\")\n",
              static_cast<unsigned long long>(after.commit_failures - before.commit_failures),
              g.r().last_error().c_str());
  CHECK(dead_letters(g.r()) == 0);
  REQUIRE(g.drain());
  CHECK(dead_letters(g.r()) == 0);
}

TEST_CASE("replica: SQLITE_FULL inside one event's apply does not use up its retries") {
  rig g;
  // Only the replica's database has a trigger that needs much space for one row: its apply
  // fails with SQLITE_FULL while a retry record (a few bytes) would still fit.
  REQUIRE(
      sqlite3_exec(g.rdb(),
                   "CREATE TABLE ballast(b BLOB); CREATE TRIGGER fat AFTER INSERT ON items"
                   " WHEN NEW.name = 'fat' BEGIN INSERT INTO ballast VALUES(randomblob(200000));"
                   " END",
                   nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE_FALSE(g.write(1, 3));
  REQUIRE(g.drain());
  limit_pages(g.rdb(), 10);
  REQUIRE_FALSE(g.m().transaction([](sqlite3* db) -> std::error_code {
    return sqlite3_exec(db, "INSERT INTO items VALUES(50, 'fat', NULL)", nullptr, nullptr,
                        nullptr) == SQLITE_OK
               ? std::error_code{}
               : make_error_code(errc::sqlite_error);
  }));
  // 6 s of (fake) time: far beyond max_retries = 3 at 100-400 ms backoff.
  for (int i = 0; i < 60; ++i) g.step();
  CHECK(g.r().stats().commit_failures > 0);
  CHECK(dead_letters(g.r()) == 0);
  std::size_t pending = 0;
  REQUIRE_FALSE(g.r().pending_retries(pending));
  CHECK(pending == 0);
  stream_status ss;
  REQUIRE_FALSE(g.r().status("items", ss));
  CHECK(ss.checkpoint < g.m().head_seq("items"));
  CHECK_FALSE(has_id(g.rdb(), 50));
  unlimit_pages(g.rdb());
  REQUIRE(g.drain());
  CHECK(has_id(g.rdb(), 50));
  CHECK(dead_letters(g.r()) == 0);
}

// Several replica objects (standing for worker processes: each has its own connection and its
// own in-memory state) on ONE replica database, with the same replica name, over the loopback
// broker: first contact at the same time, so both ask for a re-sync and both receive both
// sessions' parts (the direct topic is not shared), while the stream is split between them
// (shared subscription). One worker lags behind the other. After draining, the replica equals
// the master and no live row was removed by a re-sync.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

// A worker's inbox: the transport callback only queues (like a broker session queue for a busy
// process); the test decides when each worker handles its next message.
class queued_transport final : public transport {
 public:
  explicit queued_transport(transport& inner) : inner_(inner) {}
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options& o, publish_callback done) override {
    return inner_.publish(topic, data, size, o, std::move(done));
  }
  std::error_code subscribe(std::string_view filter, message_callback cb) override {
    auto shared = std::make_shared<message_callback>(std::move(cb));
    return inner_.subscribe(filter, [this, shared](const incoming_message& m) {
      inbox_.push_back({std::string(m.topic), bytes(m.data, m.data + m.size), shared});
    });
  }
  std::error_code unsubscribe(std::string_view filter) override {
    return inner_.unsubscribe(filter);
  }
  bool connected() const override { return inner_.connected(); }
  std::size_t max_in_flight() const override { return inner_.max_in_flight(); }

  // Handles up to n queued messages; returns how many.
  std::size_t handle(std::size_t n) {
    std::size_t done = 0;
    while (done < n && !inbox_.empty()) {
      auto next = std::move(inbox_.front());
      inbox_.pop_front();
      incoming_message m;
      m.topic = next.topic;
      m.data = next.data.data();
      m.size = next.data.size();
      (*next.cb)(m);
      ++done;
    }
    return done;
  }
  std::size_t queued() const { return inbox_.size(); }

 private:
  struct item {
    std::string topic;
    bytes data;
    std::shared_ptr<message_callback> cb;
  };
  transport& inner_;
  std::deque<item> inbox_;
};

const char* const ddl =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)";

}  // namespace

TEST_CASE(
    "two replica objects on one database: concurrent first-contact re-syncs remove no live row") {
  temp_dir dir("shareddb");
  const std::string path = dir.file("replica.db");
  fake_clock clk;
  loopback::broker broker(7, &clk);

  sqlite3* mdb = nullptr;
  REQUIRE(sqlite3_open(":memory:", &mdb) == SQLITE_OK);
  REQUIRE(sqlite3_exec(mdb, ddl, nullptr, nullptr, nullptr) == SQLITE_OK);
  auto pub = broker.make_client("master", 64);
  master_config cfg;
  cfg.heartbeat_interval_ms = 1000;
  cfg.max_record_events = 10;  // re-sync answers of many parts
  std::unique_ptr<master> m;
  REQUIRE_FALSE(master::attach(mdb, cfg, pub.get(), m, clk));
  REQUIRE_FALSE(m->register_table(stream_of("items")));
  auto write = [&](const std::string& sql) {
    REQUIRE_FALSE(m->transaction([&](sqlite3* db) -> std::error_code {
      return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
                 ? std::error_code{}
                 : make_error_code(errc::sqlite_error);
    }));
  };
  for (int i = 0; i < 300; ++i)
    write("INSERT INTO items VALUES(" + std::to_string(i) + ", 'n" + std::to_string(i) + "', " +
          std::to_string(i) + ")");
  for (int i = 0; i < 50; ++i) {
    REQUIRE_FALSE(m->poll());
    broker.pump_all();
  }

  exec_file(path, ddl);
  struct worker {
    std::unique_ptr<loopback::client> client;
    std::unique_ptr<queued_transport> tp;
    std::unique_ptr<replica> r;
  };
  std::vector<worker> w(2);
  for (int i = 0; i < 2; ++i) {
    w[i].client = broker.make_client("worker-" + std::to_string(i + 1), 64);
    w[i].tp = std::make_unique<queued_transport>(*w[i].client);
    replica_options ro;
    ro.name = "gw";
    ro.shared_group = "gw";
    ro.time = &clk;
    ro.reorder_window_ms = 300;
    ro.request_backoff_initial_ms = 200;
    ro.request_backoff_max_ms = 2000;
    REQUIRE_FALSE(replica::open(path, ro, w[i].r));
    REQUIRE_FALSE(w[i].r->register_table("items", into_table("items")));
  }
  // Both subscribed before anything is delivered: both see the retained schema as their
  // first contact (each object used to ask for its own bootstrap re-sync; the first contact is
  // now decided in the database, so only one of them does), and an operator asks worker 1 for
  // a re-sync while that session runs: two sessions run at once either way. (The master answers
  // one re-sync per requester and stream at a time: the operator's request comes once the
  // broker acknowledged the first answer, before the workers applied it.)
  for (auto& x : w) REQUIRE_FALSE(x.r->attach(*x.tp));

  // Worker 2 handles three messages for each one of worker 1, and the master keeps writing
  // (updates and inserts, no deletes: every replica row stays live).
  int next_id = 300;
  for (int round = 0; round < 400; ++round) {
    if (round == 20) REQUIRE_FALSE(w[0].r->request_resync("items"));
    REQUIRE_FALSE(m->poll());
    broker.pump(4);
    w[1].tp->handle(3);
    w[0].tp->handle(1);
    if (round % 5 == 0) REQUIRE_FALSE(w[0].r->poll());
    if (round % 5 == 2) REQUIRE_FALSE(w[1].r->poll());
    if (round % 7 == 0) write("UPDATE items SET qty=qty+1 WHERE id=" + std::to_string(round % 300));
    if (round % 11 == 0) {
      write("INSERT INTO items VALUES(" + std::to_string(next_id) + ", 'x', 1)");
      ++next_id;
    }
    clk.advance(10);
  }
  // Drain: everything delivered and handled, timers given time to repair gaps.
  for (int i = 0; i < 200; ++i) {
    REQUIRE_FALSE(m->poll());
    broker.pump_all();
    w[1].tp->handle(SIZE_MAX);
    w[0].tp->handle(SIZE_MAX);
    REQUIRE_FALSE(w[0].r->poll());
    REQUIRE_FALSE(w[1].r->poll());
    broker.pump_all();
    w[1].tp->handle(SIZE_MAX);
    w[0].tp->handle(SIZE_MAX);
    clk.advance(250);
  }

  sqlite3* rdb = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &rdb) == SQLITE_OK);
  const auto master_rows = dump(mdb, "SELECT id, name, qty FROM items ORDER BY id");
  const auto replica_rows = dump(rdb, "SELECT id, name, qty FROM items ORDER BY id");
  CHECK(master_rows.size() == static_cast<std::size_t>(next_id));
  CHECK(replica_rows.size() == master_rows.size());
  CHECK(replica_rows == master_rows);
  CHECK(one(rdb, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "0");
  const auto s0 = w[0].r->stats(), s1 = w[1].r->stats();
  MESSAGE("resync requests " << s0.resync_requests << " + " << s1.resync_requests << ", completed "
                             << s0.resyncs_completed << " + " << s1.resyncs_completed
                             << ", ignored " << s0.ignored << " + " << s1.ignored);
  CHECK(s0.resync_requests + s1.resync_requests >= 2);  // two sessions: the race was on
  // The other object's copies of the parts (and any competing session) were not applied again.
  CHECK(s0.ignored + s1.ignored + s0.resync_parts_rejected + s1.resync_parts_rejected > 0);
  CHECK(s0.resyncs_completed + s1.resyncs_completed >= 1);
  CHECK(s0.rows_removed_by_resync + s1.rows_removed_by_resync == 0);
  stream_status st0, st1;
  REQUIRE_FALSE(w[0].r->status("items", st0));
  REQUIRE_FALSE(w[1].r->status("items", st1));
  CHECK_FALSE(st0.resync_pending);
  CHECK_FALSE(st1.resync_pending);
  sqlite3_close(rdb);
  for (auto& x : w) x.r.reset();
  m.reset();
  sqlite3_close(mdb);
}

// Re-sync sessions and the request loops around them, attacked: forged and replayed session
// answers, wants lost by a restart, implausible seqs that would start endless re-sync loops
// (docs/replication.md §3, §4). Unit cases hand messages to replica::on_message (fake clock);
// the others run the real master over the loopback broker.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "replica_unit.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

// One replica on a recording transport; re-sync requests are answered by the test.
struct unit : replica_unit {
  std::uint64_t requests = 0;  // re-sync requests seen by answer_requests

  explicit unit(const char* name = "gw1") : replica_unit("resync", items_ddl, name) {
    REQUIRE(sqlite3_exec(db, "PRAGMA synchronous=OFF", nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  // The session id a master answering `c` uses (random when the request carries no nonce).
  std::uint64_t session_of(const control_request& c) const {
    return c.from_seq ? c.from_seq : 7700 + requests;
  }
  // A one-part session answering request `c`.
  message part(const control_request& c, std::uint64_t upto, std::vector<event> evs) {
    message m = msg(sch, 0, std::move(evs));
    m.has_resync = true;
    m.resync = {session_of(c), upto, 0, true};
    return m;
  }
  // Answers every re-sync request sent so far with one part carrying `evs`, as of `upto`.
  void answer_requests(std::uint64_t upto, const std::vector<event>& evs) {
    for (const auto& c : tp.take_controls()) {
      if (c.op != control_op::resync) continue;
      ++requests;
      CHECK_FALSE(send_direct(part(c, upto, evs)));
    }
  }
  // Schema known and the initial re-sync answered; rows 1..3 arrive by stream seqs 1..3.
  void ready() {
    CHECK_FALSE(deliver("edgecqrs/v1/s/items", encode(sch)));
    answer_requests(0, {});
    for (int i = 1; i <= 3; ++i)
      CHECK_FALSE(send(msg(sch, static_cast<std::uint64_t>(i), {save(1, {I(i), T("r"), I(i)})})));
    requests = 0;
  }
};

const std::vector<std::string> three_rows = {"1|'r'|1", "2|'r'|2", "3|'r'|3"};

}  // namespace

TEST_CASE("17.1: a forged re-sync completion on the direct topic removes nothing") {
  unit u("dash");
  u.open();
  u.ready();
  REQUIRE(u.rows() == three_rows);
  // [1, TAG, 0, [], {1: "dash", 3: [424242, 2**63-1, 0, True], 4: "dash"}]: a session nobody
  // asked for, claiming to have read the master at seq 2^63-1 and to carry no row.
  message forged = msg(u.sch, 0, {});
  forged.target = "dash";
  forged.reply_to = "dash";
  forged.has_resync = true;
  forged.resync = {424242, static_cast<std::uint64_t>(INT64_MAX), 0, true};
  const bytes b = encode(forged);
  CHECK(b.size() == 40);
  // Rejected at the entry (upto_seq at or above 2^53), dead-lettered, no state changed; a
  // plausible upto_seq of a session nobody asked for is ignored (next case and 16.2).
  CHECK(u.deliver("edgecqrs/v1/d/dash/items", b) == make_error_code(errc::integer_out_of_range));
  forged.resync = {424242, 1000, 0, true};
  CHECK_FALSE(u.deliver("edgecqrs/v1/d/dash/items", encode(forged)));
  CHECK(u.rows() == three_rows);
  CHECK(u.r->stats().rows_removed_by_resync == 0);
  stream_status ss = u.status();
  CHECK(ss.checkpoint == 3);
  CHECK(ss.head == 3);
  // A genuine re-sync asked for later still restores rows the stream missed.
  CHECK_FALSE(u.r->request_resync("items"));
  auto c = u.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK_FALSE(u.send_direct(u.part(c[0], 3,
                                   {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                    sync(1, {I(3), T("r"), I(3)}), sync(1, {I(4), T("x"), I(4)})})));
  CHECK(u.rows().size() == 4);
  CHECK(u.status().checkpoint == 3);
  CHECK_FALSE(u.status().resync_pending);
}

TEST_CASE("17.1: a session with the right nonce but an implausible upto_seq fails") {
  unit u;
  u.open();
  u.ready();
  const auto completed = u.r->stats().resyncs_completed;
  CHECK_FALSE(u.r->request_resync("items"));
  auto c = u.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].from_seq != 0);  // the request carries a nonce the answer must use
  // Beyond head + max_seq_ahead (2^32) but below the 2^53 bound every message is checked
  // against at the entry: the session logic itself must refuse it.
  CHECK_FALSE(u.send_direct(u.part(c[0], std::uint64_t{1} << 40, {})));
  CHECK(u.rows() == three_rows);  // no sweep
  stream_status ss = u.status();
  CHECK(ss.checkpoint == 3);  // no checkpoint move
  CHECK(ss.head == 3);
  CHECK(ss.resync_pending);  // still wanted
  CHECK(u.r->stats().resyncs_completed == completed);
  CHECK(u.r->stats().rows_removed_by_resync == 0);
  // Asked again at once (a first failure); the answer's upto_seq is beyond the head seen (as in
  // an initial load before any heartbeat): it completes, but the checkpoint never passes the
  // seqs the replica has seen.
  c = u.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK_FALSE(u.send_direct(u.part(c[0], 9, {sync(1, {I(1), T("r"), I(1)})})));
  CHECK(u.rows() == std::vector<std::string>{"1|'r'|1"});
  CHECK(u.status().checkpoint == 3);
  CHECK_FALSE(u.status().resync_pending);
}

TEST_CASE("17.3: one expired message at seq 2^62 starts no re-sync loop") {
  unit u;
  u.open();
  u.ready();
  message m = msg(u.sch, std::uint64_t{1} << 62, {save(1, {I(9), T("x"), I(9)})});
  m.expires_ms = 1000;
  CHECK(u.send(m));  // rejected (dead letter)
  // One minute of polling at 100 ms, every request answered at once by a session as of the
  // master's real head (3).
  for (int i = 0; i < 600; ++i) {
    u.clk.advance(100);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                          sync(1, {I(3), T("r"), I(3)})});
  }
  CHECK(u.requests == 0);
  CHECK_FALSE(u.status().resync_pending);
  CHECK(u.status().head == 3);
  // Nor after a restart.
  u.open();
  for (int i = 0; i < 100; ++i) {
    u.clk.advance(100);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, {});
  }
  CHECK(u.requests == 0);
}

TEST_CASE("17.3: an expired message no session can reach asks once, then backs off") {
  unit u;
  u.open();
  u.ready();
  // Plausible seq, but beyond anything the master produced: no session's upto_seq reaches it.
  message m = msg(u.sch, 1000, {save(1, {I(9), T("x"), I(9)})});
  m.expires_ms = 1000;
  CHECK(u.send(m) == make_error_code(errc::expired));
  const std::vector<event> all = {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                  sync(1, {I(3), T("r"), I(3)})};
  u.answer_requests(3, all);
  CHECK(u.requests == 1);
  for (int i = 0; i < 600; ++i) {
    u.clk.advance(100);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, all);
  }
  CHECK(u.requests == 1);  // the session asked for after the expired message satisfied it
  CHECK_FALSE(u.status().resync_pending);
}

TEST_CASE("17.4: far-away seq ranges are rejected and start no re-sync loop") {
  unit u;
  u.open();
  u.ready();
  std::size_t rejected = 0;
  for (std::uint64_t k = 0; k < 260; ++k) {
    if (u.send(msg(u.sch, (std::uint64_t{1} << 41) + 2 * k, {save(1, {I(100), T("f"), I(1)})})))
      ++rejected;
    u.answer_requests(3, {});
  }
  CHECK(rejected == 260);
  CHECK(u.status().seen_ranges == 0);
  CHECK(u.status().head == 3);
  for (int i = 0; i < 600; ++i) {
    u.clk.advance(100);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, {});
  }
  CHECK(u.requests == 0);
  CHECK(u.rows() == three_rows);
}

TEST_CASE("17.4: a full seen-range set keeps at most one re-sync in flight, with backoff") {
  unit u;
  u.open();
  u.ready();
  const std::vector<event> all = {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                  sync(1, {I(3), T("r"), I(3)})};
  // Plausible seqs (within max_seq_ahead) that no master fills: 260 isolated ranges.
  for (std::uint64_t k = 0; k < 260; ++k) {
    CHECK_FALSE(u.send(msg(u.sch, 1000 + 2 * k, {save(1, {I(100), T("f"), I(1)})})));
    u.answer_requests(3, all);
  }
  // Two minutes: a stream message every 500 ms keeps the set full; every request is answered at
  // once. The backoff (10 s, 20 s, 40 s, 60 s, ...) bounds the requests.
  for (std::uint64_t i = 0; i < 240; ++i) {
    u.clk.advance(500);
    CHECK_FALSE(u.send(msg(u.sch, 2000 + 2 * i, {save(1, {I(100), T("f"), I(1)})})));
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, all);
  }
  CHECK(u.requests >= 1);
  CHECK(u.requests <= 6);
  // A restart loop does not ask faster either.
  const auto before = u.requests;
  for (int i = 0; i < 50; ++i) {
    u.open();
    u.clk.advance(100);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, all);
  }
  CHECK(u.requests - before <= 1);
}

// ---- the real master over the loopback broker ----

namespace {

// Passes everything through and keeps a copy of each message on the direct topic.
class tap_transport final : public transport {
 public:
  explicit tap_transport(transport& inner) : inner_(inner) {}
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options& o, publish_callback done) override {
    return inner_.publish(topic, data, size, o, std::move(done));
  }
  std::error_code subscribe(std::string_view filter, message_callback cb) override {
    std::string f(filter);
    return inner_.subscribe(filter, [this, f, cb](const incoming_message& m) {
      if (f.find("/d/") != std::string::npos)
        direct.push_back({std::string(m.topic), bytes(m.data, m.data + m.size)});
      cb(m);
    });
  }
  std::error_code unsubscribe(std::string_view filter) override {
    return inner_.unsubscribe(filter);
  }
  bool connected() const override { return inner_.connected(); }
  std::size_t max_in_flight() const override { return inner_.max_in_flight(); }
  std::vector<recording_transport::published> direct;

 private:
  transport& inner_;
};

struct live {
  temp_dir dir{"resync-live"};
  std::string path = dir.file("replica.db");
  fake_clock clk;
  loopback::broker broker{11, &clk};
  sqlite3* mdb = nullptr;
  std::unique_ptr<loopback::client> pub, sub;
  std::unique_ptr<master> m;
  std::unique_ptr<tap_transport> tap;
  std::unique_ptr<replica> r;

  live() {
    REQUIRE(sqlite3_open(":memory:", &mdb) == SQLITE_OK);
    REQUIRE(sqlite3_exec(mdb, items_ddl, nullptr, nullptr, nullptr) == SQLITE_OK);
    pub = broker.make_client("master", 64);
    exec_file(path, items_ddl);
  }
  ~live() {
    r.reset();
    tap.reset();
    sub.reset();
    m.reset();
    sqlite3_close(mdb);
  }
  void start_master(std::size_t keep = 1000) {
    master_config cfg;
    cfg.heartbeat_interval_ms = 1000;
    cfg.max_record_events = 10;
    cfg.replay_keep_records = keep;
    REQUIRE_FALSE(master::attach(mdb, cfg, pub.get(), m, clk));
    REQUIRE_FALSE(m->register_table(stream_of("items")));
  }
  void start_replica(transport* t = nullptr) {
    r.reset();
    tap.reset();
    sub = broker.make_client("r1", 64);
    tap = std::make_unique<tap_transport>(*sub);
    replica_options ro;
    ro.name = "r1";
    ro.time = &clk;
    ro.reorder_window_ms = 300;
    ro.request_backoff_initial_ms = 200;
    ro.request_backoff_max_ms = 2000;
    REQUIRE_FALSE(replica::open(path, ro, r));
    REQUIRE_FALSE(r->register_table("items", into_table("items")));
    REQUIRE_FALSE(r->attach(t ? *t : *tap));
  }
  void write(const std::string& sql) {
    REQUIRE_FALSE(m->transaction([&](sqlite3* db) -> std::error_code {
      return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
                 ? std::error_code{}
                 : make_error_code(errc::sqlite_error);
    }));
  }
  void insert(int from, int to) {
    for (int i = from; i < to; ++i)
      write("INSERT INTO items VALUES(" + std::to_string(i) + ", 'n', " + std::to_string(i) + ")");
  }
  void run(int ms) {
    for (int t = 0; t < ms; t += 100) {
      if (m) CHECK_FALSE(m->poll());
      if (r) CHECK_FALSE(r->poll());
      broker.pump_all();
      clk.advance(100);
    }
  }
  std::vector<std::string> master_rows() {
    return dump(mdb, "SELECT id, name, qty FROM items ORDER BY id");
  }
  std::vector<std::string> replica_rows() {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    auto rows = dump(db, "SELECT id, name, qty FROM items ORDER BY id");
    sqlite3_close(db);
    return rows;
  }
};

}  // namespace

TEST_CASE("16.2: an old re-sync session redelivered after a newer one completed removes nothing") {
  live l;
  l.start_master(5);  // replays of more than a few records become re-syncs
  l.insert(0, 100);
  l.run(2000);
  l.start_replica();
  l.run(5000);  // first contact: session 1 (100 rows)
  REQUIRE(l.replica_rows() == l.master_rows());
  REQUIRE(l.r->stats().resyncs_completed == 1);
  const auto old_session = l.tap->direct;  // the broker snapshot keeps these
  REQUIRE_FALSE(old_session.empty());
  // The replica is away while 100 more rows are written (the stream copies are gone: a small
  // replay window), then an operator re-sync brings them (session 2 carries them, seq 0).
  l.r.reset();
  l.tap.reset();
  l.sub.reset();
  l.insert(100, 200);
  l.run(3000);
  l.start_replica();
  CHECK_FALSE(l.r->request_resync("items"));
  l.run(5000);
  REQUIRE(l.master_rows().size() == 200);
  REQUIRE(l.replica_rows() == l.master_rows());
  // The broker, restored from a snapshot, redelivers session 1.
  for (const auto& p : old_session)
    CHECK_FALSE(l.r->on_message(p.topic, p.data.data(), p.data.size()));
  CHECK(l.replica_rows() == l.master_rows());
  l.run(5000);
  CHECK(l.replica_rows() == l.master_rows());
}

TEST_CASE("16.4: a replica restarted before its first re-sync completes asks again") {
  live l;
  // Rows written before the master registered the table: only a re-sync carries them.
  REQUIRE(sqlite3_exec(l.mdb, "INSERT INTO items VALUES(1, 'early', 1), (2, 'early', 2)", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  l.start_master();
  l.insert(10, 15);
  l.run(2000);
  // First life: the schema arrives, the re-sync request never reaches the master (the replica
  // stops before publishing it), e.g. a power cut.
  recording_transport dead_end;
  l.start_replica(&dead_end);
  std::string schema_bytes;
  REQUIRE(l.broker.retained("edgecqrs/v1/s/items", schema_bytes));
  CHECK_FALSE(l.r->on_message("edgecqrs/v1/s/items",
                              reinterpret_cast<const std::uint8_t*>(schema_bytes.data()),
                              schema_bytes.size()));
  CHECK(dead_end.take_controls().size() == 1);
  // Second life on the broker.
  l.start_replica();
  l.run(30000);
  CHECK(l.replica_rows() == l.master_rows());
  CHECK(l.master_rows().size() == 7);
}

TEST_CASE("a want stored before requests carried nonces is asked for once after the upgrade") {
  unit u;
  u.open();
  u.ready();
  u.r.reset();
  // As a replica of the previous release left it: an expired message wanted upto_seq 1000.
  REQUIRE(sqlite3_exec(u.db,
                       "CREATE TABLE old(sid INTEGER PRIMARY KEY, cqrs_id TEXT UNIQUE NOT NULL,"
                       " incarnation BLOB, checkpoint INTEGER NOT NULL DEFAULT 0, head INTEGER"
                       " NOT NULL DEFAULT 0, seen BLOB, resync_session INTEGER NOT NULL DEFAULT 0,"
                       " resync_parts INTEGER NOT NULL DEFAULT 0, resync_at_ms INTEGER NOT NULL"
                       " DEFAULT 0, resync_done INTEGER NOT NULL DEFAULT 0, resync_done_upto"
                       " INTEGER NOT NULL DEFAULT 0, resync_skip BLOB, resync_want INTEGER NOT"
                       " NULL DEFAULT 0);"
                       "INSERT INTO old SELECT sid, cqrs_id, incarnation, checkpoint, head, seen,"
                       " resync_session, resync_parts, resync_at_ms, resync_done,"
                       " resync_done_upto, resync_skip, 1000 FROM edgecqrs_r_streams;"
                       "DROP TABLE edgecqrs_r_streams; ALTER TABLE old RENAME TO"
                       " edgecqrs_r_streams;",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  u.tp.sent.clear();
  u.open();
  CHECK(u.status().resync_pending);
  CHECK_FALSE(u.r->poll());
  u.answer_requests(3, {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                        sync(1, {I(3), T("r"), I(3)})});
  CHECK(u.requests == 1);
  CHECK_FALSE(u.status().resync_pending);
  for (int i = 0; i < 100; ++i) {
    u.clk.advance(1000);
    CHECK_FALSE(u.r->poll());
    u.answer_requests(3, {});
  }
  CHECK(u.requests == 1);
  CHECK(u.rows() == three_rows);
}

// Issue 16.3: an authoritative repair (request_resync(id, true)) always works.
namespace {

// Answers the re-sync requests sent so far that carry a nonce, returning them (to replay).
std::vector<control_request> resync_requests(recording_transport& tp) {
  std::vector<control_request> out;
  for (const auto& c : tp.take_controls())
    if (c.op == control_op::resync) out.push_back(c);
  return out;
}

}  // namespace

TEST_CASE("16.3: a wrongly tombstoned row stays deleted after a re-sync, an authoritative one "
          "restores it") {
  unit u;
  u.open();
  u.ready();
  // A forged delete at version 6 (the row is at version 1) through the normal path, and a
  // forged update of row 3 to version 9.
  CHECK_FALSE(u.send(msg(u.sch, 4, {del(6, {I(2)})})));
  CHECK_FALSE(u.send(msg(u.sch, 5, {save(9, {I(3), T("x"), I(99)})})));
  REQUIRE(u.rows() == std::vector<std::string>{"1|'r'|1", "3|'x'|99"});
  const std::vector<event> master = {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                     sync(1, {I(3), T("r"), I(3)})};
  // A normal re-sync completes and applies nothing over the tombstone or the higher version.
  CHECK_FALSE(u.r->request_resync("items"));
  u.answer_requests(5, master);
  CHECK(u.r->stats().resyncs_completed == 2);
  CHECK(u.rows() == std::vector<std::string>{"1|'r'|1", "3|'x'|99"});
  // The authoritative one: the master's rows win and take the master's versions.
  CHECK_FALSE(u.r->request_resync("items", true));
  u.answer_requests(5, master);
  CHECK(u.r->stats().resyncs_completed == 3);
  CHECK(u.rows() == three_rows);
  CHECK(u.r->stats().tombstones_cleared_by_resync == 1);
  CHECK(u.r->stats().rows_overwritten_by_resync == 1);
  CHECK(u.status().checkpoint == 5);
  // Later master writes at the master's versions apply (row 3 is at version 1 again).
  CHECK_FALSE(u.send(msg(u.sch, 6, {save(2, {I(3), T("m"), I(3)})})));
  CHECK(u.rows() == std::vector<std::string>{"1|'r'|1", "2|'r'|2", "3|'m'|3"});
  // The want is satisfied: nothing more is asked.
  u.clk.advance(600000);
  CHECK_FALSE(u.r->poll());
  CHECK(resync_requests(u.tp).empty());
}

TEST_CASE("16.3: after the master was restored from a backup only an authoritative re-sync "
          "completes") {
  unit u;
  u.open();
  CHECK_FALSE(u.deliver("edgecqrs/v1/s/items", encode(u.sch)));
  u.answer_requests(0, {});
  // Five rows at seqs 1..5; row 1 at version 3.
  CHECK_FALSE(u.send(msg(u.sch, 1, {save(3, {I(1), T("r"), I(1)})})));
  for (int i = 2; i <= 5; ++i)
    CHECK_FALSE(u.send(msg(u.sch, static_cast<std::uint64_t>(i), {save(1, {I(i), T("r"), I(i)})})));
  REQUIRE(u.rows().size() == 5);
  REQUIRE(u.status().checkpoint == 5);
  const auto done = u.r->stats().resyncs_completed;
  // The master database is replaced by an older copy (same incarnation): rows 1 and 2 at
  // version 1, head 2. A normal re-sync never completes (its answer reads less than the replica
  // had when asking).
  const std::vector<event> master = {sync(1, {I(1), T("b"), I(1)}), sync(1, {I(2), T("b"), I(2)})};
  CHECK_FALSE(u.r->request_resync("items"));
  u.answer_requests(2, master);
  CHECK(u.r->stats().resyncs_completed == done);
  CHECK(u.rows().size() == 5);
  u.clk.advance(600000);
  CHECK_FALSE(u.r->poll());
  u.answer_requests(2, master);
  CHECK(u.r->stats().resyncs_completed == done);
  // The authoritative one completes: exactly the master's rows, checkpoint and head at 2.
  CHECK_FALSE(u.r->request_resync("items", true));
  u.answer_requests(2, master);
  CHECK(u.r->stats().resyncs_completed == done + 1);
  CHECK(u.rows() == std::vector<std::string>{"1|'b'|1", "2|'b'|2"});
  CHECK(u.r->stats().rows_removed_by_resync == 3);
  CHECK(u.r->stats().rows_overwritten_by_resync == 1);
  CHECK(u.status().checkpoint == 2);
  CHECK(u.status().head == 2);
  // The master's next write (seq 3, row 1 at version 2) applies.
  CHECK_FALSE(u.send(msg(u.sch, 3, {save(2, {I(1), T("n"), I(7)})})));
  CHECK(u.rows() == std::vector<std::string>{"1|'n'|7", "2|'b'|2"});
  CHECK(u.status().checkpoint == 3);
  // Nothing is wanted any more (the older normal want was satisfied too).
  u.clk.advance(600000);
  CHECK_FALSE(u.r->poll());
  CHECK(resync_requests(u.tp).empty());
}

TEST_CASE("16.3: a forged or replayed session is never authoritative, the request survives a "
          "restart") {
  unit u;
  u.open();
  u.ready();
  CHECK_FALSE(u.send(msg(u.sch, 4, {del(6, {I(2)})})));
  const std::vector<event> master = {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                     sync(1, {I(3), T("r"), I(3)})};
  const std::vector<std::string> two = {"1|'r'|1", "3|'r'|3"};
  // A normal request, then the operator's authoritative one.
  CHECK_FALSE(u.r->request_resync("items"));
  auto normal = resync_requests(u.tp);
  REQUIRE(normal.size() == 1);
  CHECK_FALSE(u.r->request_resync("items", true));
  auto auth = resync_requests(u.tp);
  REQUIRE(auth.size() == 1);
  REQUIRE(auth[0].from_seq != normal[0].from_seq);
  // The answer to the normal request (asked before) is not authoritative.
  CHECK_FALSE(u.send_direct(u.part(normal[0], 4, master)));
  CHECK(u.rows() == two);
  // A forged session with the right shape (an unknown nonce) is rejected.
  control_request forged = auth[0];
  forged.from_seq = auth[0].from_seq ^ 0x5a5a;
  CHECK_FALSE(u.send_direct(u.part(forged, 4, master)));
  CHECK(u.rows() == two);
  CHECK(u.r->stats().tombstones_cleared_by_resync == 0);
  // A restart: the authoritative request (and its nonce) is persisted; its answer repairs.
  u.open();
  CHECK_FALSE(u.send_direct(u.part(auth[0], 4, master)));
  CHECK(u.rows() == three_rows);
  CHECK(u.r->stats().tombstones_cleared_by_resync == 1);
  // Another forged delete, then the completed authoritative session replayed: not applied.
  CHECK_FALSE(u.send(msg(u.sch, 5, {del(8, {I(2)})})));
  CHECK_FALSE(u.send_direct(u.part(auth[0], 5, master)));
  CHECK(u.rows() == two);
  CHECK(u.r->stats().tombstones_cleared_by_resync == 1);
}

TEST_CASE("16.3: a spoilt authoritative session is asked again authoritatively; a write that "
          "arrived by the stream meanwhile is kept") {
  unit u;
  u.open();
  u.ready();
  CHECK_FALSE(u.send(msg(u.sch, 4, {del(6, {I(2)})})));
  CHECK_FALSE(u.r->request_resync("items", true));
  auto first = resync_requests(u.tp);
  REQUIRE(first.size() == 1);
  // Part 0 is lost: the last part (1) spoils the run.
  message last = u.part(first[0], 4, {sync(1, {I(3), T("r"), I(3)})});
  last.resync.part = 1;
  CHECK_FALSE(u.send_direct(last));
  CHECK(u.rows() == std::vector<std::string>{"1|'r'|1", "3|'r'|3"});
  // Asked again at once, still authoritative. Meanwhile the master wrote row 9 (seq 5).
  CHECK_FALSE(u.r->poll());
  auto again = resync_requests(u.tp);
  REQUIRE(again.size() == 1);
  u.clk.advance(1000);
  CHECK_FALSE(u.send(msg(u.sch, 5, {save(1, {I(9), T("n"), I(9)})})));
  CHECK_FALSE(u.send_direct(u.part(again[0], 4,
                                   {sync(1, {I(1), T("r"), I(1)}), sync(1, {I(2), T("r"), I(2)}),
                                    sync(1, {I(3), T("r"), I(3)})})));
  CHECK(u.rows() == std::vector<std::string>{"1|'r'|1", "2|'r'|2", "3|'r'|3", "9|'n'|9"});
  CHECK(u.r->stats().tombstones_cleared_by_resync == 1);
  CHECK(u.r->stats().rows_removed_by_resync == 0);
}

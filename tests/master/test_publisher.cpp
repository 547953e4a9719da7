// Outbox policy, publisher window/backoff/acknowledgement, heartbeats, control answers, manual
// sync, dump, background thread.
#include <doctest/doctest.h>

#include <chrono>
#include <set>
#include <thread>

#include "edgecqrs/cbor_seq.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct pub_fixture : master_fixture {
  explicit pub_fixture(master_config cfg = {}, const std::string& path = ":memory:")
      : master_fixture(cfg, path) {
    add_table("CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER)", stream_of("t"));
  }
  void control(control_op op, const std::string& replica, std::uint64_t from = 0,
               std::uint64_t to = 0) {
    auto c = broker.make_client(replica);
    send_control(*c, op, replica, from, to);
    broker.pump_all();
  }
  std::vector<received> direct(const std::string& replica) const {
    std::vector<received> out;
    for (auto& r : got)
      if (r.topic == direct_topic(default_topic_prefix, replica, "t")) out.push_back(r);
    return out;
  }
};

}  // namespace

TEST_CASE("outbox full: the write is refused with outbox_full and rolled back") {
  master_config cfg;
  cfg.outbox_max_records = 3;  // the schema record takes one
  pub_fixture f(cfg);
  f.pub_client = nullptr;  // no transport: nothing drains
  f.m->set_transport(nullptr);
  f.insert(1);
  f.insert(2);
  CHECK(f.txn("INSERT INTO t VALUES(3, 3)") == errc::outbox_full);
  CHECK(f.count("SELECT count(*) FROM t") == 2);
  CHECK(f.m->stats().outbox_full_refusals == 1);
  CHECK(f.m->head_seq("t") == 2);
  // Once published and acknowledged, there is room again.
  f.pub_client = f.broker.make_client("master2", 100);
  f.m->set_transport(f.pub_client.get());
  f.drain();
  f.insert(3);
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("publisher joins consecutive records into one message") {
  pub_fixture f;
  for (int i = 1; i <= 5; ++i) f.insert(i);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.first_seq == 1);
  CHECK(f.got[0].msg.events.size() == 5);
  CHECK(f.m->stats().records_pending == 0);
}

TEST_CASE("publisher keeps its window and removes records only after the ack") {
  master_config cfg;
  cfg.window = 4;
  cfg.max_message_events = 1;  // one record per message, to count the window
  pub_fixture f(cfg);
  for (int i = 1; i <= 20; ++i) f.insert(i);
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.pub_client->in_flight() == 4);
  CHECK(f.m->stats().in_flight == 4);
  CHECK(f.m->stats().records_pending == 21);  // 20 events + schema, none acknowledged yet
  f.broker.pump_all();
  CHECK(f.m->stats().records_pending == 21);  // acks queued, not yet handled by poll
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.m->stats().records_pending == 17);
  CHECK(f.pub_client->in_flight() == 4);
  f.drain(50);
  CHECK(f.m->stats().records_pending == 0);
  auto sq = f.seqs("t");
  REQUIRE(sq.size() == 20);
  for (std::size_t i = 0; i < sq.size(); ++i) CHECK(sq[i] == i + 1);
}

TEST_CASE("publisher retries with exponential backoff, lost and failed acks are resent") {
  master_config cfg;
  cfg.backoff_initial_ms = 100;
  cfg.backoff_max_ms = 1000;
  cfg.heartbeat_interval_ms = 0;
  pub_fixture f(cfg);
  f.drain();
  f.clear();
  f.insert(1);
  f.broker.drop_next(1);
  REQUIRE_FALSE(f.m->poll());
  f.broker.pump_all();
  REQUIRE_FALSE(f.m->poll());  // failure seen: backoff 100 ms
  CHECK(f.m->stats().publish_failures == 1);
  CHECK(f.broker.queued() == 0);
  f.clk.advance(99);
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.broker.queued() == 0);
  f.clk.advance(1);
  f.broker.fail_ack_next(1);  // delivered, but the ack is lost: sent again after 200 ms
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.broker.queued() == 1);
  f.broker.pump_all();
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.m->stats().publish_failures == 2);
  CHECK(f.m->stats().records_pending == 1);
  f.clk.advance(199);
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.broker.queued() == 0);
  f.clk.advance(1);
  f.drain();
  CHECK(f.m->stats().records_pending == 0);
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 1});  // at-least-once: the duplicate
}

TEST_CASE("publisher under random faults delivers every seq, and acks only what arrived") {
  master_config cfg;
  cfg.backoff_initial_ms = 10;
  cfg.backoff_max_ms = 40;
  cfg.max_message_events = 3;
  cfg.heartbeat_interval_ms = 0;
  pub_fixture f(cfg);
  loopback::faults fl;
  fl.drop = 0.2;
  fl.fail_ack = 0.1;
  fl.duplicate = 0.1;
  fl.reorder = 0.2;
  f.broker.set_faults(fl);
  for (int i = 1; i <= 60; ++i) {
    f.insert(i);
    if (i % 7 == 0) {
      REQUIRE_FALSE(f.m->poll());
      f.broker.pump(2);
    }
  }
  for (int r = 0; r < 400 && f.m->stats().records_pending; ++r) {
    REQUIRE_FALSE(f.m->poll());
    f.broker.pump_all();
    f.clk.advance(20);
  }
  CHECK(f.m->stats().records_pending == 0);
  std::set<std::uint64_t> seen;
  for (auto s : f.seqs("t")) seen.insert(s);
  CHECK(seen.size() == 60);
  CHECK(*seen.begin() == 1);
  CHECK(*seen.rbegin() == 60);
  CHECK(f.m->stats().publish_failures > 0);
}

TEST_CASE("disconnected transport: records stay in the outbox until it is back") {
  pub_fixture f;
  f.broker.disconnect(*f.pub_client);
  f.insert(1);
  REQUIRE_FALSE(f.m->poll());
  CHECK(f.m->stats().records_pending == 2);
  f.broker.reconnect(*f.pub_client);
  f.clk.advance(60000);
  f.drain();
  CHECK(f.m->stats().records_pending == 0);
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1});
}

TEST_CASE("schema message is retained with the incarnation and tag") {
  pub_fixture f;
  f.drain();
  std::string payload;
  REQUIRE(f.broker.retained(schema_topic(default_topic_prefix, "t"), payload));
  schema s;
  REQUIRE_FALSE(
      decode_schema(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size(), s));
  schema mine;
  REQUIRE(f.m->schema_of("t", mine));
  CHECK(s.cqrs_id == "t");
  CHECK(s.schema_tag == mine.schema_tag);
  CHECK(s.schema_tag == compute_schema_tag(s));
  CHECK(s.incarnation == mine.incarnation);
  CHECK(s.columns.size() == 2);
  CHECK(s.pk == std::vector<std::uint32_t>{0});
  std::array<std::uint8_t, 16> zero{};
  CHECK(s.incarnation != zero);
  f.insert(1);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.schema_tag == s.schema_tag);
}

TEST_CASE("incarnation persists across reopen of the same database") {
  test::temp_dir d("inc");
  std::array<std::uint8_t, 16> first{};
  {
    pub_fixture f({}, d.file("m.db"));
    schema s;
    REQUIRE(f.m->schema_of("t", s));
    first = s.incarnation;
    f.insert(1);
  }
  master_fixture g({}, d.file("m.db"));
  REQUIRE_FALSE(g.m->register_table(stream_of("t")));
  schema s;
  REQUIRE(g.m->schema_of("t", s));
  CHECK(s.incarnation == first);
  CHECK(g.m->head_seq("t") == 1);
  REQUIRE_FALSE(g.txn("INSERT INTO t VALUES(2, 2)"));
  g.drain();
  CHECK(g.seqs("t") == std::vector<std::uint64_t>{1, 2});  // the pending one first
}

TEST_CASE("heartbeat: an empty message with seq = head + 1 when idle") {
  master_config cfg;
  cfg.heartbeat_interval_ms = 1000;
  pub_fixture f(cfg);
  f.insert(1);
  f.insert(2);
  f.drain();
  f.clear();
  f.clk.advance(999);
  f.drain();
  CHECK(f.got.empty());
  f.clk.advance(1);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.events.empty());
  CHECK(f.got[0].msg.first_seq == 3);
  CHECK(f.m->stats().heartbeats == 1);
}

TEST_CASE("control replay: kept records re-published to the direct topic, same seqs") {
  pub_fixture f;
  for (int i = 1; i <= 4; ++i) f.insert(i);
  f.drain();
  f.clear();
  f.control(control_op::replay, "r1", 2, 3);
  f.drain();
  auto d = f.direct("r1");
  REQUIRE(d.size() == 2);
  CHECK(d[0].msg.first_seq == 2);
  CHECK(d[1].msg.first_seq == 3);
  CHECK(d[0].msg.reply_to == "r1");
  CHECK(d[0].msg.target == "r1");
  CHECK(d[0].msg.events[0].values[0] == I(2));
  CHECK(f.events("t").empty());
  CHECK(f.m->stats().control_handled == 1);
}

TEST_CASE("control replay of a pruned range answers with a full re-sync") {
  master_config cfg;
  cfg.replay_keep_records = 2;
  pub_fixture f(cfg);
  for (int i = 1; i <= 5; ++i) {
    f.insert(i);
    f.drain();
  }
  REQUIRE_FALSE(f.txn("DELETE FROM t WHERE id=5"));
  f.drain();
  f.clear();
  f.control(control_op::replay, "r2", 1, 6);
  f.drain();
  auto d = f.direct("r2");
  REQUIRE(d.size() == 1);
  auto& msg = d[0].msg;
  CHECK(msg.first_seq == 0);
  CHECK(msg.has_resync);
  CHECK(msg.resync.upto_seq == 6);
  CHECK(msg.resync.part == 0);
  CHECK(msg.resync.last);
  CHECK(msg.reply_to == "r2");
  REQUIRE(msg.events.size() == 4);
  CHECK(msg.events[0].kind == event_kind::sync);
  CHECK(msg.events[3].values[0] == I(4));
  CHECK(msg.events[0].row_version == 1);
}

TEST_CASE("control resync answers with the request's nonce as session id (random without one)") {
  pub_fixture f;
  f.insert(1);
  f.drain();
  f.clear();
  f.control(control_op::resync, "r4", 0x1234567890abcdefULL, 0);
  f.drain();
  auto d = f.direct("r4");
  REQUIRE(d.size() == 1);
  CHECK(d[0].msg.resync.session == 0x1234567890abcdefULL);
  CHECK(d[0].msg.resync.upto_seq == 1);
  f.clear();
  f.control(control_op::resync, "r4");
  f.drain();
  d = f.direct("r4");
  REQUIRE(d.size() == 1);
  CHECK(d[0].msg.resync.session != 0x1234567890abcdefULL);
  // A replay the master cannot serve falls back to a re-sync that uses no seq as its id.
  master_config cfg;
  cfg.replay_keep_records = 1;
  pub_fixture g(cfg);
  for (int i = 1; i <= 3; ++i) {
    g.insert(i);
    g.drain();
  }
  g.clear();
  g.control(control_op::replay, "r5", 1, 3);
  g.drain();
  d = g.direct("r5");
  REQUIRE(d.size() == 1);
  CHECK(d[0].msg.has_resync);
  CHECK(d[0].msg.resync.session != 1);
}

TEST_CASE("control resync of a large table is split into parts, last marked") {
  master_config cfg;
  cfg.max_record_events = 10;
  pub_fixture f(cfg);
  REQUIRE_FALSE(
      f.txn("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<25) "
            "INSERT INTO t SELECT i, i FROM c"));
  f.drain();
  f.clear();
  f.control(control_op::resync, "r3");
  f.drain();
  auto d = f.direct("r3");
  REQUIRE(d.size() == 3);
  std::size_t events = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    CHECK(d[i].msg.resync.part == i);
    CHECK(d[i].msg.resync.last == (i == 2));
    CHECK(d[i].msg.resync.session == d[0].msg.resync.session);
    CHECK(d[i].msg.resync.upto_seq == 25);
    events += d[i].msg.events.size();
  }
  CHECK(events == 25);
}

TEST_CASE("control resync of an empty table: one empty last part") {
  pub_fixture f;
  f.control(control_op::resync, "r4");
  f.drain();
  auto d = f.direct("r4");
  REQUIRE(d.size() == 1);
  CHECK(d[0].msg.events.empty());
  CHECK(d[0].msg.resync.last);
  CHECK(d[0].msg.resync.upto_seq == 0);
}

TEST_CASE("control schema request re-publishes the schema") {
  pub_fixture f;
  f.drain();
  std::size_t before = f.broker.stats().published;
  f.control(control_op::schema, "r5");
  f.drain();
  CHECK(f.broker.stats().published == before + 2);  // the request and the schema
}

TEST_CASE("manual sync: WHERE with bound parameters, broadcast or to one replica") {
  pub_fixture f;
  for (int i = 1; i <= 6; ++i) f.insert(i);
  REQUIRE_FALSE(f.txn("UPDATE t SET x=100 WHERE id=2"));
  f.drain();
  f.clear();
  std::size_t n = 0;
  REQUIRE_FALSE(f.m->sync("t", "x >= ?1 AND id <= ?2", {I(4), I(5)}, "", &n));
  CHECK(n == 3);
  REQUIRE_FALSE(f.m->sync("t", "id = ?1", {I(3)}, "gw-1", &n));
  CHECK(n == 1);
  f.drain();
  auto b = f.events("t");
  REQUIRE(b.size() == 3);
  CHECK(b[0].kind == event_kind::sync);
  CHECK(b[0].values[0] == I(2));
  CHECK(b[0].row_version == 2);
  CHECK(b[1].values[0] == I(4));
  for (auto& r : f.got)
    if (r.topic == event_topic(default_topic_prefix, "t")) CHECK(r.msg.first_seq == 0);
  auto d = f.direct("gw-1");
  REQUIRE(d.size() == 1);
  CHECK(d[0].msg.target == "gw-1");
  CHECK(d[0].msg.first_seq == 0);
  CHECK(d[0].msg.events[0].values[0] == I(3));
  CHECK(f.m->sync("t", "id = ?1", {}, "", &n) == errc::invalid_argument);
  CHECK(f.m->sync("t", "nonsense ((", {}, "", &n) == errc::invalid_argument);
  CHECK(f.m->sync("t", "", {}, "bad/name", &n) == errc::invalid_replica_name);
  CHECK(f.m->sync("nope", "", {}, "", &n) == errc::unknown_stream);
}

TEST_CASE("dump: a CBOR sequence file, header then sync messages") {
  master_config cfg;
  cfg.max_record_events = 4;
  pub_fixture f(cfg);
  for (int i = 1; i <= 10; ++i) f.insert(i);
  test::temp_dir d("dump");
  std::size_t rows = 0;
  REQUIRE_FALSE(f.m->dump("t", d.file("t.cbors"), &rows));
  CHECK(rows == 10);
  std::string data = test::read_file(d.file("t.cbors"));
  auto* p = reinterpret_cast<const std::uint8_t*>(data.data());
  std::size_t off = 0, item = 0;
  REQUIRE_FALSE(cbor_item_size(p, data.size(), item));
  // Header: ["edgecqrs-dump", 1, schema]
  CHECK(p[0] == 0x83);
  CHECK(data.substr(2, 13) == "edgecqrs-dump");
  schema s;
  REQUIRE_FALSE(decode_schema(p + 16, item - 16, s));
  CHECK(s.cqrs_id == "t");
  off = item;
  std::size_t events = 0, messages = 0;
  while (off < data.size()) {
    REQUIRE_FALSE(cbor_item_size(p + off, data.size() - off, item));
    message m;
    REQUIRE_FALSE(decode_message(p + off, item, m));
    CHECK(m.first_seq == 0);
    CHECK(m.schema_tag == s.schema_tag);
    for (auto& e : m.events) CHECK(e.kind == event_kind::sync);
    events += m.events.size();
    ++messages;
    off += item;
  }
  CHECK(events == 10);
  CHECK(messages == 3);
  CHECK(f.m->dump("t", d.file("no/such/dir/x"), &rows) == errc::io_error);
}

TEST_CASE("background thread publishes while the application writes") {
  test::temp_dir d("bg");
  pub_fixture f({}, d.file("bg.db"));
  REQUIRE_FALSE(f.m->start(1));
  CHECK(f.m->start(1) == errc::invalid_argument);
  for (int i = 1; i <= 50; ++i) f.insert(i);
  for (int r = 0; r < 2000 && f.m->stats().records_pending; ++r) {
    f.broker.pump_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  f.m->stop();
  f.drain(200);  // whatever the loaded machine left for after stop()
  CHECK(f.m->stats().records_pending == 0);
  std::set<std::uint64_t> seen;
  for (auto s : f.seqs("t")) seen.insert(s);
  CHECK(seen.size() == 50);
}

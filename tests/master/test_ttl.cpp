// Message TTL (master_config::message_ttl_ms): ext.expires = commit time + TTL on stream messages,
// MQTT 5 expiry interval = the time left, rounded up; heartbeats, schema and direct messages
// never expire; a replica dead-letters what arrives expired and re-syncs on its own.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/replica.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

// Forwards to another transport and records every publish's topic and options.
class recording_transport final : public transport {
 public:
  explicit recording_transport(transport& inner) : inner_(inner) {}
  struct sent {
    std::string topic;
    publish_options opts;
  };
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options& opts, publish_callback done) override {
    auto ec = inner_.publish(topic, data, size, opts, std::move(done));
    if (!ec) log.push_back({std::string(topic), opts});
    return ec;
  }
  std::error_code subscribe(std::string_view f, message_callback cb) override {
    return inner_.subscribe(f, std::move(cb));
  }
  std::error_code unsubscribe(std::string_view f) override { return inner_.unsubscribe(f); }
  bool connected() const override { return inner_.connected(); }
  std::size_t max_in_flight() const override { return inner_.max_in_flight(); }

  std::vector<sent> log;

 private:
  transport& inner_;
};

master_config ttl_config(std::int64_t ttl_ms) {
  master_config c;
  c.message_ttl_ms = ttl_ms;
  c.heartbeat_interval_ms = 1000;
  return c;
}

struct ttl_fixture : master_fixture {
  explicit ttl_fixture(master_config cfg) : master_fixture(cfg), rec(*pub_client) {
    m->set_transport(&rec);
    add_table("CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER)", stream_of("t"));
  }
  // The master unsubscribes from its transport when destroyed: before `rec` goes.
  ~ttl_fixture() { m.reset(); }
  // Options of the publishes on `topic`, in order.
  std::vector<publish_options> opts_on(const std::string& topic) const {
    std::vector<publish_options> out;
    for (const auto& s : rec.log)
      if (s.topic == topic) out.push_back(s.opts);
    return out;
  }
  recording_transport rec;
};

const std::string events_t = event_topic(default_topic_prefix, "t");
const std::string schema_t = schema_topic(default_topic_prefix, "t");

}  // namespace

TEST_CASE("ttl 0: stream messages carry no expiry, neither in ext nor for MQTT 5") {
  ttl_fixture f(ttl_config(0));
  f.insert(1);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.expires_ms == 0);
  const auto o = f.opts_on(events_t);
  REQUIRE(o.size() == 1);
  CHECK(o[0].expiry_interval_s == 0);
}

TEST_CASE("ttl: expires = commit time + ttl, MQTT 5 expiry = whole seconds left") {
  ttl_fixture f(ttl_config(60000));
  const std::int64_t commit = f.clk.now_ms();
  f.insert(1);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.expires_ms == commit + 60000);
  CHECK(f.got[0].msg.events.size() == 1);
  auto o = f.opts_on(events_t);
  REQUIRE(o.size() == 1);
  CHECK(o[0].expiry_interval_s == 60);
  CHECK_FALSE(o[0].retain);
}

TEST_CASE("ttl counts from the commit, not from the publish: a late publish gets less time") {
  ttl_fixture f(ttl_config(60000));
  f.broker.disconnect(*f.pub_client);
  const std::int64_t first_commit = f.clk.now_ms();
  f.insert(1);
  f.clk.advance(1000);
  f.insert(2);  // joined with the first record into one message
  f.clk.advance(24500);
  REQUIRE_FALSE(f.m->poll());
  f.broker.reconnect(*f.pub_client);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.events.size() == 2);
  // The oldest commit decides.
  CHECK(f.got[0].msg.expires_ms == first_commit + 60000);
  const auto o = f.opts_on(events_t);
  REQUIRE(o.size() == 1);
  CHECK(o[0].expiry_interval_s == 35);  // 34.5 s left, rounded up
}

TEST_CASE("ttl: a message already expired at publish still goes out, with 1 s MQTT expiry") {
  ttl_fixture f(ttl_config(2000));
  f.broker.disconnect(*f.pub_client);
  const std::int64_t commit = f.clk.now_ms();
  f.insert(1);
  f.clk.advance(10000);
  f.broker.reconnect(*f.pub_client);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.expires_ms == commit + 2000);
  CHECK(f.got[0].msg.expires_ms < f.clk.now_ms());
  const auto o = f.opts_on(events_t);
  REQUIRE(o.size() == 1);
  CHECK(o[0].expiry_interval_s == 1);
  CHECK(f.m->stats().records_pending == 0);
}

TEST_CASE("ttl: heartbeats, schema messages, manual sync and replay answers never expire") {
  ttl_fixture f(ttl_config(1000));
  f.insert(1);
  f.insert(2);
  f.drain();
  const std::size_t stream_messages = f.got.size();
  REQUIRE(stream_messages >= 1);
  for (const auto& r : f.got) CHECK(r.msg.expires_ms != 0);
  f.clear();
  // Heartbeat after the idle interval.
  f.clk.advance(5000);
  f.drain();
  REQUIRE(f.got.size() == 1);
  CHECK(f.got[0].msg.events.empty());
  CHECK(f.got[0].msg.expires_ms == 0);
  CHECK(f.m->stats().heartbeats >= 1);
  // Schema: retained, no expiry (a replica joining later still needs it).
  const auto so = f.opts_on(schema_t);
  REQUIRE_FALSE(so.empty());
  for (const auto& o : so) {
    CHECK(o.retain);
    CHECK(o.expiry_interval_s == 0);
  }
  // Every publish on the event topic without events (heartbeats) has no MQTT expiry.
  std::size_t with_expiry = 0;
  for (const auto& o : f.opts_on(events_t)) with_expiry += o.expiry_interval_s != 0;
  CHECK(with_expiry == stream_messages);  // the stream messages only
  // Manual sync, broadcast and direct.
  f.clear();
  f.rec.log.clear();
  REQUIRE_FALSE(f.m->sync("t", "", {}, ""));
  REQUIRE_FALSE(f.m->sync("t", "", {}, "r1"));
  f.drain();
  REQUIRE(f.got.size() == 2);
  for (const auto& r : f.got) CHECK(r.msg.expires_ms == 0);
  for (const auto& s : f.rec.log) CHECK(s.opts.expiry_interval_s == 0);
  // Replay answer to a replica's request.
  f.clear();
  f.rec.log.clear();
  {
    auto c = f.broker.make_client("r1");
    send_control(*c, control_op::replay, "r1", 1, 2);
    f.broker.pump_all();
  }
  f.drain();
  REQUIRE_FALSE(f.got.empty());
  for (const auto& r : f.got) {
    CHECK(r.msg.reply_to == "r1");
    CHECK(r.msg.expires_ms == 0);
  }
  for (const auto& s : f.rec.log) CHECK(s.opts.expiry_interval_s == 0);
}

TEST_CASE("ttl: a replica dead-letters expired events and re-syncs on its own to converge") {
  ttl_fixture f(ttl_config(2000));
  sqlite3* rdb = nullptr;
  REQUIRE(sqlite3_open(":memory:", &rdb) == SQLITE_OK);
  REQUIRE(sqlite3_exec(rdb, "CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER)", nullptr, nullptr,
                       nullptr) == SQLITE_OK);
  auto rclient = f.broker.make_client("replica", 100);
  replica_options ro;
  ro.name = "r1";
  ro.time = &f.clk;
  std::unique_ptr<replica> r;
  REQUIRE_FALSE(replica::open(rdb, ro, r));
  REQUIRE_FALSE(r->register_table("t", into_table("t")));
  REQUIRE_FALSE(r->attach(*rclient));
  auto rows = [&]() {
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(rdb, "SELECT count(*) FROM t", -1, &q, nullptr);
    sqlite3_step(q);
    const auto n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
  };
  auto pump = [&]() {
    for (int i = 0; i < 20; ++i) {
      REQUIRE_FALSE(f.m->poll());
      REQUIRE_FALSE(r->poll());
      if (f.broker.pump_all() == 0 && f.broker.queued() == 0) break;
    }
  };
  f.insert(1);
  pump();
  CHECK(rows() == 1);
  // The broker holds the next messages (publisher offline) past the TTL.
  f.broker.disconnect(*f.pub_client);
  f.insert(2);
  f.insert(3);
  f.clk.advance(3000);
  const auto resyncs_before = r->stats().resyncs_completed;
  const auto requests_before = r->stats().resync_requests;
  f.broker.reconnect(*f.pub_client);
  pump();
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);  // one message carried both events
  CHECK(dl[0].reason == make_error_code(errc::expired));
  CHECK(dl[0].cqrs_id == "t");
  // Nobody asked: the dead-lettered expired message made the replica request a re-sync
  // (never expiring), once, which brings it back to the master's rows.
  CHECK(rows() == 3);
  CHECK(r->stats().resync_requests == requests_before + 1);
  CHECK(r->stats().resyncs_completed == resyncs_before + 1);
  stream_status st;
  REQUIRE_FALSE(r->status("t", st));
  CHECK_FALSE(st.resync_pending);
  CHECK(st.checkpoint == 3);
  r->detach();
  r.reset();
  sqlite3_close(rdb);
}

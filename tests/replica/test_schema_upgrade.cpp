// A schema change with a pending backlog (issue 16.5): records keep the schema tag they were
// encoded with, the master re-publishes older schemas while records carry them, and a replica
// applies the backlog and the new rows correctly. The real master and replica over loopback.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <string>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct upgrade_fixture {
  temp_dir dir{"upgrade"};
  fake_clock clk;
  loopback::broker broker{11, &clk};
  std::unique_ptr<loopback::client> pub = broker.make_client("master", 64);
  std::unique_ptr<loopback::client> rsub = broker.make_client("replica", 64);
  std::unique_ptr<loopback::client> obs = broker.make_client("observer", 64);
  sqlite3* mdb = nullptr;
  std::unique_ptr<master> m;
  std::unique_ptr<replica> r;
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> seen;  // observer

  upgrade_fixture() {
    REQUIRE(sqlite3_open(":memory:", &mdb) == SQLITE_OK);
    exec(mdb, "CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER)");
    start_master();
    exec_file(dir.file("r.db"), "CREATE TABLE t(id INTEGER PRIMARY KEY, x INTEGER, y INTEGER)");
    replica_options ro;
    ro.name = "r1";
    ro.time = &clk;
    REQUIRE_FALSE(replica::open(dir.file("r.db"), ro, r));
    REQUIRE_FALSE(r->register_table("t", into_table("t")));
    REQUIRE_FALSE(r->attach(*rsub));
    REQUIRE_FALSE(obs->subscribe("edgecqrs/v1/#", [this](const incoming_message& im) {
      seen.emplace_back(std::string(im.topic),
                        std::vector<std::uint8_t>(im.data, im.data + im.size));
    }));
  }
  ~upgrade_fixture() {
    r.reset();
    m.reset();
    sqlite3_close(mdb);
  }
  static void exec(sqlite3* db, const std::string& sql) {
    REQUIRE_MESSAGE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK,
                    sql << ": " << sqlite3_errmsg(db));
  }
  void start_master(transport* tx = nullptr) {
    m.reset();
    REQUIRE_FALSE(master::attach(mdb, master_config{}, tx ? tx : pub.get(), m, clk));
    REQUIRE_FALSE(m->register_table(stream_of("t")));
  }
  void txn(const std::string& sql) {
    REQUIRE_FALSE(m->transaction([&](sqlite3* db) -> std::error_code {
      exec(db, sql);
      return {};
    }));
  }
  void pump() {
    for (int i = 0; i < 50; ++i) {
      clk.advance(100);
      REQUIRE_FALSE(m->poll());
      broker.pump_all();
      REQUIRE_FALSE(r->poll());
      broker.pump_all();
    }
  }
  std::vector<std::string> rows() {
    sqlite3* rdb = nullptr;
    REQUIRE(sqlite3_open(dir.file("r.db").c_str(), &rdb) == SQLITE_OK);
    auto out = dump(rdb, "SELECT id, x, y FROM t ORDER BY id");
    sqlite3_close(rdb);
    return out;
  }
  // Schema tags of the messages the observer saw on `topic` since `from`.
  std::vector<std::uint32_t> tags(const std::string& topic, std::size_t from = 0) {
    std::vector<std::uint32_t> out;
    for (std::size_t i = from; i < seen.size(); ++i) {
      if (seen[i].first != topic) continue;
      if (topic.find("/v1/s/") != std::string::npos) {
        schema s;
        REQUIRE_FALSE(decode_schema(seen[i].second.data(), seen[i].second.size(), s));
        out.push_back(s.schema_tag);
      } else {
        message msg;
        REQUIRE_FALSE(decode_message(seen[i].second.data(), seen[i].second.size(), msg));
        if (!msg.events.empty()) out.push_back(msg.schema_tag);
      }
    }
    return out;
  }
};

}  // namespace

TEST_CASE("16.5: a backlog pending across a schema upgrade keeps its tag and applies correctly") {
  upgrade_fixture f;
  f.txn("INSERT INTO t VALUES(1, 1)");
  f.txn("INSERT INTO t VALUES(2, 2)");
  f.pump();
  REQUIRE(f.rows() == std::vector<std::string>{"1|1|NULL", "2|2|NULL"});
  schema old_sch;
  REQUIRE(f.m->schema_of("t", old_sch));
  // Offline: a backlog encoded with the old column list.
  f.m->set_transport(nullptr);
  f.txn("INSERT INTO t VALUES(3, 3)");
  f.txn("UPDATE t SET x=20 WHERE id=2");
  f.txn("INSERT INTO t VALUES(4, 4)");
  // Restart with an added column; then new rows.
  f.m.reset();
  f.exec(f.mdb, "ALTER TABLE t ADD COLUMN y INTEGER DEFAULT 5");
  f.start_master();
  schema new_sch;
  REQUIRE(f.m->schema_of("t", new_sch));
  REQUIRE(new_sch.schema_tag != old_sch.schema_tag);
  f.txn("INSERT INTO t VALUES(5, 5, 7)");
  f.txn("UPDATE t SET y=9 WHERE id=1");
  const std::size_t mark = f.seen.size();
  f.pump();
  CHECK(f.rows() == std::vector<std::string>{"1|1|9", "2|20|NULL", "3|3|NULL", "4|4|NULL",
                                             "5|5|7"});
  std::size_t n = 9;
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("t", ss));
  CHECK(ss.checkpoint == 7);
  // The backlog went out with the old tag, the new rows with the new one.
  const std::string ev_topic = event_topic(default_topic_prefix, "t");
  const std::vector<std::uint32_t> tags = f.tags(ev_topic, mark);
  REQUIRE_FALSE(tags.empty());
  CHECK(tags.front() == old_sch.schema_tag);
  CHECK(tags.back() == new_sch.schema_tag);
  // The retained schema is the current one; the old one was re-published (not retained).
  const std::string s_topic = schema_topic(default_topic_prefix, "t");
  std::string retained;
  REQUIRE(f.broker.retained(s_topic, retained));
  schema rs;
  REQUIRE_FALSE(decode_schema(reinterpret_cast<const std::uint8_t*>(retained.data()),
                              retained.size(), rs));
  CHECK(rs.schema_tag == new_sch.schema_tag);
  CHECK(f.tags(s_topic, mark) ==
        std::vector<std::uint32_t>{old_sch.schema_tag, new_sch.schema_tag});

  // A replay of pre-upgrade seqs keeps their tag; a schema request re-publishes the old schema
  // while records (kept for replay) carry it.
  auto c = f.broker.make_client("asker", 8);
  auto ask = [&](control_op op, std::uint64_t from, std::uint64_t to) {
    control_request req;
    req.op = op;
    req.replica = "r9";
    req.from_seq = from;
    req.to_seq = to;
    std::uint8_t buf[128];
    std::size_t w = 0;
    REQUIRE_FALSE(encode_control(req, buf, sizeof buf, w));
    REQUIRE_FALSE(c->publish(control_topic(default_topic_prefix, "t"), buf, w, {}, nullptr));
    f.pump();
  };
  std::size_t mark2 = f.seen.size();
  ask(control_op::replay, 3, 5);
  CHECK(f.tags(direct_topic(default_topic_prefix, "r9", "t"), mark2) ==
        std::vector<std::uint32_t>{old_sch.schema_tag, old_sch.schema_tag, old_sch.schema_tag});
  mark2 = f.seen.size();
  ask(control_op::schema, 0, 0);
  CHECK(f.tags(s_topic, mark2) ==
        std::vector<std::uint32_t>{old_sch.schema_tag, new_sch.schema_tag});
  REQUIRE(f.broker.retained(s_topic, retained));
  REQUIRE_FALSE(decode_schema(reinterpret_cast<const std::uint8_t*>(retained.data()),
                              retained.size(), rs));
  CHECK(rs.schema_tag == new_sch.schema_tag);
}

TEST_CASE("16.5: a replica that never saw the old schema asks for it and applies parked records") {
  upgrade_fixture f;
  f.txn("INSERT INTO t VALUES(1, 1)");
  f.pump();
  schema old_sch;
  REQUIRE(f.m->schema_of("t", old_sch));
  f.m->set_transport(nullptr);
  f.txn("INSERT INTO t VALUES(2, 2)");
  f.m.reset();
  f.exec(f.mdb, "ALTER TABLE t ADD COLUMN y INTEGER DEFAULT 5");
  f.start_master();
  // The replica loses the old schema (e.g. trimmed): only what the master re-publishes helps.
  f.r.reset();
  {
    sqlite3* rdb = nullptr;
    REQUIRE(sqlite3_open(f.dir.file("r.db").c_str(), &rdb) == SQLITE_OK);
    f.exec(rdb, "DELETE FROM edgecqrs_r_schemas");
    sqlite3_close(rdb);
  }
  replica_options ro;
  ro.name = "r1";
  ro.time = &f.clk;
  f.rsub = f.broker.make_client("replica2", 64);
  REQUIRE_FALSE(replica::open(f.dir.file("r.db"), ro, f.r));
  REQUIRE_FALSE(f.r->register_table("t", into_table("t")));
  REQUIRE_FALSE(f.r->attach(*f.rsub));
  f.pump();
  f.txn("INSERT INTO t VALUES(3, 3, 3)");
  f.pump();
  CHECK(f.rows() == std::vector<std::string>{"1|1|NULL", "2|2|NULL", "3|3|3"});
  std::size_t n = 9;
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
}

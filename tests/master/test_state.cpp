// Master-side state (issue 16): stream seqs after refused transactions, pruning of streams the
// process did not register, oversize rows, schema tags of pending records, bounds at their edges.
#include <doctest/doctest.h>

#include <string>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct state_fixture : master_fixture {
  explicit state_fixture(master_config cfg = {}, const std::string& path = ":memory:")
      : master_fixture(cfg, path) {
    add_table("CREATE TABLE t(id INTEGER PRIMARY KEY, x)", stream_of("t"));
  }
  // Re-attaches the master on the same connection (a process restart).
  void restart(const master_config& cfg, std::initializer_list<const char*> ids) {
    m.reset();
    REQUIRE_FALSE(master::attach(db, cfg, pub_client.get(), m, clk));
    for (const char* id : ids) REQUIRE_FALSE(m->register_table(stream_of(id)));
  }
};

}  // namespace

TEST_CASE("16.1: a transaction refused for max_rows_per_transaction does not rewind stream seqs") {
  master_config cfg;
  cfg.max_rows_per_transaction = 3;
  state_fixture f(cfg);
  f.insert(1);
  f.insert(2);
  f.drain();
  // A retention DELETE of too many rows (4 > 3) is refused and rolled back.
  CHECK(f.txn("INSERT INTO t VALUES(10,1),(11,1),(12,1),(13,1)") == errc::outbox_full);
  CHECK(f.m->head_seq("t") == 2);
  f.insert(3);
  f.insert(4);
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2, 3, 4});
  CHECK(f.m->head_seq("t") == 4);
}

TEST_CASE("16.1: a failed COMMIT of a transaction without captured rows keeps stream seqs") {
  state_fixture f;
  f.insert(1);
  f.insert(2);
  // A body that changes nothing captured, whose COMMIT fails (a deferred foreign key).
  f.sql("CREATE TABLE p(id INTEGER PRIMARY KEY)");
  f.sql("CREATE TABLE c(id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) DEFERRABLE "
        "INITIALLY DEFERRED)");
  CHECK(f.txn("INSERT INTO c VALUES(1, 99)"));
  f.insert(3);
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("16.11: prune saves the head of streams this process did not register") {
  temp_dir dir("mstate");
  const std::string path = dir.file("m.db");
  master_config cfg;
  state_fixture f(cfg, path);
  f.sql("CREATE TABLE u(id INTEGER PRIMARY KEY, y)");
  REQUIRE_FALSE(f.m->register_table(stream_of("u")));
  for (int i = 1; i <= 3; ++i)
    REQUIRE_FALSE(f.txn("INSERT INTO u VALUES(" + std::to_string(i) + ", 0)"));
  f.drain();
  CHECK(f.m->head_seq("u") == 3);
  // A process that registers only "t" and keeps one record for replay prunes u's records too.
  cfg.replay_keep_records = 1;
  f.restart(cfg, {"t"});
  for (int i = 1; i <= 4; ++i) f.insert(i);
  f.drain();
  f.drain();
  CHECK(f.count("SELECT count(*) FROM edgecqrs_outbox WHERE kind=0 AND stream=(SELECT rowid FROM "
                "edgecqrs_stream WHERE cqrs_id='u')") == 0);
  // Registered again: u continues after its last published seq.
  f.restart(master_config{}, {"t", "u"});
  CHECK(f.m->head_seq("u") == 3);
  f.clear();
  REQUIRE_FALSE(f.txn("INSERT INTO u VALUES(9, 0)"));
  f.drain();
  CHECK(f.seqs("u") == std::vector<std::uint64_t>{4});
}

TEST_CASE("16.7: a row larger than a record can carry is refused at commit, nothing published") {
  state_fixture f;
  f.insert(1);
  f.drain();
  f.clear();
  master_config defaults;
  // A value whose event exceeds max_record_bytes (and a replica's default string limit).
  std::string big = "x'" + std::string(2 * (defaults.max_record_bytes + 10), 'a') + "'";
  CHECK(f.txn("INSERT INTO t VALUES(7, " + big + ")") == errc::too_large);
  const std::string msg = f.m->last_error_message();
  // Table, key, the event's size (value and encoding) and the bound.
  CHECK(msg == "row (7) of table 't' encodes to " +
                   std::to_string(defaults.max_record_bytes + 10 + 9) +
                   " bytes, over max_record_bytes " + std::to_string(defaults.max_record_bytes));
  CHECK(f.count("SELECT count(*) FROM t") == 1);
  // Same for an update that grows a row beyond the bound.
  CHECK(f.txn("UPDATE t SET x=" + big + " WHERE id=1") == errc::too_large);
  f.drain();
  CHECK(f.got.empty());
  // The master keeps working; a value just under the bound is published and decodes with a
  // replica's default limits (the fixture's observer decodes every message).
  f.insert(2);
  std::string under = "x'" + std::string(2 * (defaults.max_record_bytes - 64), 'b') + "'";
  REQUIRE_FALSE(f.txn("INSERT INTO t VALUES(8, " + under + ")"));
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{2, 3});
}

TEST_CASE("16.5: an outbox of an older version gets its tag column; pending records the tag") {
  state_fixture f;
  f.m->set_transport(nullptr);
  f.insert(1);
  f.insert(2);
  f.m.reset();
  // The outbox as older versions created it (no `tag`), with the two pending records.
  f.sql("CREATE TABLE old_outbox(id INTEGER PRIMARY KEY, stream INTEGER NOT NULL, kind INTEGER "
        "NOT NULL, first_seq INTEGER NOT NULL, n_events INTEGER NOT NULL, target TEXT NOT NULL "
        "DEFAULT '', ext BLOB, body BLOB NOT NULL, acked INTEGER NOT NULL DEFAULT 0)");
  f.sql("INSERT INTO old_outbox SELECT id,stream,kind,first_seq,n_events,target,ext,body,acked "
        "FROM edgecqrs_outbox");
  f.sql("DROP TABLE edgecqrs_outbox");
  f.sql("ALTER TABLE old_outbox RENAME TO edgecqrs_outbox");
  f.sql("DROP TABLE edgecqrs_schema");
  f.restart(master_config{}, {"t"});
  schema sch;
  REQUIRE(f.m->schema_of("t", sch));
  CHECK(f.count("SELECT count(*) FROM edgecqrs_outbox WHERE tag<>" +
                std::to_string(sch.schema_tag)) == 0);
  f.insert(3);
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2, 3});
  for (auto& r : f.got) CHECK(r.msg.schema_tag == sch.schema_tag);
}

// ---------------------------------------------------------------- bounds at their edges

TEST_CASE("edge: max_rows_per_transaction rows in one transaction commit, one more is refused") {
  master_config cfg;
  cfg.max_rows_per_transaction = 3;
  state_fixture f(cfg);
  REQUIRE_FALSE(f.txn("INSERT INTO t VALUES(1,1),(2,2),(3,3)"));
  CHECK(f.txn("UPDATE t SET x=x+1; INSERT INTO t VALUES(4,4)") == errc::outbox_full);
  CHECK(f.count("SELECT count(*) FROM t") == 3);
  CHECK(f.count("SELECT sum(x) FROM t") == 6);  // rolled back
  REQUIRE_FALSE(f.txn("UPDATE t SET x=x+1"));
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("edge: outbox_max_bytes exactly reached commits, one record more is refused") {
  state_fixture f;
  f.m->set_transport(nullptr);
  f.insert(1);
  const std::int64_t s = f.count("SELECT length(body) FROM edgecqrs_outbox WHERE kind=2");
  const std::int64_t r = f.count("SELECT length(body) FROM edgecqrs_outbox WHERE kind=0");
  // Restarted (one more schema record) with room for exactly one more record like the first.
  master_config cfg;
  cfg.outbox_max_bytes = static_cast<std::size_t>(2 * s + 2 * r);
  f.restart(cfg, {"t"});
  f.m->set_transport(nullptr);
  REQUIRE(f.m->stats().bytes_pending == static_cast<std::uint64_t>(2 * s + r));
  f.insert(2);
  CHECK(f.m->stats().bytes_pending == cfg.outbox_max_bytes);
  CHECK(f.txn("INSERT INTO t VALUES(3, 3)") == errc::outbox_full);
  CHECK(f.m->stats().outbox_full_refusals == 1);
  CHECK(f.count("SELECT count(*) FROM t") == 2);
  CHECK(f.m->head_seq("t") == 2);
}

TEST_CASE("edge: max_pending_control requests queued are all handled, one more is dropped") {
  master_config cfg;
  cfg.max_pending_control = 2;
  state_fixture f(cfg);
  f.insert(1);
  f.drain();
  auto c = f.broker.make_client("asker", 8);
  auto ask = [&](int n) {
    for (int i = 0; i < n; ++i) send_control(*c, control_op::replay, "r" + std::to_string(i), 1, 1);
    f.broker.pump_all();  // delivered to the master's queue; poll() not yet called
  };
  ask(2);
  f.drain();
  CHECK(f.m->stats().control_handled == 2);
  CHECK(f.m->stats().control_dropped == 0);
  ask(3);
  f.drain();
  CHECK(f.m->stats().control_handled == 4);
  CHECK(f.m->stats().control_dropped == 1);
}

TEST_CASE("capture: a row inserted then deleted in one transaction sends nothing") {
  state_fixture f;
  f.insert(1);
  REQUIRE_FALSE(f.txn("INSERT INTO t VALUES(5, 5); UPDATE t SET x=6 WHERE id=5; "
                      "DELETE FROM t WHERE id=5"));
  CHECK(f.m->head_seq("t") == 1);  // no seq consumed
  CHECK(f.count("SELECT count(*) FROM edgecqrs_outbox WHERE kind=0") == 1);
  f.insert(2);
  f.drain();
  CHECK(f.seqs("t") == std::vector<std::uint64_t>{1, 2});
  const auto evs = f.events("t");
  REQUIRE(evs.size() == 2);
  CHECK(evs[1].values[0] == I(2));
}

TEST_CASE("16.7: messages of many small values stay within a replica's default item limit") {
  for (int ncol : {30, 63, 100}) {
    CAPTURE(ncol);
    master_fixture f;
    std::string ddl = "CREATE TABLE w(id INTEGER PRIMARY KEY";
    for (int i = 0; i < ncol; ++i) ddl += ", c" + std::to_string(i) + " INTEGER DEFAULT 1";
    f.add_table(ddl + ")", stream_of("w"));
    f.m->set_transport(nullptr);
    for (int k = 0; k < 2; ++k)
      REQUIRE_FALSE(f.txn("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<"
                          "1024) INSERT INTO w(id) SELECT i + " +
                          std::to_string(k * 1024) + " FROM n"));
    f.m->set_transport(f.pub_client.get());
    f.drain(200);  // the fixture's observer decodes every message with the default limits
    CHECK(f.seqs("w").size() == 2048);
  }
}

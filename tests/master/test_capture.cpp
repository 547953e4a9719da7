// Capture correctness: one test per case, each checking the exact events published.
#include <doctest/doctest.h>

#include <string>

#include "edgecqrs/errors.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

void check_event(const event& e, event_kind kind, std::uint64_t version,
                 const std::vector<value>& values) {
  CHECK(e.kind == kind);
  CHECK(e.row_version == version);
  REQUIRE(e.values.size() == values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    CHECK_MESSAGE(e.values[i] == values[i], "column " << i);
}

// Drains the fixture and returns the events of `cqrs_id`, requiring there are exactly `n`.
std::vector<event> drained(master_fixture& f, const std::string& cqrs_id, std::size_t n) {
  f.drain();
  auto ev = f.events(cqrs_id);
  REQUIRE(ev.size() == n);
  return ev;
}

// One master transaction running `sql` (one parameter) for ?1 = 1, 2, ..., n.
std::error_code txn_each(master_fixture& f, const char* sql, int n) {
  return f.m->transaction([&](sqlite3* d) -> std::error_code {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(d, sql, -1, &s, nullptr);
    for (int i = 1; i <= n; ++i) {
      sqlite3_bind_int(s, 1, i);
      if (sqlite3_step(s) != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    return {};
  });
}

struct readings : master_fixture {
  explicit readings(master_config cfg = {}) : master_fixture(cfg) {
    sql("CREATE TABLE reading(id INTEGER PRIMARY KEY, name TEXT, value REAL, updated INTEGER)");
    REQUIRE_FALSE(m->register_table(stream_of("reading")));
  }
};

}  // namespace

TEST_CASE("capture: insert is one save event, version 1, seq 1") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',21.5,100)"));
  auto ev = drained(f, "reading", 1);
  check_event(ev[0], event_kind::save, 1, {I(1), T("a"), R(21.5), I(100)});
  CHECK(ev[0].updated_ms == f.clk.now_ms());
  CHECK(f.seqs("reading") == std::vector<std::uint64_t>{1});
  CHECK(f.m->head_seq("reading") == 1);
}

TEST_CASE("capture: update sends the final state with the next version") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',1.0,1)"));
  REQUIRE_FALSE(f.txn("UPDATE reading SET value=2.5, name='b' WHERE id=1"));
  auto ev = drained(f, "reading", 2);
  check_event(ev[1], event_kind::save, 2, {I(1), T("b"), R(2.5), I(1)});
  CHECK(f.seqs("reading") == std::vector<std::uint64_t>{1, 2});
}

TEST_CASE("capture: delete sends the key with the next version (versioned tombstone)") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(7,'a',1.0,1)"));
  REQUIRE_FALSE(f.txn("UPDATE reading SET value=3 WHERE id=7"));
  REQUIRE_FALSE(f.txn("DELETE FROM reading WHERE id=7"));
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(7,'again',1.0,1)"));
  auto ev = drained(f, "reading", 4);
  check_event(ev[2], event_kind::remove, 3, {I(7)});
  // A re-insert after a delete outranks the tombstone.
  check_event(ev[3], event_kind::save, 4, {I(7), T("again"), R(1.0), I(1)});
}

TEST_CASE("capture: DELETE without WHERE (truncate optimisation defeated)") {
  readings f;
  REQUIRE_FALSE(
      f.txn("INSERT INTO reading VALUES(1,'a',1,1); INSERT INTO reading VALUES(2,'b',2,2);"
            "INSERT INTO reading VALUES(3,'c',3,3)"));
  REQUIRE_FALSE(f.txn("DELETE FROM reading"));
  CHECK(f.count("SELECT count(*) FROM reading") == 0);
  auto ev = drained(f, "reading", 6);
  check_event(ev[3], event_kind::remove, 2, {I(1)});
  check_event(ev[4], event_kind::remove, 2, {I(2)});
  check_event(ev[5], event_kind::remove, 2, {I(3)});
}

TEST_CASE("capture: INSERT OR REPLACE over an existing row") {
  master_fixture f;
  f.add_table("CREATE TABLE dev(id INTEGER PRIMARY KEY, serial TEXT UNIQUE, v INTEGER)",
              stream_of("dev"));
  REQUIRE_FALSE(f.txn("INSERT INTO dev VALUES(1,'s1',10); INSERT INTO dev VALUES(2,'s2',20)"));
  // Same key: one save with the new state.
  REQUIRE_FALSE(f.txn("INSERT OR REPLACE INTO dev VALUES(1,'s1',11)"));
  auto ev = drained(f, "dev", 3);
  check_event(ev[2], event_kind::save, 2, {I(1), T("s1"), I(11)});
  if (master::has_preupdate_hook()) {
    // Conflict on a UNIQUE column: REPLACE deletes row 2 (no update hook call): captured.
    f.clear();
    REQUIRE_FALSE(f.txn("INSERT OR REPLACE INTO dev VALUES(3,'s2',30)"));
    f.drain();
    ev = f.events("dev");
    REQUIRE(ev.size() == 2);
    check_event(ev[0], event_kind::remove, 2, {I(2)});
    check_event(ev[1], event_kind::save, 1, {I(3), T("s2"), I(30)});
  }
}

TEST_CASE("capture: UPSERT (ON CONFLICT DO UPDATE)") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',1,1)"));
  REQUIRE_FALSE(
      f.txn("INSERT INTO reading VALUES(1,'a',9,9) ON CONFLICT(id) DO UPDATE SET "
            "value=excluded.value; INSERT INTO reading VALUES(2,'n',2,2) ON CONFLICT(id) "
            "DO UPDATE SET value=excluded.value"));
  auto ev = drained(f, "reading", 3);
  check_event(ev[1], event_kind::save, 2, {I(1), T("a"), R(9), I(1)});
  check_event(ev[2], event_kind::save, 1, {I(2), T("n"), R(2), I(2)});
}

TEST_CASE("capture: an UPDATE changing the primary key is delete old + save new") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',1,1)"));
  REQUIRE_FALSE(f.txn("UPDATE reading SET id=5 WHERE id=1"));
  auto ev = drained(f, "reading", 3);
  // Different keys: their order within the transaction does not matter to a replica (the
  // pre-update hook build reports the old key first).
  std::size_t del = ev[1].kind == event_kind::remove ? 1 : 2;
  check_event(ev[del], event_kind::remove, 2, {I(1)});
  // Without the pre-update hook the update hook reports the new key as an UPDATE, so it starts
  // at version 2 (still above anything a replica has for it).
  check_event(ev[3 - del], event_kind::save, master::has_preupdate_hook() ? 1 : 2,
              {I(5), T("a"), R(1), I(1)});
  if (master::has_preupdate_hook()) CHECK(del == 1);
}

TEST_CASE("capture: ON DELETE CASCADE into another registered table") {
  master_fixture f;
  f.sql(
      "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);"
      "CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) "
      "ON DELETE CASCADE, x INTEGER)");
  REQUIRE_FALSE(f.m->register_table(stream_of("parent")));
  REQUIRE_FALSE(f.m->register_table(stream_of("child")));
  REQUIRE_FALSE(
      f.txn("INSERT INTO parent VALUES(1,'p'); INSERT INTO child VALUES(10,1,0);"
            "INSERT INTO child VALUES(11,1,0)"));
  REQUIRE_FALSE(f.txn("DELETE FROM parent WHERE id=1"));
  CHECK(f.count("SELECT count(*) FROM child") == 0);
  f.drain();
  auto pe = f.events("parent");
  auto ce = f.events("child");
  REQUIRE(pe.size() == 2);
  REQUIRE(ce.size() == 4);
  check_event(pe[1], event_kind::remove, 2, {I(1)});
  check_event(ce[2], event_kind::remove, 2, {I(10)});
  check_event(ce[3], event_kind::remove, 2, {I(11)});
  CHECK(f.seqs("child") == std::vector<std::uint64_t>{1, 2, 3, 4});
}

TEST_CASE("capture: a trigger writing a registered table") {
  master_fixture f;
  f.sql(
      "CREATE TABLE item(id INTEGER PRIMARY KEY, qty INTEGER);"
      "CREATE TABLE audit(id INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER, qty INTEGER);"
      "CREATE TRIGGER item_audit AFTER UPDATE ON item BEGIN "
      "INSERT INTO audit(item_id, qty) VALUES(new.id, new.qty); END");
  REQUIRE_FALSE(f.m->register_table(stream_of("audit")));  // item itself is not registered
  REQUIRE_FALSE(f.txn("INSERT INTO item VALUES(1, 5)"));
  REQUIRE_FALSE(f.txn("UPDATE item SET qty=6 WHERE id=1"));
  f.drain();
  CHECK(f.events("item").empty());
  auto ev = f.events("audit");
  REQUIRE(ev.size() == 1);
  check_event(ev[0], event_kind::save, 1, {I(1), I(1), I(6)});
}

TEST_CASE("capture: ROLLBACK TO a savepoint publishes only what stays") {
  readings f;
  REQUIRE_FALSE(
      f.txn("INSERT INTO reading VALUES(1,'keep',1,1); INSERT INTO reading VALUES(2,'old',2,2)"));
  f.drain();
  f.clear();
  REQUIRE_FALSE(
      f.txn("INSERT INTO reading VALUES(3,'new',3,3);"
            "SAVEPOINT sp;"
            "INSERT INTO reading VALUES(4,'gone',4,4);"
            "UPDATE reading SET name='undone' WHERE id IN (2,3);"
            "DELETE FROM reading WHERE id=1;"
            "ROLLBACK TO sp; RELEASE sp;"));
  f.drain();
  auto ev = f.events("reading");
  if (master::has_preupdate_hook()) {
    // Rows 1 and 2 are unchanged after the rollback: no event. Row 4 never committed.
    REQUIRE(ev.size() == 1);
    check_event(ev[0], event_kind::save, 1, {I(3), T("new"), R(3), I(3)});
  } else {
    // Without old values, rows touched and restored are re-sent with their (unchanged) state.
    REQUIRE(ev.size() == 3);
    for (auto& e : ev) CHECK(e.kind == event_kind::save);
  }
  for (auto& e : ev) CHECK(e.values[0] != I(4));
}

TEST_CASE("capture: a full rollback publishes nothing and consumes no seq") {
  readings f;
  REQUIRE_FALSE(f.m->begin());
  f.sql("INSERT INTO reading VALUES(1,'x',1,1)");
  REQUIRE_FALSE(f.m->rollback());
  // A body error rolls back too.
  CHECK(f.m->transaction([&](sqlite3* d) {
    sqlite3_exec(d, "INSERT INTO reading VALUES(2,'y',1,1)", nullptr, nullptr, nullptr);
    return make_error_code(errc::invalid_argument);
  }) == errc::invalid_argument);
  CHECK(f.count("SELECT count(*) FROM reading") == 0);
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(3,'z',1,1)"));
  auto ev = drained(f, "reading", 1);
  check_event(ev[0], event_kind::save, 1, {I(3), T("z"), R(1), I(1)});
  CHECK(f.seqs("reading") == std::vector<std::uint64_t>{1});
}

TEST_CASE("capture: the same row changed 1000 times in one transaction is one event") {
  readings f;
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',0,0)"));
  REQUIRE_FALSE(txn_each(f, "UPDATE reading SET value=?1 WHERE id=1", 1000));
  auto ev = drained(f, "reading", 2);
  check_event(ev[1], event_kind::save, 2, {I(1), T("a"), R(1000), I(0)});
}

TEST_CASE("capture: unregistered tables produce nothing and are not refused") {
  readings f;
  f.sql("CREATE TABLE other(id INTEGER PRIMARY KEY, x)");
  f.sql("INSERT INTO other VALUES(1, 2)");  // autocommit, outside the API: fine
  REQUIRE_FALSE(f.txn("INSERT INTO other VALUES(2, 3)"));
  f.drain();
  CHECK(f.got.empty());
  CHECK(f.count("SELECT count(*) FROM other") == 2);
}

TEST_CASE("capture: WITHOUT ROWID tables") {
  master_fixture f;
  f.sql("CREATE TABLE kv(k TEXT, n INTEGER, v BLOB, PRIMARY KEY(k, n)) WITHOUT ROWID");
  table_options o = stream_of("kv");
  std::error_code ec = f.m->register_table(o);
  if (!master::has_preupdate_hook()) {
    CHECK(ec == errc::unsupported_table);
    CHECK(f.m->last_error_message().find("WITHOUT ROWID") != std::string::npos);
    return;
  }
  REQUIRE_FALSE(ec);
  REQUIRE_FALSE(f.txn("INSERT INTO kv VALUES('a', 1, x'01')"));
  REQUIRE_FALSE(f.txn("UPDATE kv SET v=x'0203' WHERE k='a'"));
  REQUIRE_FALSE(f.txn("UPDATE kv SET n=2 WHERE k='a'"));
  REQUIRE_FALSE(f.txn("DELETE FROM kv"));
  auto ev = drained(f, "kv", 5);
  check_event(ev[0], event_kind::save, 1, {T("a"), I(1), value::blob("\x01", 1)});
  check_event(ev[1], event_kind::save, 2, {T("a"), I(1), value::blob("\x02\x03", 2)});
  check_event(ev[2], event_kind::remove, 3, {T("a"), I(1)});
  check_event(ev[3], event_kind::save, 1, {T("a"), I(2), value::blob("\x02\x03", 2)});
  check_event(ev[4], event_kind::remove, 2, {T("a"), I(2)});
}

TEST_CASE("capture: filtered rows send no save, deletes are always sent") {
  master_fixture f;
  table_options o = stream_of("s");
  o.filter = [](const row_ref& r) { return r.get("public").i == 1; };
  f.add_table("CREATE TABLE s(id INTEGER PRIMARY KEY, public INTEGER, x TEXT)", o);
  REQUIRE_FALSE(f.txn("INSERT INTO s VALUES(1,1,'pub'); INSERT INTO s VALUES(2,0,'priv')"));
  REQUIRE_FALSE(f.txn("UPDATE s SET public=1 WHERE id=2"));
  REQUIRE_FALSE(f.txn("DELETE FROM s WHERE id=2"));
  auto ev = drained(f, "s", 3);
  check_event(ev[0], event_kind::save, 1, {I(1), I(1), T("pub")});
  // The version counts the filtered change too.
  check_event(ev[1], event_kind::save, 2, {I(2), I(1), T("priv")});
  check_event(ev[2], event_kind::remove, 3, {I(2)});
}

TEST_CASE("capture: a column subset, and changes to unsent columns only") {
  master_fixture f;
  table_options o = stream_of("w");
  o.columns = {"b", "id"};
  f.add_table("CREATE TABLE w(id INTEGER PRIMARY KEY, a TEXT, secret TEXT, b INTEGER)", o);
  schema s;
  REQUIRE(f.m->schema_of("w", s));
  REQUIRE(s.columns.size() == 2);
  CHECK(s.columns[0].name == "b");
  CHECK(s.pk == std::vector<std::uint32_t>{1});
  REQUIRE_FALSE(f.txn("INSERT INTO w VALUES(1,'x','pw',5)"));
  REQUIRE_FALSE(f.txn("UPDATE w SET secret='pw2' WHERE id=1"));
  f.drain();
  auto ev = f.events("w");
  if (master::has_preupdate_hook()) {
    REQUIRE(ev.size() == 1);  // the sent columns did not change
  } else {
    REQUIRE(ev.size() == 2);
  }
  check_event(ev[0], event_kind::save, 1, {I(5), I(1)});
}

TEST_CASE("capture: tracked columns carry their previous values when they changed") {
  master_fixture f;
  table_options o = stream_of("acc");
  o.tracked = {"status", "balance"};
  f.add_table("CREATE TABLE acc(id INTEGER PRIMARY KEY, status TEXT, balance INTEGER, note TEXT)",
              o);
  REQUIRE_FALSE(f.txn("INSERT INTO acc VALUES(1,'new',10,'n')"));
  REQUIRE_FALSE(
      f.txn("UPDATE acc SET status='open', note='m' WHERE id=1;"
            "UPDATE acc SET status='active' WHERE id=1"));
  auto ev = drained(f, "acc", 2);
  CHECK(ev[0].previous.empty());
  check_event(ev[1], event_kind::save, 2, {I(1), T("active"), I(10), T("m")});
  if (master::has_preupdate_hook()) {
    REQUIRE(ev[1].previous.size() == 1);
    CHECK(ev[1].previous[0].column == 1);
    CHECK(ev[1].previous[0].old == T("new"));
  } else {
    CHECK(ev[1].previous.empty());
  }
}

TEST_CASE("capture: custom serialization with a join") {
  master_fixture f;
  f.sql(
      "CREATE TABLE site(id INTEGER PRIMARY KEY, city TEXT);"
      "CREATE TABLE sensor(id INTEGER PRIMARY KEY, site_id INTEGER, kind TEXT)");
  table_options o = stream_of("sensor");
  o.serializer_sql =
      "SELECT sensor.id AS id, sensor.kind AS kind, site.city AS city FROM sensor "
      "LEFT JOIN site ON site.id = sensor.site_id WHERE sensor.id = ?1";
  REQUIRE_FALSE(f.m->register_table(o));
  schema s;
  REQUIRE(f.m->schema_of("sensor", s));
  REQUIRE(s.columns.size() == 3);
  CHECK(s.columns[2].name == "city");
  REQUIRE_FALSE(f.txn("INSERT INTO site VALUES(1,'Oslo'); INSERT INTO sensor VALUES(9,1,'temp')"));
  REQUIRE_FALSE(f.txn("DELETE FROM sensor WHERE id=9"));
  auto ev = drained(f, "sensor", 2);
  check_event(ev[0], event_kind::save, 1, {I(9), T("temp"), T("Oslo")});
  check_event(ev[1], event_kind::remove, 2, {I(9)});
}

TEST_CASE("capture: custom serialization callback, its failure fails the commit") {
  master_fixture f;
  table_options o = stream_of("c");
  o.serializer = [](const row_ref& in, std::vector<value>& out) -> std::error_code {
    if (in.get("name").size == 0) return make_error_code(errc::invalid_argument);
    out[1] = value::text("upper:" + std::string(in.get("name").bytes()));
    return {};
  };
  f.add_table("CREATE TABLE c(id INTEGER PRIMARY KEY, name TEXT)", o);
  REQUIRE_FALSE(f.txn("INSERT INTO c VALUES(1,'x')"));
  CHECK(f.txn("INSERT INTO c VALUES(2,'')") == errc::serialization_failed);
  CHECK(f.count("SELECT count(*) FROM c") == 1);
  auto ev = drained(f, "c", 1);
  check_event(ev[0], event_kind::save, 1, {I(1), T("upper:x")});
}

TEST_CASE("capture: a commit that bypasses the API is refused, never dropped") {
  readings f;
  char* err = nullptr;
  int rc = sqlite3_exec(f.db, "INSERT INTO reading VALUES(1,'x',1,1)", nullptr, nullptr, &err);
  sqlite3_free(err);
  CHECK(rc == SQLITE_CONSTRAINT);
  CHECK(sqlite3_extended_errcode(f.db) == SQLITE_CONSTRAINT_COMMITHOOK);
  rc = sqlite3_exec(f.db, "BEGIN; INSERT INTO reading VALUES(2,'y',1,1); COMMIT", nullptr, nullptr,
                    &err);
  sqlite3_free(err);
  CHECK(rc == SQLITE_CONSTRAINT);
  if (!sqlite3_get_autocommit(f.db)) f.sql("ROLLBACK");
  CHECK(f.count("SELECT count(*) FROM reading") == 0);
  CHECK(f.m->stats().unmanaged_writes_refused == 2);
  // COMMIT inside the body ends the transaction: commit() reports it and the change is refused.
  CHECK(f.txn("INSERT INTO reading VALUES(3,'z',1,1); COMMIT") == errc::sqlite_error);
  CHECK(f.count("SELECT count(*) FROM reading") == 0);
  // The API still works afterwards.
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(4,'ok',1,1)"));
  f.drain();
  CHECK(f.events("reading").size() == 1);
}

TEST_CASE("capture: a large transaction spans records with gap-free seqs") {
  master_config cfg;
  cfg.max_record_events = 100;
  readings f(cfg);
  REQUIRE_FALSE(txn_each(f, "INSERT INTO reading VALUES(?1,'n',1.5,0)", 1050));
  CHECK(f.count("SELECT count(*) FROM edgecqrs_outbox WHERE kind=0") == 11);
  f.drain();
  auto sq = f.seqs("reading");
  REQUIRE(sq.size() == 1050);
  for (std::size_t i = 0; i < sq.size(); ++i) CHECK(sq[i] == i + 1);
  auto ev = f.events("reading");
  CHECK(ev.back().values[0] == I(1050));
}

TEST_CASE("registration errors name the problem") {
  master_fixture f;
  f.sql(
      "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT); CREATE TABLE nopk(a, b);"
      "CREATE VIEW v AS SELECT * FROM t; CREATE TABLE t2(id INTEGER PRIMARY KEY)");
  // Each attempt in order (a success registers, so later attempts see it): the options, the
  // expected result (ok: must succeed) and what the error message must name.
  struct attempt {
    const char* table;
    const char* cqrs_id;
    std::vector<std::string> columns;
    std::vector<std::string> tracked;
    errc expect;
    const char* names;
  };
  const attempt attempts[] = {
      {"t", "bad/id", {}, {}, errc::invalid_cqrs_id, nullptr},
      {"t", "$sys", {}, {}, errc::invalid_cqrs_id, nullptr},
      {"missing", "t", {}, {}, errc::unknown_table, "missing"},
      {"t", "t", {"id", "nope"}, {}, errc::unknown_column, "nope"},
      {"t", "t", {"a"}, {}, errc::missing_primary_key, nullptr},
      {"t", "t", {}, {"zz"}, errc::unknown_column, nullptr},
      {"nopk", "t", {}, {}, errc::missing_primary_key, nullptr},
      {"v", "t", {}, {}, errc::unsupported_table, nullptr},
      {"edgecqrs_outbox", "t", {}, {}, errc::unsupported_table, nullptr},
      {"t", "t", {}, {}, errc::ok, nullptr},
      {"t", "t", {}, {}, errc::duplicate_cqrs_id, nullptr},
      {"t", "t-other", {}, {}, errc::already_registered, nullptr},
      {"t2", "t", {}, {}, errc::duplicate_cqrs_id, nullptr},
  };
  for (const attempt& a : attempts) {
    CAPTURE(a.table);
    CAPTURE(a.cqrs_id);
    table_options o;
    o.table = a.table;
    o.cqrs_id = a.cqrs_id;
    o.columns = a.columns;
    o.tracked = a.tracked;
    const std::error_code ec = f.m->register_table(o);
    if (a.expect == errc::ok) {
      REQUIRE_FALSE(ec);
      continue;
    }
    CHECK(ec == a.expect);
    if (a.names) CHECK(f.m->last_error_message().find(a.names) != std::string::npos);
  }
}

TEST_CASE("produce off: registered, nothing captured, still syncable") {
  master_fixture f;
  table_options o = stream_of("q");
  o.produce = false;
  f.add_table("CREATE TABLE q(id INTEGER PRIMARY KEY, x INTEGER)", o);
  REQUIRE_FALSE(f.txn("INSERT INTO q VALUES(1, 1)"));
  f.drain();
  CHECK(f.events("q").empty());
  std::size_t n = 0;
  REQUIRE_FALSE(f.m->sync("q", "", {}, "", &n));
  CHECK(n == 1);
  auto ev = drained(f, "q", 1);
  CHECK(ev[0].kind == event_kind::sync);
}

TEST_CASE("nested begin and commit without begin are errors") {
  readings f;
  CHECK(f.m->commit() == errc::not_in_transaction);
  CHECK(f.m->rollback() == errc::not_in_transaction);
  REQUIRE_FALSE(f.m->begin());
  CHECK(f.m->begin() == errc::nested_transaction);
  CHECK(f.m->poll() == errc::nested_transaction);
  REQUIRE_FALSE(f.m->commit());
}

TEST_CASE("capture: tables with generated columns send computed values") {
  master_fixture f;
  f.sql(
      "CREATE TABLE g(a INTEGER, id INTEGER PRIMARY KEY, b INTEGER, "
      "s INTEGER GENERATED ALWAYS AS (a + b) VIRTUAL, p INTEGER AS (a * b) STORED)");
  REQUIRE_FALSE(f.m->register_table(stream_of("g")));
  REQUIRE_FALSE(f.txn("INSERT INTO g(a, id, b) VALUES(2, 1, 3)"));
  REQUIRE_FALSE(f.txn("UPDATE g SET b = 4 WHERE id = 1"));
  REQUIRE_FALSE(f.txn("DELETE FROM g WHERE id = 1"));
  auto ev = drained(f, "g", 3);
  check_event(ev[0], event_kind::save, 1, {I(2), I(1), I(3), I(5), I(6)});
  check_event(ev[1], event_kind::save, 2, {I(2), I(1), I(4), I(6), I(8)});
  check_event(ev[2], event_kind::remove, 3, {I(1)});
}

TEST_CASE("capture: ROLLBACK TO hidden behind a comment is still seen") {
  master_fixture f;
  f.add_table("CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)", stream_of("r"));
  REQUIRE_FALSE(
      f.txn("INSERT INTO r VALUES(1, 'a'); SAVEPOINT s; UPDATE r SET v = 'b';"
            "/* undo */ ROLLBACK TO s; RELEASE s"));
  auto ev = drained(f, "r", 1);
  check_event(ev[0], event_kind::save, 1, {I(1), T("a")});
}

// The hook reads TEXT without sqlite3_value_text's terminated copy when the database is UTF-8,
// and through sqlite3_value_text (converted to UTF-8) otherwise: both must publish the same
// UTF-8 values, for stream values, text keys, no-op detection and tracked previous values.
namespace {

void text_values_case(const char* encoding) {
  temp_dir dir("text");
  std::string path = dir.file("t.db");
  {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &raw) == SQLITE_OK);
    std::string pragma = std::string("PRAGMA encoding='") + encoding + "'";
    REQUIRE(sqlite3_exec(raw, pragma.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_exec(raw, "CREATE TABLE t(k TEXT PRIMARY KEY, a TEXT, b TEXT) WITHOUT ROWID;",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(raw);
  }
  {
    master_fixture f({}, path);
    table_options o = stream_of("t");
    o.tracked = {"a"};
    REQUIRE_FALSE(f.m->register_table(o));
    const std::string k = "cl\xc3\xa9-\xe2\x82\xac";  // "clé-€"
    REQUIRE_FALSE(f.txn("INSERT INTO t VALUES('" + k + "', 'caf\xc3\xa9', '')"));
    // No-op change: same values written back, nothing sent.
    REQUIRE_FALSE(f.txn("UPDATE t SET a = 'caf\xc3\xa9', b = ''"));
    REQUIRE_FALSE(f.txn("UPDATE t SET a = '\xf0\x9f\x98\x80 smile' WHERE k = '" + k + "'"));
    REQUIRE_FALSE(f.txn("DELETE FROM t"));
    auto ev = drained(f, "t", 3);
    check_event(ev[0], event_kind::save, 1, {T(k), T("caf\xc3\xa9"), T("")});
    check_event(ev[1], event_kind::save, 2, {T(k), T("\xf0\x9f\x98\x80 smile"), T("")});
    REQUIRE(ev[1].previous.size() == 1);
    CHECK(ev[1].previous[0].old == T("caf\xc3\xa9"));
    check_event(ev[2], event_kind::remove, 3, {T(k)});
  }
}

}  // namespace

TEST_CASE("capture: TEXT values, keys and previous values in a UTF-8 database") {
  if (!master::has_preupdate_hook()) return;  // text keys need the pre-update hook
  text_values_case("UTF-8");
}

TEST_CASE("capture: TEXT values, keys and previous values in a UTF-16 database") {
  if (!master::has_preupdate_hook()) return;
  text_values_case("UTF-16le");
}

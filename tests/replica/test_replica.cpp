// Replica rules, one test case each: messages are encoded with the codec and handed to
// replica::on_message directly (no broker, fake clock).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>
#include <vector>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "replica_unit.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct fixture : replica_unit {
  explicit fixture(const char* ddl = items_ddl) : replica_unit("replica", ddl) {}
  static replica_table_options default_table() { return into_table("items"); }
  void send_schema(const schema& s) {
    CHECK_FALSE(deliver("edgecqrs/v1/s/" + s.cqrs_id, encode(s)));
  }
  // Schema known and the initial re-sync answered with an empty table (the master answers with
  // the request's nonce as session id).
  void ready() {
    send_schema(sch);
    auto c = tp.take_controls();
    REQUIRE(c.size() == 1);
    message m = msg(sch, 0, {});
    m.has_resync = true;
    m.resync = {c[0].from_seq, 0, 0, true};
    CHECK_FALSE(send_direct(m));
    tp.sent.clear();
  }
  // An operator re-sync request: the nonce its answer must carry.
  std::uint64_t ask() {
    CHECK_FALSE(r->request_resync("items"));
    auto c = tp.take_controls();
    REQUIRE(c.size() == 1);
    CHECK(c[0].op == control_op::resync);
    return c[0].from_seq;
  }
};

}  // namespace

TEST_CASE("open and register validate names, tables and mapped columns") {
  fixture f;
  std::unique_ptr<replica> r;
  replica_options bad = f.ro;
  bad.name = "a/b";
  CHECK(replica::open(f.db, bad, r) == make_error_code(errc::invalid_replica_name));
  bad = f.ro;
  bad.topic_prefix = "x/+";
  CHECK(replica::open(f.db, bad, r) == make_error_code(errc::invalid_topic_prefix));
  REQUIRE_FALSE(replica::open(f.db, f.ro, r));
  replica_table_options t;
  t.local_table = "items";
  CHECK(r->register_table("it#ems", t) == make_error_code(errc::invalid_cqrs_id));
  replica_table_options missing;
  missing.local_table = "nope";
  CHECK(r->register_table("x", missing) == make_error_code(errc::unknown_table));
  replica_table_options badmap = t;
  badmap.mapping = {{"title", "no_such_column"}};
  CHECK(r->register_table("x", badmap) == make_error_code(errc::unknown_column));
  CHECK(r->last_error().find("no_such_column") != std::string::npos);
  CHECK(r->register_table("x", replica_table_options{}) == make_error_code(errc::invalid_argument));
  CHECK_FALSE(r->register_table("items", t));
  CHECK(r->register_table("items", t) == make_error_code(errc::duplicate_cqrs_id));
}

TEST_CASE("attach subscribes event, direct and schema topics; first schema asks a re-sync") {
  fixture f;
  f.open();
  CHECK(f.tp.subs.count("edgecqrs/v1/e/items") == 1);
  CHECK(f.tp.subs.count("edgecqrs/v1/d/gw1/items") == 1);
  CHECK(f.tp.subs.count("edgecqrs/v1/s/items") == 1);
  f.send_schema(f.sch);
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::resync);
  CHECK(c[0].replica == "gw1");
  // Delivery through the transport callback applies as well.
  auto b = encode(msg(f.sch, 1, {save(1, {I(1), T("a"), I(5)})}));
  incoming_message im;
  im.topic = "edgecqrs/v1/e/items";
  im.data = b.data();
  im.size = b.size();
  f.tp.subs["edgecqrs/v1/e/items"](im);
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|5"});
}

TEST_CASE("save, update and delete apply in order and count") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(5)}), save(1, {I(2), T("b"), I(6)})})));
  CHECK_FALSE(f.send(msg(f.sch, 3, {save(2, {I(1), T("a2"), value::null()})})));
  CHECK_FALSE(f.send(msg(f.sch, 4, {del(2, {I(2)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'a2'|NULL"});
  auto s = f.r->stats();
  CHECK(s.events_applied == 4);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 4);
  CHECK(ss.seen_ranges == 0);
}

TEST_CASE("older and equal versions are skipped and counted; deletes leave tombstones") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(3, {I(1), T("v3"), I(3)})})));
  CHECK_FALSE(f.send(msg(f.sch, 2, {save(2, {I(1), T("v2"), I(2)})})));  // reordered: older
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(3, {I(1), T("v3"), I(3)})})));  // redelivered
  CHECK(f.rows() == std::vector<std::string>{"1|'v3'|3"});
  auto s = f.r->stats();
  CHECK(s.skipped_stale == 1);
  CHECK(s.duplicates == 1);
  // Versioned delete: a late save of an older version does not resurrect the row.
  CHECK_FALSE(f.send(msg(f.sch, 3, {del(4, {I(1)})})));
  CHECK(f.rows().empty());
  CHECK_FALSE(f.send(msg(f.sch, 4, {save(3, {I(1), T("late"), I(9)})})));
  CHECK(f.rows().empty());
  CHECK(one(f.db, "SELECT version, deleted FROM edgecqrs_r_rows") == "4|1");
  // A newer save re-creates it (the key was re-inserted on the master).
  CHECK_FALSE(f.send(msg(f.sch, 5, {save(5, {I(1), T("again"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'again'|1"});
}

TEST_CASE("sync rule: equal version repairs, older never downgrades, tombstone not resurrected") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(5, {I(1), T("v5"), I(5)})})));
  sqlite3_exec(f.db, "UPDATE items SET name='tampered'", nullptr, nullptr, nullptr);
  CHECK_FALSE(f.send(msg(f.sch, 0, {sync(5, {I(1), T("v5"), I(5)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'v5'|5"});
  CHECK_FALSE(f.send(msg(f.sch, 0, {sync(4, {I(1), T("v4"), I(4)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'v5'|5"});
  CHECK(f.r->stats().skipped_stale == 1);
  CHECK_FALSE(f.send(msg(f.sch, 0, {sync(6, {I(1), T("v6"), I(6)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'v6'|6"});
  CHECK_FALSE(f.send(msg(f.sch, 2, {del(7, {I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 0, {sync(7, {I(1), T("ghost"), I(7)})})));
  CHECK(f.rows().empty());
  // A sync outside the stream must carry seq 0, a stream event must not be a sync.
  CHECK(f.send(msg(f.sch, 3, {sync(9, {I(3), T("x"), I(1)})})) ==
        make_error_code(errc::schema_mismatch));
}

TEST_CASE("primary-key change arrives as delete of the old key and save of the new") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 2, {del(2, {I(1)}), save(1, {I(10), T("a"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"10|'a'|1"});
  // A late copy of the old key's save stays dead.
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"10|'a'|1"});
}

TEST_CASE("mapping renames columns, unknown remote columns are ignored or rejected") {
  fixture f("CREATE TABLE items(pk INTEGER PRIMARY KEY, title TEXT NOT NULL, qty INTEGER)");
  replica_table_options t;
  t.local_table = "items";
  t.mapping = {{"id", "pk"}, {"name", "title"}};
  f.open(t);
  schema s = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"},
                                   {"colour", "TEXT"}}, {0});
  f.sch = s;
  f.ready();
  CHECK_FALSE(f.send(msg(s, 1, {save(1, {I(1), T("a"), I(2), T("red")})})));
  CHECK(dump(f.db, "SELECT pk, title, qty FROM items") == std::vector<std::string>{"1|'a'|2"});

  fixture g("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)");
  replica_table_options strict = fixture::default_table();
  strict.unknown_columns = unknown_column_policy::reject;
  g.open(strict);
  g.sch = s;
  g.ready();
  CHECK(g.send(msg(s, 1, {save(1, {I(1), T("a"), I(2), T("red")})})) ==
        make_error_code(errc::schema_mismatch));
  CHECK(g.rows().empty());
  CHECK(g.r->last_error().find("colour") != std::string::npos);
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(g.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].reason == make_error_code(errc::schema_mismatch));

  // An explicit drop ("") is not an unknown column.
  fixture h;
  replica_table_options drop = strict;
  drop.mapping = {{"colour", ""}};
  h.open(drop);
  h.sch = s;
  h.ready();
  CHECK_FALSE(h.send(msg(s, 1, {save(1, {I(1), T("a"), I(2), T("red")})})));
  CHECK(h.rows() == std::vector<std::string>{"1|'a'|2"});
}

TEST_CASE("schema evolution: a master that adds a column keeps an older replica working") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  schema v2 = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"},
                                    {"added", "REAL"}}, {0});
  f.send_schema(v2);
  CHECK(f.tp.take_controls().empty());  // same incarnation: no re-sync
  CHECK_FALSE(f.send(msg(v2, 2, {save(2, {I(1), T("b"), I(2), value::real(1.5)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'b'|2"});
  // Old-tag messages still in flight apply too.
  CHECK_FALSE(f.send(msg(f.sch, 3, {save(1, {I(2), T("c"), I(3)})})));
  CHECK(f.rows().size() == 2);
}

TEST_CASE("a required local column the events do not carry is reported clearly") {
  fixture f("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER,"
            " site TEXT NOT NULL)");
  f.open();
  f.ready();
  CHECK(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})) ==
        make_error_code(errc::missing_required_column));
  CHECK(f.r->last_error().find("'site'") != std::string::npos);
  CHECK(f.rows().empty());
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].reason == make_error_code(errc::missing_required_column));
  CHECK(dl[0].detail.find("site") != std::string::npos);
}

TEST_CASE("handlers get mapped values, previous values, meta and is_sync; no-DB mode") {
  fixture f;
  std::vector<std::string> calls;
  replica_table_options t;  // no local table: handlers only
  t.mapping = {{"name", "label"}};
  t.pass_meta = true;
  auto describe = [&](const char* what, const change& c) {
    std::string s = what;
    s += c.is_sync ? " sync" : "";
    s += c.direct ? " direct" : "";
    s += " v" + std::to_string(c.row_version);
    for (const auto& cv : c.values)
      s += " " + std::string(cv.column) + "=" +
           (cv.v->type() == value_type::text ? std::string(cv.v->bytes())
                                             : std::to_string(cv.v->as_integer()));
    for (const auto& pv : c.previous) s += " prev." + std::string(pv.column);
    if (c.meta)
      for (const auto& [k, v] : *c.meta) s += " meta." + k;
    if (!c.correlation_id.empty()) s += " corr=" + std::string(c.correlation_id);
    CHECK(c.db == nullptr);
    calls.push_back(s);
    return std::error_code{};
  };
  t.on_create = [&](const change& c) { return describe("create", c); };
  t.on_update = [&](const change& c) { return describe("update", c); };
  t.on_delete = [&](const change& c) { return describe("delete", c); };
  f.open(t);
  f.ready();
  event e1 = save(1, {I(7), T("a"), I(1)});
  e1.meta = {{"user", T("bob")}};
  e1.correlation_id = "c-1";
  event e2 = save(2, {I(7), T("b"), I(1)});
  e2.previous = {{1, T("a")}};
  CHECK_FALSE(f.send(msg(f.sch, 1, {e1, e2, del(3, {I(7)})})));
  CHECK_FALSE(f.send_direct(msg(f.sch, 0, {sync(4, {I(7), T("s"), I(2)})})));
  CHECK_FALSE(f.send(msg(f.sch, 1, {e1})));  // duplicate: no call
  REQUIRE(calls.size() == 4);
  CHECK(calls[0] == "create v1 id=7 label=a qty=1 meta.user corr=c-1");
  CHECK(calls[1] == "update v2 id=7 label=b qty=1 prev.label");
  CHECK(calls[2] == "delete v3 id=7");
  CHECK(calls[3] == "create sync direct v4 id=7 label=s qty=2");
}

TEST_CASE("only-direct-syncs ignores broadcast syncs; direct messages for others are ignored") {
  fixture f;
  replica_table_options t = fixture::default_table();
  t.only_direct_syncs = true;
  f.open(t);
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 0, {sync(1, {I(1), T("bcast"), I(1)})})));
  CHECK(f.rows().empty());
  CHECK_FALSE(f.send_direct(msg(f.sch, 0, {sync(1, {I(1), T("direct"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'direct'|1"});
  CHECK(f.deliver("edgecqrs/v1/d/other/items", encode(msg(f.sch, 0, {sync(2, {I(1), T("x"), I(1)})}))) ==
        make_error_code(errc::not_for_this_replica));
  message m = msg(f.sch, 0, {sync(3, {I(1), T("y"), I(1)})});
  m.target = "other";
  CHECK(f.send_direct(m) == make_error_code(errc::not_for_this_replica));
  CHECK(f.rows() == std::vector<std::string>{"1|'direct'|1"});
}

TEST_CASE("a gap not filled within the reorder window is replayed, with backoff") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 4, {save(1, {I(4), T("d"), I(1)})})));
  CHECK(f.r->stats().gaps_detected == 1);
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().empty());  // within the reorder window
  f.clk.advance(f.ro.reorder_window_ms);
  CHECK_FALSE(f.r->poll());
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::replay);
  CHECK(c[0].from_seq == 2);
  CHECK(c[0].to_seq == 3);
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().empty());  // backoff
  f.clk.advance(2 * f.ro.request_backoff_initial_ms);
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().size() == 1);
  // The replay answer arrives on the direct topic with the original seqs.
  message ans = msg(f.sch, 2, {save(1, {I(2), T("b"), I(1)}), save(1, {I(3), T("c"), I(1)})});
  ans.reply_to = "gw1";
  CHECK_FALSE(f.send_direct(ans));
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 4);
  CHECK(f.r->stats().gaps_repaired == 1);
  CHECK(f.rows().size() == 4);
}

TEST_CASE("a heartbeat reveals a lost tail; checkpoint and seen set survive a restart") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 3, {save(1, {I(3), T("c"), I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 6, {})));  // heartbeat: seqs up to 5 exist
  f.open();                                // restart
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 1);
  CHECK(ss.head == 5);
  CHECK(ss.seen_ranges == 1);
  f.clk.advance(f.ro.reorder_window_ms);
  CHECK_FALSE(f.r->poll());
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 2);
  CHECK(c[0].from_seq == 2);
  CHECK(c[0].to_seq == 2);
  CHECK(c[1].from_seq == 4);
  CHECK(c[1].to_seq == 5);
}

TEST_CASE("re-sync session: sync rule, removal of rows it did not carry, checkpoint") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), save(1, {I(2), T("b"), I(1)}),
                                    save(1, {I(3), T("c"), I(1)})})));
  // Lost: seq 4..9 (row 2 deleted, row 1 updated, ...). Seq 10 touches row 3 after the snapshot.
  CHECK_FALSE(f.send(msg(f.sch, 10, {save(3, {I(3), T("c3"), I(1)})})));
  const std::uint64_t session = f.ask();
  message p0 = msg(f.sch, 0, {sync(2, {I(1), T("a2"), I(1)})});
  p0.has_resync = true;
  p0.resync = {session, 9, 0, false};
  message p1 = msg(f.sch, 0, {sync(1, {I(5), T("e"), I(1)})});
  p1.has_resync = true;
  p1.resync = {session, 9, 1, true};
  CHECK_FALSE(f.send_direct(p0));
  CHECK_FALSE(f.send_direct(p1));
  CHECK(f.rows() == std::vector<std::string>{"1|'a2'|1", "3|'c3'|1", "5|'e'|1"});
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 10);
  CHECK(f.r->stats().rows_removed_by_resync == 1);
  CHECK(f.r->stats().resyncs_completed == 2);
  // A redelivered last part does not complete the session again (it would remove row 6,
  // which a later direct sync brought).
  CHECK_FALSE(f.send_direct(msg(f.sch, 0, {sync(1, {I(6), T("f"), I(1)})})));
  CHECK_FALSE(f.send_direct(p1));
  CHECK(f.r->stats().resyncs_completed == 2);
  CHECK(f.rows().size() == 4);
  CHECK(f.tp.take_controls().empty());
}

TEST_CASE("a re-sync with a lost part is requested again and removes nothing") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  message p1 = msg(f.sch, 0, {sync(1, {I(2), T("b"), I(1)})});
  p1.has_resync = true;
  p1.resync = {f.ask(), 1, 1, true};  // part 0 never arrived
  CHECK_FALSE(f.send_direct(p1));
  CHECK(f.rows().size() == 2);
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::resync);
}

TEST_CASE("one running re-sync session: a competing one is ignored, a stalled one is taken over") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), save(1, {I(2), T("b"), I(1)})})));
  auto part = [&](std::uint64_t session, std::uint64_t upto, std::uint64_t n, bool last,
                  std::vector<event> evs) {
    message m = msg(f.sch, 0, std::move(evs));
    m.has_resync = true;
    m.resync = {session, upto, n, last};
    return m;
  };
  // Three requests went out (sessions answer with their nonces).
  const std::uint64_t s30 = f.ask(), s31 = f.ask(), s32 = f.ask();
  // Session 30 runs (part 0 of 2: its last part never comes).
  CHECK_FALSE(f.send_direct(part(s30, 2, 0, false, {sync(1, {I(1), T("a"), I(1)})})));
  // Session 31 competes: ignored whole, also its last part (which would otherwise remove row 2,
  // marked by no session of its own).
  const auto ignored = f.r->stats().ignored;
  CHECK_FALSE(f.send_direct(part(s31, 2, 0, false, {sync(1, {I(1), T("a"), I(1)})})));
  CHECK_FALSE(f.send_direct(part(s31, 2, 1, true, {sync(5, {I(9), T("z"), I(1)})})));
  CHECK(f.r->stats().ignored == ignored + 2);
  CHECK(f.r->stats().rows_removed_by_resync == 0);
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1", "2|'b'|1"});
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.resync_session == s30);
  // After the stall time without a part of session 30, a new session takes over and completes.
  f.clk.advance(11000);
  CHECK_FALSE(f.send_direct(part(s32, 2, 0, true, {sync(1, {I(1), T("a"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1"});  // row 2 is gone on the master
  CHECK(f.r->stats().rows_removed_by_resync == 1);
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.resync_session == s32);
  // A late last part of the stalled session 30 is ignored (it would remove row 1).
  CHECK_FALSE(f.send_direct(part(s30, 2, 1, true, {})));
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1"});
}

TEST_CASE("a database from before re-sync ownership is migrated on open") {
  fixture f;
  REQUIRE(sqlite3_exec(f.db,
                       "CREATE TABLE edgecqrs_r_streams(sid INTEGER PRIMARY KEY, cqrs_id TEXT UNIQUE"
                       " NOT NULL, incarnation BLOB, checkpoint INTEGER NOT NULL DEFAULT 0, head"
                       " INTEGER NOT NULL DEFAULT 0, seen BLOB, resync_session INTEGER NOT NULL"
                       " DEFAULT 0, resync_parts INTEGER NOT NULL DEFAULT 0);"
                       "INSERT INTO edgecqrs_r_streams(cqrs_id, checkpoint, head) VALUES('items', 7, 9)",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  f.open();
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 7);
  CHECK(ss.head == 9);
  CHECK(one(f.db, "SELECT count(*) FROM pragma_table_info('edgecqrs_r_streams') WHERE name IN"
                  " ('resync_at_ms','resync_done','resync_done_upto','resync_skip','resync_want',"
                  " 'resync_asked','resync_asks')") == "7");
  f.open();  // a second open finds it migrated
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 7);
}

TEST_CASE("a new master incarnation resets the stream and re-syncs") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(4, {I(1), T("old"), I(1)}), save(1, {I(2), T("b"), I(1)})})));
  schema fresh = make_schema("items", f.sch.columns, {0}, 2);
  f.send_schema(fresh);
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::resync);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 0);
  // Old-incarnation messages are ignored from now on.
  CHECK(f.send(msg(f.sch, 2, {save(9, {I(3), T("x"), I(1)})})) == make_error_code(errc::stale_version));
  // The new master's rows start at version 1 again and win.
  message p = msg(fresh, 0, {sync(1, {I(1), T("new"), I(1)})});
  p.has_resync = true;
  p.resync = {c[0].from_seq, 0, 0, true};
  CHECK_FALSE(f.send_direct(p));
  CHECK(f.rows() == std::vector<std::string>{"1|'new'|1"});
}

TEST_CASE("unknown schema tag: parked, schema requested, applied when the schema arrives") {
  fixture f;
  f.open();
  f.send_schema(f.sch);
  f.tp.sent.clear();
  schema v2 = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"},
                                    {"x", "INTEGER"}}, {0});
  CHECK(f.send(msg(v2, 1, {save(1, {I(1), T("a"), I(1), I(0)})})) ==
        make_error_code(errc::unknown_schema));
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::schema);
  CHECK(f.rows().empty());
  f.send_schema(v2);
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1"});
  std::size_t n = 9;
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
}

TEST_CASE("handler failures retry with backoff, survive a restart, then dead-letter") {
  fixture f;
  std::set<std::int64_t> broken{2};
  auto make = [&] {
    replica_table_options t = fixture::default_table();
    t.on_create = [&](const change& c) -> std::error_code {
      std::int64_t id = c.values[0].v->as_integer();
      if (broken.count(id)) return make_error_code(std::errc::io_error);
      std::string sql = "INSERT INTO items(id, name) VALUES(" + std::to_string(id) + ", 'h')";
      return sqlite3_exec(c.db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
                 ? std::error_code{}
                 : make_error_code(errc::apply_failed);
    };
    return t;
  };
  f.ro.max_retries = 3;
  f.open(make());
  f.ready();
  // Two events: the good one commits, the failing one goes to the retry table.
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), save(1, {I(2), T("b"), I(1)})})));
  CHECK(f.rows().size() == 1);
  std::size_t pending = 0;
  REQUIRE_FALSE(f.r->pending_retries(pending));
  CHECK(pending == 1);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 2);  // handled durably: no gap
  f.open(make());            // restart: retry state is in SQLite
  REQUIRE_FALSE(f.r->pending_retries(pending));
  CHECK(pending == 1);
  broken.clear();
  CHECK_FALSE(f.r->poll());
  CHECK(f.rows().size() == 1);  // not due yet
  f.clk.advance(f.ro.retry_initial_ms);
  CHECK_FALSE(f.r->poll());
  CHECK(f.rows().size() == 2);
  CHECK(f.r->stats().retries_succeeded == 1);

  // Exhausted: dead letter with key, reason and the event's bytes.
  broken.insert(3);
  CHECK_FALSE(f.send(msg(f.sch, 3, {save(1, {I(3), T("c"), I(1)})})));
  for (int i = 0; i < 10; ++i) {
    f.clk.advance(f.ro.retry_max_ms);
    CHECK_FALSE(f.r->poll());
  }
  REQUIRE_FALSE(f.r->pending_retries(pending));
  CHECK(pending == 0);
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].reason == make_error_code(errc::handler_failed));
  CHECK(dl[0].cqrs_id == "items");
  REQUIRE(dl[0].key.size() == 1);
  CHECK(dl[0].key[0] == I(3));
  CHECK(dl[0].attempts == 3);
  message back;
  REQUIRE_FALSE(decode_message(reinterpret_cast<const std::uint8_t*>(dl[0].raw.data()),
                               dl[0].raw.size(), back));
  CHECK(back.first_seq == 3);
  // Operator retry after the cause is fixed.
  broken.clear();
  CHECK_FALSE(f.r->retry_dead_letter(dl[0].id));
  CHECK(f.rows().size() == 3);
}

TEST_CASE("SQL errors roll back only the failing event and retry it") {
  fixture f("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER"
            " CHECK(qty >= 0))");
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), save(1, {I(2), T("b"), I(-1)}),
                                    save(1, {I(3), T("c"), I(1)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1", "3|'c'|1"});
  CHECK(f.r->stats().retries_scheduled == 1);
  CHECK(f.r->stats().events_applied == 2);
  // The failing row stays unknown to the version store: a fixed later version applies.
  CHECK_FALSE(f.send(msg(f.sch, 4, {save(2, {I(2), T("b"), I(0)})})));
  CHECK(f.rows().size() == 3);
  f.clk.advance(f.ro.retry_initial_ms);
  CHECK_FALSE(f.r->poll());  // the retry is now stale: resolved, not dead-lettered
  std::size_t n = 1;
  REQUIRE_FALSE(f.r->pending_retries(n));
  CHECK(n == 0);
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
}

TEST_CASE("expired messages are dead-lettered; an operator retry applies them") {
  fixture f;
  f.open();
  f.ready();
  message m = msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})});
  m.expires_ms = f.clk.now_ms() - 1;
  CHECK(f.send(m) == make_error_code(errc::expired));
  CHECK(f.rows().empty());
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 1);  // handled: the master's expiry is its decision
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].reason == make_error_code(errc::expired));
  CHECK(dl[0].raw == std::string(reinterpret_cast<const char*>(encode(m).data()), encode(m).size()));
  CHECK_FALSE(f.r->retry_dead_letter(dl[0].id));
  CHECK(f.rows().size() == 1);
  m.expires_ms = f.clk.now_ms() + 1000;
  m.first_seq = 2;
  CHECK_FALSE(f.send(m));
}

TEST_CASE("an expired stream message schedules one re-sync reaching past it, kept across a restart") {
  fixture f;
  f.open();
  f.ready();
  message m1 = msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})});
  m1.expires_ms = f.clk.now_ms() - 1;
  CHECK(f.send(m1) == make_error_code(errc::expired));
  auto c = f.tp.take_controls();
  REQUIRE(c.size() == 1);  // asked at once, without an operator
  CHECK(c[0].op == control_op::resync);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.resync_pending);
  // A second expired message while the re-sync is pending is coalesced into it.
  message m2 = msg(f.sch, 2, {save(1, {I(2), T("b"), I(1)}), save(1, {I(3), T("c"), I(1)})});
  m2.expires_ms = f.clk.now_ms() - 1;
  CHECK(f.send(m2) == make_error_code(errc::expired));
  CHECK(f.tp.take_controls().empty());
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().empty());  // backoff: not yet
  std::size_t n = 0;
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 2);  // still dead letters with reason "expired"
  // A restart before any answer: the wanted re-sync is persisted and asked for again.
  f.open();
  CHECK_FALSE(f.r->poll());
  c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::resync);
  // A session that read the master before seq 3 (its upto_seq below the checkpoint the request
  // was sent at) does not run nor satisfy it: asked again after the backoff, not at once.
  message early = msg(f.sch, 0, {sync(1, {I(1), T("a"), I(1)})});
  early.has_resync = true;
  early.resync = {c[0].from_seq, 1, 0, true};
  CHECK_FALSE(f.send_direct(early));
  CHECK(f.tp.take_controls().empty());
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.resync_pending);
  CHECK(f.r->stats().resync_parts_rejected == 1);
  f.clk.advance(10000);
  CHECK_FALSE(f.r->poll());
  c = f.tp.take_controls();
  REQUIRE(c.size() == 1);
  CHECK(c[0].op == control_op::resync);
  // One reaching past it converges the replica and ends the requests.
  message p0 = msg(f.sch, 0, {sync(1, {I(1), T("a"), I(1)}), sync(1, {I(2), T("b"), I(1)})});
  p0.has_resync = true;
  p0.resync = {c[0].from_seq, 3, 0, false};
  message p1 = msg(f.sch, 0, {sync(1, {I(3), T("c"), I(1)})});
  p1.has_resync = true;
  p1.resync = {c[0].from_seq, 3, 1, true};
  CHECK_FALSE(f.send_direct(p0));
  CHECK_FALSE(f.send_direct(p1));
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1", "2|'b'|1", "3|'c'|1"});
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK_FALSE(ss.resync_pending);
  CHECK(ss.checkpoint == 3);
  f.clk.advance(3600 * 1000);
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().empty());
  f.open();  // and after a restart too
  CHECK_FALSE(f.r->poll());
  CHECK(f.tp.take_controls().empty());
}

TEST_CASE("undecodable and invalid messages are dead-lettered whole, never partially applied") {
  fixture f;
  f.open();
  f.ready();
  bytes good = encode(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})}));
  bytes truncated(good.begin(), good.end() - 3);
  CHECK(f.deliver("edgecqrs/v1/e/items", truncated) == make_error_code(errc::truncated));
  bytes trailing = good;
  trailing.push_back(0);
  CHECK(f.deliver("edgecqrs/v1/e/items", trailing) == make_error_code(errc::trailing_bytes));
  // First event fine, second of the wrong width: nothing applied.
  CHECK(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), save(1, {I(2), T("b")})})) ==
        make_error_code(errc::schema_mismatch));
  CHECK(f.deliver("edgecqrs/v1/e/unknown", good) == make_error_code(errc::unknown_stream));
  CHECK(f.rows().empty());
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 4);
  CHECK(dl[0].reason == make_error_code(errc::truncated));
  CHECK(dl[0].detail == make_error_code(errc::truncated).message());
  CHECK(dl[0].raw.size() == truncated.size());
  CHECK(dl[2].reason == make_error_code(errc::schema_mismatch));
  CHECK(dl[3].cqrs_id == "unknown");
  // Hostile limits: oversized input is refused by the decoder's limit.
  f.ro.limits.max_message_bytes = 16;
  f.open();
  CHECK(f.deliver("edgecqrs/v1/e/items", encode(msg(f.sch, 9, {save(1, {I(9), T("0123456789abcdef"), I(1)})}))) ==
        make_error_code(errc::too_large));
}

TEST_CASE("the dead-letter table is bounded: oldest dropped; list, purge") {
  fixture f;
  f.ro.max_dead_letters = 3;
  f.open();
  f.ready();
  for (std::uint8_t i = 0; i < 5; ++i) {
    bytes junk{0xff, i};
    f.deliver("edgecqrs/v1/e/items", junk);
  }
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 3);
  CHECK(static_cast<std::uint8_t>(dl[0].raw[1]) == 2);
  CHECK(f.r->stats().dead_letters_dropped == 2);
  REQUIRE_FALSE(f.r->list_dead_letters(dl, 1, 1));
  REQUIRE(dl.size() == 1);
  CHECK(static_cast<std::uint8_t>(dl[0].raw[1]) == 3);
  CHECK_FALSE(f.r->purge_dead_letter(dl[0].id));
  CHECK(f.r->purge_dead_letter(dl[0].id) == make_error_code(errc::invalid_argument));
  std::size_t n = 0;
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 2);
  CHECK_FALSE(f.r->purge_dead_letters());
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
}

TEST_CASE("tombstones are pruned after the retention time once below the checkpoint") {
  fixture f;
  f.ro.tombstone_retention_ms = 1000;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)}), del(2, {I(1)})})));
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "1");
  f.clk.advance(500);
  CHECK_FALSE(f.r->poll());
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "1");
  f.clk.advance(120000);
  CHECK_FALSE(f.r->poll());
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "0");
  CHECK(f.r->stats().tombstones_pruned == 1);
}

TEST_CASE("identifiers are quoted and never taken from the wire; values are bound") {
  fixture f("CREATE TABLE \"we\"\"ird\"(\"k ey\" TEXT PRIMARY KEY, \"v;al\" BLOB)");
  replica_table_options t;
  t.local_table = "we\"ird";
  t.mapping = {{"k", "k ey"}, {"v", "v;al"}};
  REQUIRE_FALSE(replica::open(f.db, f.ro, f.r));
  REQUIRE_FALSE(f.r->register_table("weird", t));
  schema s = make_schema("weird", {{"k", "TEXT"}, {"v", "BLOB"},
                                   {"x\"); DROP TABLE \"we\"\"ird\"; --", "TEXT"}}, {0});
  CHECK_FALSE(f.deliver("edgecqrs/v1/s/weird", encode(s)));
  CHECK_FALSE(f.deliver("edgecqrs/v1/e/weird",
                        encode(msg(s, 1, {save(1, {T("'); DROP TABLE x; --"), value::blob("\0\1", 2),
                                                   T("ignored")})}))));
  CHECK(dump(f.db, "SELECT \"k ey\", length(\"v;al\") FROM \"we\"\"ird\"") ==
        std::vector<std::string>{"''); DROP TABLE x; --'|2"});
}

TEST_CASE("a storage failure keeps nothing of the message and leaves it to gap repair") {
  fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  std::string pages = one(f.db, "PRAGMA page_count");
  REQUIRE(sqlite3_exec(f.db, ("PRAGMA max_page_count=" + pages).c_str(), nullptr, nullptr,
                       nullptr) == SQLITE_OK);
  std::vector<event> big;
  std::string filler(3000, 'x');
  for (int i = 2; i < 40; ++i) big.push_back(save(1, {I(i), value::text(filler), I(i)}));
  message m = msg(f.sch, 2, big);
  CHECK(f.send(m) == make_error_code(errc::apply_failed));  // SQLITE_FULL
  CHECK(f.rows().size() == 1);
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.checkpoint == 1);
  CHECK(f.r->stats().commit_failures == 1);
  std::size_t n = 1;
  REQUIRE_FALSE(f.r->pending_retries(n));
  CHECK(n == 0);
  REQUIRE(sqlite3_exec(f.db, "PRAGMA max_page_count=1000000", nullptr, nullptr, nullptr) ==
          SQLITE_OK);
  CHECK_FALSE(f.send(m));  // the replay
  CHECK(f.rows().size() == 39);
}

TEST_CASE("a pending retry from a replaced master incarnation is dropped, not applied") {
  fixture f;
  bool broken = true;
  replica_table_options t = fixture::default_table();
  t.on_create = [&](const change& c) -> std::error_code {
    if (broken) return make_error_code(std::errc::io_error);
    std::string sql = "INSERT INTO items(id, name) VALUES(" +
                      std::to_string(c.values[0].v->as_integer()) + ", 'h')";
    return sqlite3_exec(c.db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
               ? std::error_code{}
               : make_error_code(errc::apply_failed);
  };
  f.open(t);
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("old"), I(1)})})));
  std::size_t n = 0;
  REQUIRE_FALSE(f.r->pending_retries(n));
  CHECK(n == 1);
  f.send_schema(make_schema("items", f.sch.columns, {0}, 3));
  broken = false;
  f.clk.advance(f.ro.retry_initial_ms);
  CHECK_FALSE(f.r->poll());
  REQUIRE_FALSE(f.r->pending_retries(n));
  CHECK(n == 0);
  CHECK(f.rows().empty());
  REQUIRE_FALSE(f.r->dead_letter_count(n));
  CHECK(n == 0);
}

TEST_CASE("shared subscriptions for workers; the seen-range set is bounded") {
  fixture f;
  f.ro.shared_group = "workers";
  f.ro.max_seen_ranges = 4;
  f.open();
  CHECK(f.tp.subs.count("$share/workers/edgecqrs/v1/e/items") == 1);
  CHECK(f.tp.subs.count("edgecqrs/v1/d/gw1/items") == 1);
  f.ready();
  // Every other seq arrives: each is a new range above the checkpoint.
  for (std::uint64_t seq = 2; seq <= 20; seq += 2)
    CHECK_FALSE(f.send(msg(f.sch, seq, {save(1, {I(static_cast<std::int64_t>(seq)), T("x"), I(1)})})));
  stream_status ss;
  REQUIRE_FALSE(f.r->status("items", ss));
  CHECK(ss.seen_ranges <= 4);
  CHECK(ss.head == 20);
  auto c = f.tp.take_controls();
  REQUIRE_FALSE(c.empty());
  CHECK(c.back().op == control_op::resync);
  CHECK(f.rows().size() == 10);  // applied at once all the same
}

TEST_CASE("a replica killed in the middle of a message keeps none of it; redelivery applies it") {
  for (int crash_at = 1; crash_at <= 7; crash_at += 3) {
    temp_dir dir("crash");
    const std::string path = dir.file("r.db");
    {
      sqlite3* db = nullptr;
      REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
      REQUIRE(sqlite3_exec(db, items_ddl, nullptr, nullptr, nullptr) == SQLITE_OK);
      sqlite3_close(db);
    }
    schema sch = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});
    message first = msg(sch, 1, {save(1, {I(100), T("kept"), I(1)})});
    std::vector<event> evs;
    for (int i = 0; i < 8; ++i) evs.push_back(save(1, {I(i), T("x"), I(i)}));
    message second = msg(sch, 2, evs);
    int calls = 0;
    auto open = [&](std::unique_ptr<replica>& r, bool crash) {
      replica_options ro;
      ro.name = "gw1";
      if (replica::open(path, ro, r)) return false;
      replica_table_options t;
      t.local_table = "items";
      t.on_create = [&, crash](const change& c) -> std::error_code {
        if (crash && ++calls == crash_at) _exit(42);  // as abrupt as kill -9: no unwinding
        std::string sql = "INSERT INTO items VALUES(" + std::to_string(c.values[0].v->as_integer()) +
                          ", 'x', 0)";
        return sqlite3_exec(c.db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
                   ? std::error_code{}
                   : make_error_code(errc::apply_failed);
      };
      return !r->register_table("items", t);
    };
    auto deliver = [](replica& r, const std::string& topic, const bytes& b) {
      return r.on_message(topic, b.data(), b.size());
    };
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      std::unique_ptr<replica> r;
      if (!open(r, false)) _exit(1);
      if (deliver(*r, "edgecqrs/v1/s/items", encode(sch))) _exit(2);
      if (deliver(*r, "edgecqrs/v1/e/items", encode(first))) _exit(3);
      r.reset();
      if (!open(r, true)) _exit(4);
      deliver(*r, "edgecqrs/v1/e/items", encode(second));
      _exit(5);  // not reached: the handler exits first
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 42);
    std::unique_ptr<replica> r;
    REQUIRE(open(r, false));
    stream_status ss;
    REQUIRE_FALSE(r->status("items", ss));
    CHECK(ss.checkpoint == 1);
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    CHECK(dump(db, "SELECT id FROM items") == std::vector<std::string>{"100"});
    CHECK_FALSE(deliver(*r, "edgecqrs/v1/e/items", encode(second)));
    CHECK(one(db, "SELECT count(*) FROM items") == "9");
    REQUIRE_FALSE(r->status("items", ss));
    CHECK(ss.checkpoint == 9);
    sqlite3_close(db);
  }
}

// Hostile single messages at a replica (issue 17): forged schemas, unknown-tag loops, keys of the
// wrong type, out-of-range versions and seqs, tombstone and dead-letter floods. Messages are
// encoded with the codec and handed to replica::on_message directly (no broker, fake clock).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cmath>
#include <limits>
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

struct hostile_fixture : replica_unit {
  explicit hostile_fixture(
      const char* ddl = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
      : replica_unit("hostile", ddl) {}
  std::error_code send_schema(const schema& s) {
    return deliver("edgecqrs/v1/s/" + s.cqrs_id, encode(s));
  }
  // Schema known and the initial re-sync answered with an empty table.
  void ready() {
    CHECK_FALSE(send_schema(sch));
    message m = msg(sch, 0, {});
    m.has_resync = true;
    m.resync = {1, 0, 0, true};
    CHECK_FALSE(deliver("edgecqrs/v1/d/gw1/items", encode(m)));
    tp.sent.clear();
  }
  std::vector<dead_letter> letters() {
    std::vector<dead_letter> dl;
    CHECK_FALSE(r->list_dead_letters(dl, 0, 1000));
    return dl;
  }
};

value R(double d) { return value::real(d); }

}  // namespace

// 17.2
TEST_CASE("a schema whose tag does not match its content is rejected and replaces nothing") {
  hostile_fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(5)})})));
  // Same tag, columns in another order: the tag is not the hash of this content.
  schema forged = f.sch;
  std::swap(forged.columns[1], forged.columns[2]);
  CHECK(f.send_schema(forged) == make_error_code(errc::bad_schema));
  auto dl = f.letters();
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].reason == make_error_code(errc::bad_schema));
  CHECK(dl[0].detail.find("tag") != std::string::npos);
  // The genuine schema still applies: values land in their own columns.
  CHECK_FALSE(f.send(msg(f.sch, 2, {save(2, {I(1), T("b"), I(6)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'b'|6"});
  // The genuine schema message itself is still accepted (same content under its tag).
  CHECK_FALSE(f.send_schema(f.sch));
}

// 17.2: FNV-1a is not a MAC; a colliding schema (found by a birthday search) must not replace the
// stored one under the same tag.
TEST_CASE("a schema colliding with a stored tag but with other content is rejected") {
  hostile_fixture f("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, x TEXT)");
  f.open();
  // Two declared types that collide under FNV-1a here (found offline by a birthday search).
  auto with_x = [](const char* t) {
    return make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}, {"x", t}},
                       {0});
  };
  const schema a = with_x("diopsmnd"), b = with_x("hrngxiew");
  REQUIRE(a.schema_tag == b.schema_tag);
  CHECK_FALSE(f.send_schema(a));
  CHECK(f.send_schema(b) == make_error_code(errc::bad_schema));
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_schemas") == "1");
  // The stored body is still a's.
  bytes stored;
  {
    sqlite3_stmt* q = nullptr;
    REQUIRE(sqlite3_prepare_v2(f.db, "SELECT body FROM edgecqrs_r_schemas", -1, &q, nullptr) ==
            SQLITE_OK);
    REQUIRE(sqlite3_step(q) == SQLITE_ROW);
    auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(q, 0));
    stored.assign(p, p + sqlite3_column_bytes(q, 0));
    sqlite3_finalize(q);
  }
  CHECK(stored == encode(a));
}

// 17.5
TEST_CASE("an unknown schema tag does not start a schema request loop; requests back off") {
  hostile_fixture f;
  f.open();
  f.ready();
  // The master answers every schema request at once with the retained (genuine) schema, as a
  // broker with a live master does.
  int rounds = 0;  // a loop is cut short here, so the count below shows it
  auto answer = [&] {
    for (;;) {
      bool asked = false;
      for (const auto& c : f.tp.take_controls()) asked = asked || c.op == control_op::schema;
      if (!asked || ++rounds > 50) break;
      CHECK_FALSE(f.send_schema(f.sch));
    }
  };
  const std::uint64_t before = f.r->stats().schema_requests;
  schema bogus = f.sch;
  bogus.schema_tag ^= 0x5a5a5a5a;
  CHECK(f.send(msg(bogus, 1, {save(1, {I(1), T("a"), I(1)})})) ==
        make_error_code(errc::unknown_schema));
  // Ten seconds, polled every 100 ms, with a new forged unknown-tag event each step.
  for (int step = 0; step < 100; ++step) {
    answer();
    bogus.schema_tag += 1;
    f.send(msg(bogus, 2 + static_cast<std::uint64_t>(step), {save(1, {I(1), T("a"), I(1)})}));
    f.clk.advance(100);
    CHECK_FALSE(f.r->poll());
  }
  answer();
  const std::uint64_t asked = f.r->stats().schema_requests - before;
  // Backoff from request_backoff_initial_ms (1 s), doubling: requests at 0, 1, 3 and 7 s.
  CHECK(asked >= 1);
  CHECK(asked <= 4);
}

// 17.7
TEST_CASE("keys of the wrong type are dead-lettered and never touch rows") {
  hostile_fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(
      f.send(msg(f.sch, 1, {save(1, {I(5), T("five"), I(5)}), save(1, {I(6), T("six"), I(6)})})));
  const std::vector<std::string> good{"5|'five'|5", "6|'six'|6"};
  const std::vector<value> bad_keys{value::null(), R(std::nan("")), R(5.0), T("6")};
  std::uint64_t seq = 2;
  for (const auto& k : bad_keys) {
    CAPTURE(static_cast<int>(k.type()));
    CHECK(f.send(msg(f.sch, seq++, {save(9, {k, T("x"), I(0)})})) ==
          make_error_code(errc::bad_value));
    CHECK(f.send(msg(f.sch, seq++, {del(9, {k})})) == make_error_code(errc::bad_value));
    CHECK(f.rows() == good);
  }
  auto dl = f.letters();
  REQUIRE(dl.size() == 2 * bad_keys.size());
  CHECK(dl[0].detail.find("key") != std::string::npos);
  // A re-sync carrying the genuine rows removes nothing.
  message rs = msg(f.sch, 0, {sync(1, {I(5), T("five"), I(5)}), sync(1, {I(6), T("six"), I(6)})});
  rs.has_resync = true;
  rs.resync = {2, seq, 0, true};
  CHECK_FALSE(f.deliver("edgecqrs/v1/d/gw1/items", encode(rs)));
  CHECK(f.rows() == good);
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows") == "2");
}

TEST_CASE("text keys: an integer or NULL in a TEXT key is rejected, text and blob apply") {
  hostile_fixture f("CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT, qty INTEGER)");
  f.sch = make_schema("items", {{"id", "TEXT"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {T("6"), T("a"), I(1)})})));
  CHECK_FALSE(f.send(msg(f.sch, 2, {save(1, {value::blob("b"), T("b"), I(1)})})));
  CHECK(f.send(msg(f.sch, 3, {save(2, {I(6), T("x"), I(1)})})) == make_error_code(errc::bad_value));
  CHECK(f.send(msg(f.sch, 4, {save(2, {value::null(), T("x"), I(1)})})) ==
        make_error_code(errc::bad_value));
  CHECK(one(f.db, "SELECT count(*) FROM items") == "2");
  CHECK(one(f.db, "SELECT name FROM items WHERE id='6'") == "'a'");
}

TEST_CASE("a key mapped across types (INTEGER at the master, TEXT locally) still applies") {
  hostile_fixture f("CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT, qty INTEGER)");
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(6), T("a"), I(1)})})));
  CHECK(f.send(msg(f.sch, 2, {save(2, {T("6"), T("x"), I(1)})})) ==
        make_error_code(errc::bad_value));
  CHECK(f.send(msg(f.sch, 3, {save(2, {value::null(), T("x"), I(1)})})) ==
        make_error_code(errc::bad_value));
  CHECK(f.rows() == std::vector<std::string>{"'6'|'a'|1"});
}

// 17.8
TEST_CASE("versions and seqs beyond what a master produces are rejected and change no state") {
  hostile_fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  const auto s0 = f.status();
  REQUIRE(s0.checkpoint == 1);
  const std::uint64_t big = std::uint64_t{1} << 53;
  // A version that would freeze the row: nothing could supersede it.
  CHECK(f.send(msg(f.sch, 2, {save(INT64_MAX, {I(1), T("x"), I(0)})})) ==
        make_error_code(errc::integer_out_of_range));
  CHECK(f.send(msg(f.sch, 2, {save(big, {I(1), T("x"), I(0)})})) ==
        make_error_code(errc::integer_out_of_range));
  CHECK(f.send(msg(f.sch, 2, {del(big, {I(1)})})) == make_error_code(errc::integer_out_of_range));
  // Seqs: the top of the range, past 2^53, and a jump far beyond the known head.
  for (std::uint64_t seq : {std::numeric_limits<std::uint64_t>::max(), big, std::uint64_t{1} << 40,
                            s0.head + f.ro.max_seq_ahead + 1}) {
    CAPTURE(seq);
    CHECK(f.send(msg(f.sch, seq, {save(2, {I(1), T("x"), I(0)})})) ==
          make_error_code(errc::integer_out_of_range));
    // A heartbeat announcing such a head is refused too.
    CHECK(f.send(msg(f.sch, seq, {})) == make_error_code(errc::integer_out_of_range));
    const auto s = f.status();
    CHECK(s.head == s0.head);
    CHECK(s.checkpoint == s0.checkpoint);
    CHECK(s.seen_ranges == 0);
  }
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1"});
  // The genuine next version still applies.
  CHECK_FALSE(f.send(msg(f.sch, 2, {save(2, {I(1), T("b"), I(2)})})));
  CHECK(f.rows() == std::vector<std::string>{"1|'b'|2"});
  // The largest allowed version and a jump within max_seq_ahead apply.
  CHECK_FALSE(f.send(msg(f.sch, 3, {save(big - 1, {I(1), T("c"), I(3)})})));
  CHECK_FALSE(f.send(msg(f.sch, 2 + f.ro.max_seq_ahead, {save(1, {I(2), T("d"), I(4)})})));
  CHECK(f.status().head == 2 + f.ro.max_seq_ahead);
}

TEST_CASE("re-sync markers beyond the seq bounds are rejected and change no state") {
  hostile_fixture f;
  f.open();
  f.ready();
  CHECK_FALSE(f.send(msg(f.sch, 1, {save(1, {I(1), T("a"), I(1)})})));
  message rs = msg(f.sch, 0, {sync(1, {I(1), T("a"), I(1)})});
  rs.has_resync = true;
  rs.resync = {7, std::uint64_t{1} << 60, 0, true};
  CHECK(f.deliver("edgecqrs/v1/d/gw1/items", encode(rs)) ==
        make_error_code(errc::integer_out_of_range));
  CHECK(f.status().checkpoint == 1);
  CHECK(f.status().head == 1);
  // Below 2^53 the entry check lets a re-sync answer through, but a session this replica did
  // not ask for never runs (issue 17.1; test_resync.cpp covers the asked-for cases): the
  // checkpoint never moves past the seqs the replica has seen.
  const std::uint64_t far = (std::uint64_t{1} << 40) + f.ro.max_seq_ahead;
  rs.resync = {8, far, 0, true};
  CHECK_FALSE(f.deliver("edgecqrs/v1/d/gw1/items", encode(rs)));
  CHECK(f.status().checkpoint == 1);
  CHECK(f.status().head == 1);
  CHECK(f.rows() == std::vector<std::string>{"1|'a'|1"});
}

// 17.9
TEST_CASE("tombstones are bounded: the oldest are pruned beyond max_tombstones") {
  hostile_fixture f;
  f.ro.max_tombstones = 100;
  f.open();
  f.ready();
  // Deletes of never-seen keys above a gap (seq far above the checkpoint).
  std::vector<event> evs;
  for (int i = 0; i < 1000; ++i) evs.push_back(del(1, {I(1000 + i)}));
  CHECK_FALSE(f.send(msg(f.sch, 10, std::move(evs))));
  // The burst pruned right after the message (no wait for poll()'s next prune round).
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "100");
  f.clk.advance(1000);
  CHECK_FALSE(f.r->poll());
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == "100");
  CHECK(f.r->stats().tombstones_dropped == 900);
  // The newest are kept.
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1 AND seq=1009") == "1");
  CHECK(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1 AND seq=10") == "0");
}

TEST_CASE("a burst of deletes prunes tombstones before the next prune interval") {
  hostile_fixture f;
  f.ro.max_tombstones = 100;
  f.open();
  f.ready();
  CHECK_FALSE(f.r->poll());  // the periodic prune ran: the next is a minute away
  for (int m = 0; m < 10; ++m) {
    std::vector<event> evs;
    for (int i = 0; i < 100; ++i) evs.push_back(del(1, {I(1000 + 100 * m + i)}));
    CHECK_FALSE(f.send(msg(f.sch, 10 + 100 * static_cast<std::uint64_t>(m), std::move(evs))));
    f.clk.advance(100);
    CHECK_FALSE(f.r->poll());
  }
  CHECK(std::stoi(one(f.db, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1")) <= 200);
}

// 17.10
TEST_CASE("one huge dead letter keeps a prefix and its size, and evicts no other letter") {
  hostile_fixture f;
  f.open();
  f.ready();
  for (std::uint8_t i = 0; i < 3; ++i) f.deliver("edgecqrs/v1/e/items", bytes{0xff, i});
  bytes huge(16u << 20, 0x5a);
  CHECK(f.deliver("edgecqrs/v1/e/items", huge));
  auto dl = f.letters();
  REQUIRE(dl.size() == 4);
  CHECK(dl[0].raw.size() == 2);
  CHECK(dl[0].original_size == 2);
  CHECK_FALSE(dl[0].truncated);
  CHECK(dl[3].original_size == huge.size());
  CHECK(dl[3].truncated);
  CHECK(dl[3].raw.size() == f.ro.max_dead_letter_body);
  CHECK(dl[3].raw == std::string(f.ro.max_dead_letter_body, '\x5a'));
  // A truncated letter cannot be retried into an apply.
  CHECK(f.r->retry_dead_letter(dl[3].id));
  CHECK(f.letters().size() == 4);
}

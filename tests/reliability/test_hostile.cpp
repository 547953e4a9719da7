// Hostile input table (issue 7, item 4): crafted messages against a replica through
// replica::on_message (no broker). Each row states its expected outcome: refused at decode and
// dead-lettered with the reason, ignored, or dead-lettered after decode; the replica database is
// unchanged where it should be, and the replica keeps working (a valid event applies afterwards).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct fixture {
  temp_dir dir{"hostile"};
  fake_clock clk;
  sqlite3* db = nullptr;
  std::unique_ptr<replica> r;
  recording_transport tp;
  schema sch = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}, {"qty", "INTEGER"}}, {0});
  std::uint64_t next_seq = 1;

  fixture() {
    REQUIRE(sqlite3_open(dir.file("replica.db").c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER);"
                         "CREATE TABLE victim(x INTEGER); INSERT INTO victim VALUES(42);",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    replica_options ro;
    ro.name = "gw1";
    ro.time = &clk;
    REQUIRE_FALSE(replica::open(db, ro, r));
    replica_table_options t;
    t.local_table = "items";
    REQUIRE_FALSE(r->register_table("items", t));
    REQUIRE_FALSE(r->attach(tp));
    CHECK_FALSE(deliver("edgecqrs/v1/s/items", encode(sch)));
    auto c = tp.take_controls();  // the initial re-sync request; its answer carries the nonce
    REQUIRE(c.size() == 1);
    message m = msg(sch, 0, {});
    m.has_resync = true;
    m.resync = {c[0].from_seq, 0, 0, true};
    CHECK_FALSE(deliver("edgecqrs/v1/d/gw1/items", encode(m)));
    tp.sent.clear();
    // One legitimate row that every hostile message must leave alone.
    REQUIRE_FALSE(send(msg(sch, next_seq++, {save(5, {I(1), T("good"), I(1)})})));
  }
  ~fixture() {
    r.reset();
    sqlite3_close(db);
  }
  std::error_code deliver(const std::string& topic, const bytes& b) {
    return r->on_message(topic, b.data(), b.size());
  }
  std::error_code send(const message& m) { return deliver("edgecqrs/v1/e/items", encode(m)); }
  std::string state() {
    auto a = dump(db, "SELECT id, name, qty FROM items ORDER BY id");
    auto b = dump(db, "SELECT x FROM victim");
    auto c = dump(db, "SELECT name FROM sqlite_master ORDER BY name");
    std::string s;
    for (const auto* v : {&a, &b, &c}) {
      for (const auto& x : *v) s += x + "\n";
      s += "--\n";
    }
    return s;
  }
  std::size_t dead() {
    std::size_t n = 0;
    REQUIRE_FALSE(r->dead_letter_count(n));
    return n;
  }
  std::string last_dead_reason() {
    std::vector<dead_letter> dl;
    REQUIRE_FALSE(r->list_dead_letters(dl, 0, 100000));
    return dl.empty() ? std::string("-") : dl.back().reason.message() + " (" + dl.back().detail + ")";
  }
  // The replica still applies a valid event (in sequence) after the hostile one.
  void still_works(std::int64_t id) {
    REQUIRE_FALSE(send(msg(sch, next_seq++, {save(1, {I(id), T("after"), I(7)})})));
    const auto rows = dump(db, "SELECT name FROM items WHERE id = " + std::to_string(id));
    REQUIRE(rows.size() == 1);
    CHECK(rows[0] == "'after'");
  }
};

// dead_letter: on_message returns the reason and one dead letter is written.
// retried_then_dead: an apply failure: retried with backoff per policy, dead letter after the
//   retries are exhausted (the attack drives the clock and poll()).
enum class expect { dead_letter, retried_then_dead, refused_or_dead, ignored };

struct row {
  const char* name;
  expect outcome;
  bool db_unchanged;
  std::function<std::error_code(fixture&)> attack;
};

// Runs the retry timers until the replica gives up (bounded).
void drive_retries(fixture& f) {
  for (int i = 0; i < 40; ++i) {
    std::size_t pending = 0;
    REQUIRE_FALSE(f.r->pending_retries(pending));
    if (pending == 0) break;
    f.clk.advance(400000);
    CHECK_FALSE(f.r->poll());
  }
}

bytes raw(std::initializer_list<int> b) {
  bytes out;
  for (int x : b) out.push_back(static_cast<std::uint8_t>(x));
  return out;
}

}  // namespace

TEST_CASE("hostile input table: each attack has its outcome and leaves the database intact") {
  const std::vector<row> table = {
      {"schema with column names holding quotes and semicolons", expect::refused_or_dead, true,
       [](fixture& f) {
         schema s = make_schema("items",
                                {{"id", "INTEGER"},
                                 {"name\"; DROP TABLE victim; --", "TEXT"},
                                 {"qty'); DELETE FROM items; --", "INTEGER"}},
                                {0}, 1);
         auto ec = f.deliver("edgecqrs/v1/s/items", encode(s));
         message m = msg(s, 1, {save(9, {I(1), T("x"), I(2)})});
         auto ec2 = f.send(m);
         return ec ? ec : ec2;
       }},
      {"CQRS_ID with MQTT wildcards in the topic", expect::ignored, true,
       [](fixture& f) {
         return f.deliver("edgecqrs/v1/e/it+ms", encode(msg(f.sch, 2, {save(9, {I(1), T("x"), I(2)})})));
       }},
      {"CQRS_ID '#' in the topic", expect::ignored, true,
       [](fixture& f) {
         return f.deliver("edgecqrs/v1/e/#", encode(msg(f.sch, 2, {save(9, {I(1), T("x"), I(2)})})));
       }},
      {"primary key of the wrong type (text for INTEGER PRIMARY KEY)", expect::dead_letter, true,
       [](fixture& f) {
         auto ec = f.send(msg(f.sch, f.next_seq++, {save(9, {T("1 OR 1=1"), T("x"), I(2)})}));
         drive_retries(f);
         return ec;
       }},
      {"huge declared text length (2^32-1 bytes, 10 present)", expect::dead_letter, true,
       [](fixture& f) {
         bytes b = raw({0x85, 0x01, 0x1a, 0, 0, 0, 1, 0x7a, 0xff, 0xff, 0xff, 0xff});
         for (int i = 0; i < 10; ++i) b.push_back('a');
         return f.deliver("edgecqrs/v1/e/items", b);
       }},
      {"huge declared array length (2^64-1 items)", expect::dead_letter, true,
       [](fixture& f) {
         return f.deliver("edgecqrs/v1/e/items",
                          raw({0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}));
       }},
      {"deep nesting (100000 nested arrays)", expect::dead_letter, true,
       [](fixture& f) {
         bytes b(100000, 0x81);
         b.push_back(0x00);
         return f.deliver("edgecqrs/v1/e/items", b);
       }},
      {"10 MB payload", expect::dead_letter, true,
       [](fixture& f) {
         message m = msg(f.sch, f.next_seq, {save(9, {I(1), T(""), I(2)})});
         m.events[0].values[1] = value::text(std::string(10u << 20, 'A'));
         return f.send(m);
       }},

      {"expiry far in the past (1970)", expect::dead_letter, true,
       [](fixture& f) {
         message m = msg(f.sch, f.next_seq++, {save(9, {I(1), T("expired"), I(2)})});
         m.expires_ms = 1;
         return f.send(m);
       }},
      {"sequence number that wraps (first_seq 2^64-1, two events)", expect::refused_or_dead, true,
       [](fixture& f) {
         return f.send(msg(f.sch, std::numeric_limits<std::uint64_t>::max(),
                           {save(9, {I(1), T("wrap"), I(2)}), save(9, {I(2), T("wrap"), I(2)})}));
       }},
      {"message for an unregistered CQRS_ID", expect::ignored, true,
       [](fixture& f) {
         return f.deliver("edgecqrs/v1/e/victim",
                          encode(msg(f.sch, 1, {save(9, {I(1), T("x"), I(2)})})));
       }},
      {"unknown schema tag", expect::refused_or_dead, true,
       [](fixture& f) {
         message m = msg(f.sch, f.next_seq, {save(9, {I(1), T("x"), I(2)})});
         m.schema_tag = 0x12345678;
         return f.send(m);
       }},
      {"truncated message", expect::dead_letter, true,
       [](fixture& f) {
         auto b = encode(msg(f.sch, f.next_seq, {save(9, {I(1), T("truncated"), I(2)})}));
         b.resize(b.size() / 2);
         return f.deliver("edgecqrs/v1/e/items", b);
       }},
  };
  std::int64_t probe_id = 100;
  for (const auto& t : table) {
    const std::string name = t.name;
    CAPTURE(name);
    fixture f;
    const auto before = f.state();
    const auto dead_before = f.dead();
    const std::error_code ec = t.attack(f);
    const auto dead_after = f.dead();
    const bool unchanged = f.state() == before;
    std::printf("[hostile] %-66s -> %s; dead letters +%zu%s%s; db %s\n", t.name,
                ec ? ec.message().c_str() : "accepted", dead_after - dead_before,
                dead_after > dead_before ? ": " : "",
                dead_after > dead_before ? f.last_dead_reason().c_str() : "",
                unchanged ? "unchanged" : "CHANGED");
    if (t.db_unchanged) CHECK_MESSAGE(unchanged, std::string(before + "=>\n" + f.state()));
    switch (t.outcome) {
      case expect::dead_letter:
        CHECK(ec);
        CHECK(dead_after == dead_before + 1);
        break;
      case expect::retried_then_dead:
        CHECK(dead_after == dead_before + 1);
        break;
      case expect::refused_or_dead:
        CHECK(ec);
        break;
      case expect::ignored:
        CHECK(ec);
        CHECK(dead_after <= dead_before + 1);
        break;
    }
    f.still_works(probe_id++);
  }
}

// Issue 17.8: 2^63-1 used to apply and freeze the row for good (nothing could supersede it); a
// master never produces a version at or above 2^53 (docs/replication.md §8).
TEST_CASE(
    "hostile versions: 2^63-1 is refused and cannot freeze a row, "
    "versions beyond 2^63-1 do not wrap into old ones") {
  fixture f;
  const auto maxv = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  const auto ec = f.send(msg(f.sch, f.next_seq++, {save(maxv, {I(77), T("max"), I(9)})}));
  std::printf("[hostile] version 2^63-1 -> %s\n", ec ? ec.message().c_str() : "applied");
  CHECK(ec == make_error_code(errc::integer_out_of_range));
  CHECK(dump(f.db, "SELECT name FROM items WHERE id = 77").empty());
  CHECK_FALSE(f.send(msg(f.sch, f.next_seq++, {save(6, {I(77), T("older"), I(1)})})));
  CHECK(dump(f.db, "SELECT name FROM items WHERE id = 77") == std::vector<std::string>{"'older'"});
  // 2^64-1 on the wire: refused or kept newer; it must not be stored as -1 and then lose to v7.
  const auto ec2 = f.send(msg(f.sch, f.next_seq++,
                              {save(std::numeric_limits<std::uint64_t>::max(), {I(2), T("huge"), I(1)})}));
  std::printf("[hostile] version 2^64-1 -> %s\n", ec2 ? ec2.message().c_str() : "applied");
  (void)f.send(msg(f.sch, f.next_seq++, {save(7, {I(2), T("v7"), I(1)})}));
  const auto row2 = dump(f.db, "SELECT name FROM items WHERE id = 2");
  std::printf("[hostile] after v7 on the same key: %s\n", row2.empty() ? "(no row)" : row2[0].c_str());
  CHECK(ec2 == make_error_code(errc::integer_out_of_range));
  CHECK(row2 == std::vector<std::string>{"'v7'"});  // the refused one never landed
  f.still_works(300);
}

TEST_CASE("hostile sequence: a message whose last sequence wraps is refused at decode") {
  fixture f;
  const auto before = f.state();
  message m = msg(f.sch, std::numeric_limits<std::uint64_t>::max(),
                  {save(9, {I(1), T("wrap"), I(2)}), save(9, {I(2), T("wrap"), I(2)})});
  CHECK(f.send(m) == make_error_code(errc::integer_out_of_range));
  m.first_seq = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  CHECK(f.send(m) == make_error_code(errc::integer_out_of_range));
  CHECK(f.state() == before);
  f.still_works(400);
}

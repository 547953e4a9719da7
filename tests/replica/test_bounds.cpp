// Replica bounds at their edges (README: max_pending_retries, max_dead_letter_bytes): exactly at
// the bound works, one past it gives the documented result.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <set>
#include <string>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

struct bounds_fixture {
  temp_dir dir{"bounds"};
  fake_clock clk;
  sqlite3* db = nullptr;
  recording_transport tp;
  replica_options ro;
  std::unique_ptr<replica> r;
  schema sch = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}}, {0});

  bounds_fixture() {
    REQUIRE(sqlite3_open(dir.file("r.db").c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    ro.name = "gw1";
    ro.time = &clk;
  }
  ~bounds_fixture() {
    r.reset();
    sqlite3_close(db);
  }
  // Every create handler call fails: each event goes to the retry table.
  void open() {
    REQUIRE_FALSE(replica::open(db, ro, r));
    replica_table_options t;
    t.local_table = "items";
    t.on_create = [](const change&) { return make_error_code(std::errc::io_error); };
    REQUIRE_FALSE(r->register_table("items", std::move(t)));
    REQUIRE_FALSE(r->attach(tp));
    deliver("edgecqrs/v1/s/items", encode(sch));
    message rs = msg(sch, 0, {});
    rs.has_resync = true;
    rs.resync = {1, 0, 0, true};
    deliver("edgecqrs/v1/d/gw1/items", encode(rs));
  }
  std::error_code deliver(const std::string& topic, const bytes& b) {
    return r->on_message(topic, b.data(), b.size());
  }
  std::size_t retries() {
    std::size_t n = 0;
    REQUIRE_FALSE(r->pending_retries(n));
    return n;
  }
  std::size_t dead() {
    std::size_t n = 0;
    REQUIRE_FALSE(r->dead_letter_count(n));
    return n;
  }
};

}  // namespace

TEST_CASE("edge: max_pending_retries failures wait for retry, one more is dead-lettered at once") {
  bounds_fixture f;
  f.ro.max_pending_retries = 2;
  f.open();
  for (std::int64_t id = 1; id <= 2; ++id)
    CHECK_FALSE(f.deliver("edgecqrs/v1/e/items",
                          encode(msg(f.sch, static_cast<std::uint64_t>(id),
                                     {save(1, {I(id), T("a")})}))));
  CHECK(f.retries() == 2);
  CHECK(f.dead() == 0);
  CHECK_FALSE(f.deliver("edgecqrs/v1/e/items", encode(msg(f.sch, 3, {save(1, {I(3), T("a")})}))));
  CHECK(f.retries() == 2);
  REQUIRE(f.dead() == 1);
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].key == std::vector<value>{I(3)});
  CHECK(dl[0].detail.find("retry table full") != std::string::npos);
}

TEST_CASE("edge: dead letters up to max_dead_letter_bytes are kept, one byte more drops the oldest") {
  bounds_fixture f;
  f.ro.max_dead_letter_bytes = 300;
  f.open();
  // Messages for a stream nobody registered: dead-lettered whole, their bytes as given.
  for (int i = 0; i < 3; ++i)
    CHECK(f.deliver("edgecqrs/v1/e/other", bytes(100, static_cast<std::uint8_t>('a' + i))) ==
          errc::unknown_stream);
  CHECK(f.dead() == 3);
  CHECK(f.r->stats().dead_letters_dropped == 0);
  CHECK(f.deliver("edgecqrs/v1/e/other", bytes(1, 'z')) == errc::unknown_stream);
  CHECK(f.dead() == 3);
  CHECK(f.r->stats().dead_letters_dropped == 1);
  std::vector<dead_letter> dl;
  REQUIRE_FALSE(f.r->list_dead_letters(dl));
  REQUIRE(dl.size() == 3);
  std::set<std::string> raws;
  for (auto& d : dl) raws.insert(d.raw);
  CHECK(raws == std::set<std::string>{std::string(100, 'b'), std::string(100, 'c'), "z"});
}

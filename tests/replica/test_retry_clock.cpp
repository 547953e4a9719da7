// Retry due times across a reboot (issue 16.9): persisted on the wall clock, so a restarted
// device (whose monotonic clock starts again at 0) runs its pending retries when due.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <set>
#include <string>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/replica.hpp"
#include "replica_helpers.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

// Wall time and a monotonic time that restarts at 0 on reboot().
class reboot_clock final : public clock {
 public:
  std::int64_t now_ms() override { return wall_; }
  std::int64_t steady_ms() override { return steady_; }
  void advance(std::int64_t ms) {
    wall_ += ms;
    steady_ += ms;
  }
  void reboot() { steady_ = 0; }

 private:
  std::int64_t wall_ = 1763800000000;
  std::int64_t steady_ = 86400000;  // a day of uptime
};

}  // namespace

TEST_CASE("16.9: a retry pending across a reboot runs when due, not after the previous uptime") {
  temp_dir dir("retryclock");
  const std::string path = dir.file("r.db");
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  reboot_clock clk;
  recording_transport tp;
  std::set<std::int64_t> broken{2};
  schema sch = make_schema("items", {{"id", "INTEGER"}, {"name", "TEXT"}}, {0});
  replica_options ro;
  ro.name = "gw1";
  ro.time = &clk;
  std::unique_ptr<replica> r;
  auto open = [&] {
    r.reset();
    REQUIRE_FALSE(replica::open(db, ro, r));
    replica_table_options t;
    t.local_table = "items";
    t.on_create = [&](const change& c) -> std::error_code {
      std::int64_t id = c.values[0].v->as_integer();
      if (broken.count(id)) return make_error_code(std::errc::io_error);
      std::string sql = "INSERT INTO items(id, name) VALUES(" + std::to_string(id) + ", 'h')";
      return sqlite3_exec(c.db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
                 ? std::error_code{}
                 : make_error_code(errc::apply_failed);
    };
    REQUIRE_FALSE(r->register_table("items", std::move(t)));
    REQUIRE_FALSE(r->attach(tp));
  };
  open();
  const bytes s = encode(sch);
  REQUIRE_FALSE(r->on_message("edgecqrs/v1/s/items", s.data(), s.size()));
  message rs = msg(sch, 0, {});
  rs.has_resync = true;
  rs.resync = {1, 0, 0, true};
  const bytes rb = encode(rs);
  REQUIRE_FALSE(r->on_message("edgecqrs/v1/d/gw1/items", rb.data(), rb.size()));
  const bytes m = encode(msg(sch, 1, {save(1, {I(1), T("a")}), save(1, {I(2), T("b")})}));
  REQUIRE_FALSE(r->on_message("edgecqrs/v1/e/items", m.data(), m.size()));
  std::size_t pending = 0;
  REQUIRE_FALSE(r->pending_retries(pending));
  REQUIRE(pending == 1);
  // Reboot: the monotonic clock starts again at 0; wall time goes on.
  r.reset();
  clk.reboot();
  broken.clear();
  open();
  CHECK_FALSE(r->poll());
  REQUIRE_FALSE(r->pending_retries(pending));
  CHECK(pending == 1);  // not due yet
  clk.advance(ro.retry_initial_ms);
  CHECK_FALSE(r->poll());
  REQUIRE_FALSE(r->pending_retries(pending));
  CHECK(pending == 0);
  CHECK(r->stats().retries_succeeded == 1);
  CHECK(dump(db, "SELECT id FROM items ORDER BY id") == std::vector<std::string>{"1", "2"});
  r.reset();
  sqlite3_close(db);
}

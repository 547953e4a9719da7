// The broker-facing sub-commands as real processes against a private mosquitto: `consume` (the
// replica daemon: applies, stops cleanly on SIGTERM/SIGINT with exit 0, picks up what was
// published while it was down), `sync --broker` (publishes until the outbox drains) and
// `decode --subscribe`.
#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_util.hpp"
#include "edgecqrs/master.hpp"
#include "mosquitto_fixture.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace edgecqrs;
using edgecqrs::test::exec_sql;
using edgecqrs::test::master_change;

namespace {

std::int64_t count_of(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_busy_timeout(db, 2000);
  sqlite3_stmt* s = nullptr;
  std::int64_t n = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW)
    n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  return n;
}

// A background `edgecqrs consume`, stopped by signal.
struct consume_proc {
  pid_t pid = -1;
  std::string err_file;
  consume_proc(const std::string& config, const std::string& err)
      : consume_proc(std::string("consume --config '") + config + "'", err, 0) {}
  // Any argument list after the binary (a shell command line).
  consume_proc(const std::string& args, const std::string& err, int) : err_file(err) {
    std::string cmd = std::string("exec '") + EDGECQRS_CLI + "' " + args + " 2>'" + err + "'";
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    REQUIRE(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) == 0);
  }
  // Exit status after `sig` (-1 when it did not exit in 10 s; then it is killed).
  int stop(int sig) {
    if (pid <= 0) return -1;
    ::kill(pid, sig);
    for (int i = 0; i < 200; ++i) {
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
    return -1;
  }
  ~consume_proc() {
    if (pid > 0) stop(SIGKILL);
  }
  bool log_has(const std::string& s) const {
    return edgecqrs::test::read_file(err_file).find(s) != std::string::npos;
  }
};

bool wait_for(const std::function<bool()>& cond, int ms = 15000) {
  for (int t = 0; t < ms; t += 50) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return cond();
}

int run(const std::string& args, const std::string& out = "/dev/null",
        const std::string& err = "/dev/null") {
  std::string cmd =
      std::string("'") + EDGECQRS_CLI + "' " + args + " >'" + out + "' 2>'" + err + "'";
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// A running private broker, a master database whose item table holds rows 1..rows (name
// 'name <i>', qty i), an empty replica database and the path of its config.
struct consume_setup {
  edgecqrs::test::temp_dir d{"clib"};
  edgecqrs::test::mosquitto_broker broker;
  const std::string mdb = d.file("master.db"), rdb = d.file("replica.db"),
                    cfg = d.file("replica.toml");

  explicit consume_setup(int rows) {
    REQUIRE_MESSAGE(broker.start(), broker.error());
    master_change(mdb,
                  "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<" +
                      std::to_string(rows) + ") INSERT INTO item SELECT i, 'name ' || i, i FROM n",
                  test::item_ddl);
    test::exec_file(rdb, "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
  }
  // The replica's config: replica `name` on the replica database (`replica_extra`: more keys of
  // [replica]), MQTT 5 on the broker, stream "item".
  void write_config(const std::string& name, const std::string& replica_extra = "") const {
    std::ofstream(cfg) << "[replica]\nname = \"" << name << "\"\ndatabase = \"" << rdb << "\"\n"
                       << replica_extra << "[broker]\nurl = \"" << broker.uri()
                       << "\"\nmqtt_version = 5\n[[table]]\ncqrs_id = \"item\"\n";
  }
};

}  // namespace

TEST_CASE("consume applies, stops cleanly on SIGTERM and SIGINT, and catches up after a restart") {
  consume_setup setup(2000);
  auto& [d, broker, mdb, rdb, cfg] = setup;
  setup.write_config("gw1");

  auto d1 = std::make_unique<consume_proc>(cfg, d.file("consume1.err"));
  REQUIRE_MESSAGE(wait_for([&] { return d1->log_has("replica 'gw1' on"); }),
                  edgecqrs::test::read_file(d1->err_file));
  // The master's pending stream events, published by `sync --broker` (here with a sync of
  // three rows to this replica too).
  REQUIRE(run("sync --db '" + mdb + "' -c item --where 'id <= ?1' -p 3 --to gw1 --broker " +
                  broker.uri(),
              "/dev/null", d.file("sync.err")) == 0);
  CHECK(edgecqrs::test::read_file(d.file("sync.err")).find("outbox drained") != std::string::npos);
  CHECK(wait_for([&] { return count_of(rdb, "SELECT count(*) FROM item") == 2000; }));
  // The retained schema message, live.
  CHECK(run("decode --subscribe " + broker.uri() + " 'edgecqrs/v1/s/#' -n 1",
            d.file("decode.out")) == 0);
  CHECK(edgecqrs::test::read_file(d.file("decode.out")).find("\"cqrs_id\":\"item\"") !=
        std::string::npos);
  CHECK(d1->stop(SIGTERM) == 0);
  CHECK(d1->log_has("stopped (SIGTERM)"));

  // Changes while the daemon is down are kept by the broker for its persistent session.
  master_change(mdb, "UPDATE item SET qty = -1 WHERE id <= 10");
  REQUIRE(run("-q sync --db '" + mdb + "' -c item --where '0' --broker " + broker.uri()) == 0);
  auto d2 = std::make_unique<consume_proc>(cfg, d.file("consume2.err"));
  CHECK(wait_for([&] { return count_of(rdb, "SELECT count(*) FROM item WHERE qty = -1") == 10; }));
  CHECK(d2->stop(SIGINT) == 0);
  CHECK(d2->log_has("stopped (SIGINT)"));
  CHECK(count_of(rdb, "SELECT count(*) FROM edgecqrs_r_dead") == 0);
}

TEST_CASE("consume and sync: a bad config or a missing database fails with a named problem") {
  edgecqrs::test::temp_dir d("clib");
  const std::string cfg = d.file("replica.toml");
  std::ofstream(cfg)
      << "[replica]\nname = \"gw1\"\ndatabase = \"x.db\"\nworkers = 2\n[broker]\nmqtt_version = 3\n"
         "[[table]]\ncqrs_id = \"item\"\n";
  CHECK(run("consume --config '" + cfg + "'", "/dev/null", d.file("err")) == 2);
  std::string err = edgecqrs::test::read_file(d.file("err"));
  CHECK(err.find("replica.workers") != std::string::npos);
  CHECK(err.find("shared subscriptions") != std::string::npos);
  CHECK(run("sync --db '" + d.file("none.db") + "' -c item --broker tcp://127.0.0.1:1", "/dev/null",
            d.file("err")) == 2);
  CHECK(edgecqrs::test::read_file(d.file("err")).find("none.db") != std::string::npos);
}

TEST_CASE("consume with two workers sharing the event subscription") {
  consume_setup setup(3000);
  auto& [d, broker, mdb, rdb, cfg] = setup;
  // Many small transactions: many messages for the broker to spread over the two workers.
  for (int k = 0; k < 20; ++k)
    master_change(mdb, "UPDATE item SET qty = qty + 1 WHERE id % 20 = " + std::to_string(k));
  setup.write_config("gw2", "workers = 2\n");
  auto c = std::make_unique<consume_proc>(cfg, d.file("consume.err"));
  REQUIRE_MESSAGE(wait_for([&] { return c->log_has("2 worker(s)"); }),
                  edgecqrs::test::read_file(c->err_file));
  REQUIRE(run("-q sync --db '" + mdb + "' -c item --where '0' --broker " + broker.uri()) == 0);
  CHECK(wait_for(
      [&] { return count_of(rdb, "SELECT sum(qty) FROM item") == 3000 * 3001 / 2 + 3000; }));
  CHECK(count_of(rdb, "SELECT count(*) FROM item") == 3000);
  CHECK(c->stop(SIGTERM) == 0);
  CHECK(count_of(rdb, "SELECT count(*) FROM edgecqrs_r_dead") == 0);
}

TEST_CASE(
    "the daemon runs exactly as the shipped systemd unit starts it (global flag after the "
    "sub-command)") {
  // examples/edgecqrs-consume.service: ExecStart=<binary> consume --config <path> --quiet. The
  // words after the binary are taken from the unit as they are; only the config path is ours.
  std::string unit = edgecqrs::test::read_file(std::string(EDGECQRS_TEST_SOURCE_DIR) +
                                               "/../examples/edgecqrs-consume.service");
  auto at = unit.find("\nExecStart=");
  REQUIRE(at != std::string::npos);
  std::string line = unit.substr(at + 11, unit.find('\n', at + 1) - at - 11);
  std::vector<std::string> words;
  for (std::size_t i = 0; i < line.size();) {
    auto j = line.find(' ', i);
    if (j == std::string::npos) j = line.size();
    if (j > i) words.push_back(line.substr(i, j - i));
    i = j + 1;
  }
  REQUIRE(words.size() >= 4);
  CHECK(words[1] == "consume");
  CHECK(words.back() == "--quiet");  // the case that made the unit loop (CLI exit 109)

  consume_setup setup(100);
  auto& [d, broker, mdb, rdb, cfg] = setup;
  setup.write_config("gw1");
  std::string args;
  for (std::size_t i = 1; i < words.size(); ++i) {
    args += ' ';
    args += words[i - 1] == "--config" ? "'" + cfg + "'" : words[i];
  }
  // --quiet prints nothing to wait for, so the broker session (and its subscriptions) is made
  // first by a plain run; events published before the unit's run connects wait in it.
  {
    consume_proc first(cfg, d.file("first.err"));
    REQUIRE_MESSAGE(wait_for([&] { return first.log_has("replica 'gw1' on"); }),
                    edgecqrs::test::read_file(first.err_file));
    REQUIRE(first.stop(SIGTERM) == 0);
  }
  auto c = std::make_unique<consume_proc>(args, d.file("consume.err"), 0);
  REQUIRE(run("-q sync --db '" + mdb + "' -c item --where '0' --broker " + broker.uri()) == 0);
  CHECK_MESSAGE(wait_for([&] { return count_of(rdb, "SELECT count(*) FROM item") == 100; }),
                edgecqrs::test::read_file(c->err_file));
  CHECK(c->stop(SIGTERM) == 0);
  // --quiet took effect: no start or stop lines.
  CHECK_FALSE(c->log_has("replica 'gw1' on"));
  CHECK_FALSE(c->log_has("stopped"));
}

// Writes that bypass the master: other connections and processes writing a registered table
// are refused (guard triggers), and a second publisher on the same outbox (the CLI's
// `edgecqrs sync --broker`, another master object) does not leave the first one's outbox
// accounting stale.
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cstdio>
#include <string>

#include "edgecqrs/errors.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

const char* const reading_ddl =
    "CREATE TABLE reading(id INTEGER PRIMARY KEY, name TEXT, value REAL, updated INTEGER)";

// Runs `sql` on `db`; returns SQLite's result code and the error message in `err`.
int try_sql(sqlite3* db, const std::string& sql, std::string& err) {
  char* e = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &e);
  err = e ? e : "";
  sqlite3_free(e);
  return rc;
}

std::string one_text(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
  std::string out;
  if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
    out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  sqlite3_finalize(s);
  return out;
}

// Runs a shell command; returns its exit status and its output (stdout and stderr).
int run_shell(const std::string& cmd, std::string& out) {
  std::FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  char buf[512];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  return ::pclose(p);
}

}  // namespace

TEST_CASE("bypass: another connection writing a registered table is refused, clearly") {
  temp_dir dir("bypass");
  const std::string path = dir.file("m.db");
  master_fixture f({}, path);
  f.sql("PRAGMA journal_mode=WAL");
  f.sql(reading_ddl);
  f.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, txt TEXT)");
  REQUIRE_FALSE(f.m->register_table(stream_of("reading")));
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',1.5,10)"));
  f.drain();
  REQUIRE(f.events("reading").size() == 1);
  f.clear();

  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &other) == SQLITE_OK);
  sqlite3_busy_timeout(other, 2000);
  for (const char* w : {"INSERT INTO reading VALUES(2,'b',2,20)",
                        "UPDATE reading SET name='changed' WHERE id=1",
                        "DELETE FROM reading WHERE id=1", "DELETE FROM reading",
                        "INSERT OR REPLACE INTO reading VALUES(1,'r',0,0)"}) {
    std::string err;
    CAPTURE(w);
    CHECK(try_sql(other, w, err) != SQLITE_OK);
    CAPTURE(err);
    CHECK(err.find("edgecqrs") != std::string::npos);
    CHECK(err.find("master_api") != std::string::npos);
  }
  // Nothing changed, nothing is published.
  CHECK(f.count("SELECT count(*) FROM reading") == 1);
  CHECK(one_text(f.db, "SELECT name FROM reading WHERE id=1") == "a");
  f.drain();
  CHECK(f.events("reading").empty());
  // Unregistered tables stay writable from anywhere.
  std::string err;
  CHECK(try_sql(other, "INSERT INTO notes VALUES(1,'free')", err) == SQLITE_OK);
  // Reads are not affected.
  CHECK(one_text(other, "SELECT name FROM reading WHERE id=1") == "a");
  // The application keeps working through the API, and its hooks see every row as before.
  REQUIRE_FALSE(f.txn("UPDATE reading SET name='b' WHERE id=1; INSERT INTO reading "
                      "VALUES(2,'c',2,20)"));
  f.drain();
  CHECK(f.events("reading").size() == 2);
  sqlite3_close(other);

  // Reopened (a restart): the guards stay, are not duplicated nor rewritten, and still refuse.
  const std::int64_t schema_version = f.count("PRAGMA schema_version");
  f.m.reset();
  REQUIRE_FALSE(master::attach(f.db, {}, f.pub_client.get(), f.m, f.clk));
  REQUIRE_FALSE(f.m->register_table(stream_of("reading")));
  CHECK(f.count("PRAGMA schema_version") == schema_version);
  CHECK(f.count("SELECT count(*) FROM sqlite_master WHERE type='trigger' AND "
                "tbl_name='reading'") == 3);
  REQUIRE(sqlite3_open(path.c_str(), &other) == SQLITE_OK);
  CHECK(try_sql(other, "UPDATE reading SET name='x'", err) != SQLITE_OK);
  CHECK(err.find("edgecqrs") != std::string::npos);
  sqlite3_close(other);
  REQUIRE_FALSE(f.txn("UPDATE reading SET name='z' WHERE id=1"));
  f.drain();
  CHECK(f.events("reading").size() == 3);
}

TEST_CASE("bypass: the sqlite3 shell in another process is refused") {
  temp_dir dir("bypass");
  const std::string path = dir.file("m.db");
  master_fixture f({}, path);
  f.sql(reading_ddl);
  REQUIRE_FALSE(f.m->register_table(stream_of("reading")));
  REQUIRE_FALSE(f.txn("INSERT INTO reading VALUES(1,'a',1.5,10)"));
  f.drain();
  f.clear();
  std::string out;
  int st = run_shell("sqlite3 '" + path + "' \"UPDATE reading SET name='shell' WHERE id=1\"", out);
  CAPTURE(out);
  CHECK(st != 0);
  CHECK(out.find("edgecqrs_replicated_table_write_through_master_api") != std::string::npos);
  CHECK(one_text(f.db, "SELECT name FROM reading WHERE id=1") == "a");
  f.drain();
  CHECK(f.events("reading").empty());
}

TEST_CASE("bypass: produce off installs no guard, and turning it off drops the guards") {
  temp_dir dir("bypass");
  const std::string path = dir.file("m.db");
  {
    master_fixture f({}, path);
    f.sql(reading_ddl);
    REQUIRE_FALSE(f.m->register_table(stream_of("reading")));
    CHECK(f.count("SELECT count(*) FROM sqlite_master WHERE type='trigger'") == 3);
  }
  master_fixture f({}, path);
  table_options o = stream_of("reading");
  o.produce = false;
  REQUIRE_FALSE(f.m->register_table(o));
  CHECK(f.count("SELECT count(*) FROM sqlite_master WHERE type='trigger'") == 0);
  exec_file(path, "INSERT INTO reading VALUES(5,'free',0,0)");
}

TEST_CASE("bypass: a second publisher on the same outbox leaves the first one's count right") {
  temp_dir dir("bypass");
  const std::string path = dir.file("m.db");
  master_config cfg;
  cfg.heartbeat_interval_ms = 0;
  cfg.outbox_max_records = 4;  // a stale count fills it within the rounds below
  master_fixture app(cfg, path);
  app.sql("PRAGMA journal_mode=WAL");
  app.sql(reading_ddl);
  REQUIRE_FALSE(app.m->register_table(stream_of("reading")));
  app.drain();
  REQUIRE(app.m->stats().records_pending == 0);
  int id = 0;
  auto commit_five = [&] {
    std::string sql;
    for (int i = 0; i < 5; ++i) {
      ++id;
      sql += "INSERT INTO reading VALUES(" + std::to_string(id) + ",'r',1,1);";
    }
    return app.txn(sql);
  };
  for (int round = 0; round < 6; ++round) {
    CAPTURE(round);
    REQUIRE_FALSE(commit_five());
    if (round % 2) {
      // The app publishes first; the other publisher acknowledges the same records before the
      // app's acks are handled.
      REQUIRE_FALSE(app.m->poll());
    }
    {
      // `edgecqrs sync --broker` beside the app: another master on the file, publishing.
      sqlite3* db2 = nullptr;
      REQUIRE(sqlite3_open(path.c_str(), &db2) == SQLITE_OK);
      sqlite3_busy_timeout(db2, 2000);
      auto c2 = app.broker.make_client("cli", 100);
      std::unique_ptr<master> cli;
      REQUIRE_FALSE(master::attach(db2, cfg, c2.get(), cli, app.clk));
      REQUIRE_FALSE(cli->register_table(stream_of("reading")));
      for (int i = 0; i < 10; ++i) {
        REQUIRE_FALSE(cli->poll());
        app.broker.pump_all();
      }
      CHECK(cli->stats().records_pending == 0);
      cli.reset();
      sqlite3_close(db2);
    }
    app.drain();
    CHECK(app.count("SELECT count(*) FROM edgecqrs_outbox WHERE acked=0") == 0);
    CHECK(app.m->stats().records_pending == 0);
  }
  // The app kept committing: its outbox never filled up.
  CHECK(app.m->stats().outbox_full_refusals == 0);
  CHECK(app.count("SELECT count(*) FROM reading") == id);
}

TEST_CASE("bypass: odd table names and trusted_schema off") {
  temp_dir dir("bypass");
  const std::string path = dir.file("m.db");
  master_fixture f({}, path);
  // The application's connection distrusts the schema: the guard function is innocuous.
  f.sql("PRAGMA trusted_schema=OFF");
  f.sql("CREATE TABLE \"it's \"\"odd\"\"\"(id INTEGER PRIMARY KEY, v TEXT)");
  table_options o;
  o.table = "it's \"odd\"";
  o.cqrs_id = "odd";
  REQUIRE_FALSE(f.m->register_table(o));
  REQUIRE_FALSE(f.txn("INSERT INTO \"it's \"\"odd\"\"\" VALUES(1,'a')"));
  f.drain();
  CHECK(f.events("odd").size() == 1);
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &other) == SQLITE_OK);
  std::string err;
  CHECK(try_sql(other, "UPDATE \"it's \"\"odd\"\"\" SET v='b'", err) != SQLITE_OK);
  CHECK(err.find("edgecqrs") != std::string::npos);
  // A connection defining a function of the guard's name gets the readable RAISE message.
  REQUIRE(sqlite3_create_function_v2(
              other, "edgecqrs_replicated_table_write_through_master_api", 0, SQLITE_UTF8,
              nullptr, [](sqlite3_context* c, int, sqlite3_value**) { sqlite3_result_int(c, 0); },
              nullptr, nullptr, nullptr) == SQLITE_OK);
  CHECK(try_sql(other, "DELETE FROM \"it's \"\"odd\"\"\"", err) != SQLITE_OK);
  CHECK(err == "edgecqrs: table it's \"odd\" is replicated: write it through the edgecqrs "
               "master API");
  sqlite3_close(other);
  CHECK(f.count("SELECT count(*) FROM \"it's \"\"odd\"\"\"") == 1);
}

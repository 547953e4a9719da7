// The `edgecqrs` CLI run as a real process against real master and replica databases made
// here through the library: flags, config errors, status, dump/load (with a damaged file),
// dead letters, and the diff pipeline repairing a replica.
#include <doctest/doctest.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.hpp"
#include "edgecqrs/cbor_seq.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/replica.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using edgecqrs::test::exec_sql;
using edgecqrs::test::master_change;
using edgecqrs::test::quiet_master;

namespace {

struct result {
  int status = -1;
  std::string out, err;
};

// Runs `args` (a shell command line after the binary) with stdout/stderr captured.
result cli(const edgecqrs::test::temp_dir& d, const std::string& args,
           const std::string& stdin_file = "") {
  std::string out = d.file("stdout.txt"), err = d.file("stderr.txt");
  std::string cmd =
      std::string("'") + EDGECQRS_CLI + "' " + args + " >'" + out + "' 2>'" + err + "'";
  if (!stdin_file.empty()) cmd += " <'" + stdin_file + "'";
  int rc = std::system(cmd.c_str());
  result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = edgecqrs::test::read_file(out);
  r.err = edgecqrs::test::read_file(err);
  return r;
}

// A shell pipeline: `line` with "$CLI" for the binary.
int sh(const std::string& line) {
  std::string cmd = "CLI='" + std::string(EDGECQRS_CLI) + "'; set -o pipefail 2>/dev/null; " + line;
  int rc = std::system(("bash -c \"" + cmd + "\"").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// A master database with table item(id, name, qty) holding rows 1..n.
void make_master(const std::string& path, int n) {
  std::unique_ptr<master> m;
  REQUIRE_FALSE(master::open(path, quiet_master(), nullptr, m));
  exec_sql(m->db(), test::item_ddl);
  REQUIRE_FALSE(m->register_table(test::stream_of("item")));
  // Several transactions, as an application writes.
  for (int from = 1; from <= n; from += 1000) {
    REQUIRE_FALSE(m->transaction([&](sqlite3* db) {
      for (int i = from; i < from + 1000 && i <= n; ++i)
        exec_sql(db, "INSERT INTO item VALUES(" + std::to_string(i) + ",'name " +
                         std::to_string(i) + "'," + std::to_string(i * 10) + ")");
      return std::error_code{};
    }));
  }
}

// An empty replica database with its local table (remote "name" lands in "label").
void make_replica(const std::string& path) {
  test::exec_file(path, "CREATE TABLE stock(id INTEGER PRIMARY KEY, label TEXT, qty INTEGER)");
}

std::string config_text(const std::string& db) {
  return "[replica]\nname = \"gw1\"\ndatabase = \"" + db +
         "\"\n\n[[table]]\ncqrs_id = \"item\"\ntable = \"stock\"\n[table.mapping]\nname = "
         "\"label\"\n";
}

// "id|label|qty" lines of a table, ordered by id.
std::string rows_of(const std::string& path, const std::string& table,
                    const std::string& name_col) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(
              db, ("SELECT id, " + name_col + ", qty FROM " + table + " ORDER BY id").c_str(), -1,
              &s, nullptr) == SQLITE_OK);
  std::string out;
  while (sqlite3_step(s) == SQLITE_ROW)
    out += std::to_string(sqlite3_column_int64(s, 0)) + "|" +
           reinterpret_cast<const char*>(sqlite3_column_text(s, 1)) + "|" +
           std::to_string(sqlite3_column_int64(s, 2)) + "\n";
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

std::int64_t count_of(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(s) == SQLITE_ROW);
  std::int64_t n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  return n;
}

struct world {
  edgecqrs::test::temp_dir d{"cli"};
  std::string mdb = d.file("master.db"), rdb = d.file("replica.db"), cfg = d.file("replica.toml");
  explicit world(int rows) {
    make_master(mdb, rows);
    make_replica(rdb);
    write_file(cfg, config_text(rdb));
  }
};

}  // namespace

TEST_CASE("help and bad flags") {
  edgecqrs::test::temp_dir d("cli");
  for (const char* sub :
       {"status", "dump", "load", "diff-master", "diff-replica", "diff-sync", "decode",
        "dead-letters list", "dead-letters retry", "dead-letters purge"}) {
    result r = cli(d, std::string(sub) + " --help");
    INFO(sub);
    CHECK(r.status == 0);
    CHECK(r.out.find("Usage") != std::string::npos);
  }
  result r = cli(d, "status --db x.db --bogus");
  CHECK(r.status != 0);
  CHECK(r.err.find("--bogus") != std::string::npos);
  r = cli(d, "dump --db x.db -o out.cbor");  // --cqrs-id missing
  CHECK(r.status != 0);
  CHECK(r.err.find("--cqrs-id") != std::string::npos);
  r = cli(d, "nonsense");
  CHECK(r.status != 0);
  r = cli(d, "status --db '" + d.file("missing.db") + "'");
  CHECK(r.status != 0);
  CHECK(r.err.find("missing.db") != std::string::npos);
  r = cli(d, "dead-letters list --config x.toml --older-than soon");
  CHECK(r.status != 0);
}

TEST_CASE("bad config: the message names the file position, the key and the problem") {
  world w(3);
  write_file(w.cfg, "[replica]\nname = \"gw1\"\ndatabase = \"" + w.rdb +
                        "\"\n\n[[table]]\ncqrs_id = \"item\"\ncolour = 1\n");
  result r = cli(w.d, "load -i x --config '" + w.cfg + "'");
  CHECK(r.status == 2);
  CHECK(r.err.find("replica.toml:7:") != std::string::npos);
  CHECK(r.err.find("table[0].colour: unknown key") != std::string::npos);
  write_file(w.cfg, "[replica]\nname = \"gw1\"\ndatabase = \"" + w.rdb +
                        "\"\n\n[[table]]\ncqrs_id = \"item\"\ntable = \"nosuch\"\n");
  r = cli(w.d, "dead-letters list --config '" + w.cfg + "'");
  CHECK(r.status == 2);
  CHECK(r.err.find("nosuch") != std::string::npos);
}

TEST_CASE("dump and load: all rows through the replica's version rules, then duplicates") {
  world w(2500);
  result r = cli(
      w.d, "--quiet dump --db '" + w.mdb + "' --cqrs-id item -o '" + w.d.file("item.cbor") + "'");
  REQUIRE(r.status == 0);
  r = cli(w.d, "load -i '" + w.d.file("item.cbor") + "' --config '" + w.cfg + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.find("2500 rows") != std::string::npos);
  CHECK(r.err.find("applied 2500") != std::string::npos);
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));
  // A newer dump after a change on the master, then the older dump again: the older versions
  // are stale and change nothing (sync of an equal version refreshes, as a re-sync does).
  master_change(w.mdb, "UPDATE item SET qty = -1 WHERE id <= 7");
  REQUIRE(
      cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("new.cbor") + "'").status ==
      0);
  r = cli(w.d, "load -i '" + w.d.file("new.cbor") + "' --config '" + w.cfg + "'");
  CHECK(r.status == 0);
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));
  r = cli(w.d, "load -i '" + w.d.file("item.cbor") + "' --config '" + w.cfg + "'");
  CHECK(r.status == 0);
  CHECK(r.err.find("stale 7,") != std::string::npos);
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));

  // --where with a bound parameter, through a pipe, into a cleared replica.
  CHECK(sh("\\$CLI -q dump --db '" + w.mdb +
           "' -c item --where 'id <= ?1 AND name LIKE ?2' -p 10 -p 'text:name%' -o - | \\$CLI load "
           "-i - --clear --config '" +
           w.cfg + "' 2>'" + w.d.file("e.txt") + "'") == 0);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM stock") == 10);
  CHECK(count_of(w.rdb, "SELECT max(id) FROM stock") == 10);

  // A bad WHERE names the problem.
  r = cli(w.d, "dump --db '" + w.mdb + "' -c item --where 'nosuchcol = 1' -o '" +
                   w.d.file("x.cbor") + "'");
  CHECK(r.status != 0);
  CHECK(r.err.find("nosuchcol") != std::string::npos);
  // A table that is not there.
  r = cli(w.d, "dump --db '" + w.mdb + "' -c item --table nosuch -o '" + w.d.file("x.cbor") + "'");
  CHECK(r.status != 0);
  CHECK(r.err.find("nosuch") != std::string::npos);
}

TEST_CASE("load of a damaged dump: the bad record is reported with its position, the rest loads") {
  world w(2500);
  REQUIRE(
      cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("item.cbor") + "'").status ==
      0);
  std::string bytes = edgecqrs::test::read_file(w.d.file("item.cbor"));
  // Split into items; keep header and messages, insert a well-formed but wrong item after the
  // first message, and end with a truncated item.
  std::vector<std::string> items;
  for (std::size_t pos = 0; pos < bytes.size();) {
    std::size_t len = 0;
    REQUIRE_FALSE(cbor_item_size(reinterpret_cast<const std::uint8_t*>(bytes.data()) + pos,
                                 bytes.size() - pos, len));
    items.push_back(bytes.substr(pos, len));
    pos += len;
  }
  REQUIRE(items.size() >= 3);  // header + at least two messages
  std::string bad =
      "\x63"
      "bad";
  std::string out = items[0] + items[1];
  const std::size_t bad_at = out.size();
  out += bad;
  for (std::size_t i = 2; i < items.size(); ++i) out += items[i];
  const std::size_t trunc_at = out.size();
  out += std::string("\x83\x01", 2);
  write_file(w.d.file("damaged.cbor"), out);
  result r = cli(w.d, "load -i '" + w.d.file("damaged.cbor") + "' --config '" + w.cfg + "'");
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("item 2 at byte " + std::to_string(bad_at)) != std::string::npos);
  CHECK(r.err.find("item " + std::to_string(items.size() + 1) + " at byte " +
                   std::to_string(trunc_at)) != std::string::npos);
  CHECK(r.err.find("applied 2500") != std::string::npos);
  CHECK(r.err.find("bad records 2") != std::string::npos);
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));

  // Not a dump at all.
  write_file(w.d.file("junk.cbor"), "\x01\x02");
  r = cli(w.d, "load -i '" + w.d.file("junk.cbor") + "' --config '" + w.cfg + "'");
  CHECK(r.status == 1);
  CHECK(r.err.find("not an edgecqrs dump") != std::string::npos);
}

TEST_CASE("status of a master and of a replica, text and JSON") {
  world w(1500);
  result r = cli(w.d, "status --db '" + w.mdb + "' --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["role"] == "master");
  // Nothing was published (no transport): the schema record and both transactions are pending.
  CHECK(j["outbox_depth"].get<int>() >= 2);
  CHECK(j["outbox_oldest_age_ms"].is_number());
  REQUIRE(j["streams"].size() == 1);
  CHECK(j["streams"][0]["cqrs_id"] == "item");
  CHECK(j["streams"][0]["head_seq"] == 1500);
  CHECK(j["streams"][0]["acked_seq"] == 0);
  r = cli(w.d, "status --db '" + w.mdb + "'");
  CHECK(r.status == 0);
  CHECK(r.out.find("role: master") != std::string::npos);

  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  REQUIRE(cli(w.d, "-q load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'").status == 0);
  r = cli(w.d, "status --db '" + w.rdb + "' --json");
  REQUIRE(r.status == 0);
  j = nlohmann::json::parse(r.out);
  CHECK(j["role"] == "replica");
  CHECK(j["dead_letters"] == 0);
  REQUIRE(j["streams"].size() == 1);
  CHECK(j["streams"][0]["rows"] == 1500);
  CHECK(j["streams"][0]["lag"] == 0);

  // A database edgecqrs never touched.
  make_replica(w.d.file("plain.db"));
  r = cli(w.d, "status --db '" + w.d.file("plain.db") + "'");
  CHECK(r.status == 1);
  CHECK(r.err.find("not an edgecqrs database") != std::string::npos);
}

TEST_CASE("dead letters: list, retry after the cause is fixed, purge with filters") {
  world w(5);
  // The replica's local table lacks a NOT NULL column's value: every event fails to apply.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(w.rdb.c_str(), &db) == SQLITE_OK);
    exec_sql(db, "DROP TABLE stock");
    exec_sql(
        db,
        "CREATE TABLE stock(id INTEGER PRIMARY KEY, label TEXT, qty INTEGER, extra TEXT NOT NULL)");
    sqlite3_close(db);
  }
  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  result r = cli(w.d, "load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'");
  INFO(r.err);
  const std::int64_t dead = count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_dead");
  REQUIRE(dead > 0);
  r = cli(w.d, "dead-letters list --config '" + w.cfg + "' --json");
  REQUIRE(r.status == 0);
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    CHECK(j["cqrs_id"] == "item");
    ++n;
  }
  CHECK(n == dead);
  // Filters: another stream, or younger than a day: nothing to purge.
  r = cli(w.d, "dead-letters purge --config '" + w.cfg + "' --cqrs-id other");
  CHECK(r.status == 0);
  r = cli(w.d, "dead-letters purge --config '" + w.cfg + "' --older-than 1d");
  CHECK(r.status == 0);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_dead") == dead);
  // Retry while the cause remains: they stay, exit 1.
  r = cli(w.d, "dead-letters retry --config '" + w.cfg + "'");
  CHECK(r.status == 1);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_dead") == dead);
  // Fix the table, retry: the rows arrive.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(w.rdb.c_str(), &db) == SQLITE_OK);
    exec_sql(db, "DROP TABLE stock");
    exec_sql(db, "CREATE TABLE stock(id INTEGER PRIMARY KEY, label TEXT, qty INTEGER)");
    sqlite3_close(db);
  }
  r = cli(w.d, "dead-letters retry --config '" + w.cfg + "' --cqrs-id item");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_dead") == 0);
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));
  r = cli(w.d, "dead-letters purge --config '" + w.cfg + "'");
  CHECK(r.status == 0);
}

TEST_CASE("diff pipeline repairs a replica whose rows were changed, deleted and added") {
  world w(300);
  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  REQUIRE(cli(w.d, "-q load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'").status == 0);
  // Changes the replica never hears of: updated (versions 2), deleted and new rows on the master.
  master_change(w.mdb, "UPDATE item SET qty = qty + 1 WHERE id <= 5");
  master_change(w.mdb, "DELETE FROM item WHERE id IN (6, 7, 8)");
  master_change(w.mdb, "INSERT INTO item VALUES(301,'n301',1),(302,'n302',2),(303,'n303',3)");
  // ... and damage on the replica: a row lost, a row that never existed on the master.
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(w.rdb.c_str(), &db) == SQLITE_OK);
    exec_sql(db, "DELETE FROM stock WHERE id = 20");
    exec_sql(db, "INSERT INTO stock VALUES(900, 'stray', 0)");
    sqlite3_close(db);
  }
  // The master's stream events were published and lost (nobody subscribed): acknowledged.
  loopback::broker broker;
  {
    auto mc = broker.make_client("master");
    std::unique_ptr<master> m;
    REQUIRE_FALSE(master::open(w.mdb, quiet_master(), mc.get(), m));
    REQUIRE_FALSE(m->register_table(test::stream_of("item")));
    for (int i = 0; i < 100 && m->stats().records_pending; ++i) {
      REQUIRE_FALSE(m->poll());
      broker.pump_all();
    }
    REQUIRE(m->stats().records_pending == 0);
  }
  const std::string diff = w.d.file("diff.jsonl");
  REQUIRE(sh("\\$CLI -q diff-master --db '" + w.mdb +
             "' -c item | \\$CLI -q diff-replica --config '" + w.cfg + "' --delete-missing > '" +
             diff + "'") == 0);
  std::string text = edgecqrs::test::read_file(diff);
  INFO(text);
  std::istringstream lines(text);
  std::string line;
  std::vector<std::string> syncs, deletes;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("op") && j["op"] == "sync")
      syncs.push_back(j["key"].dump() + ":" + j["reason"].get<std::string>());
    if (j.contains("op") && j["op"] == "delete") deletes.push_back(j["key"].dump());
  }
  CHECK(syncs == std::vector<std::string>{"[1]:stale", "[2]:stale", "[3]:stale", "[4]:stale",
                                          "[5]:stale", "[20]:missing", "[301]:missing",
                                          "[302]:missing", "[303]:missing"});
  CHECK(deletes == std::vector<std::string>{"[6]", "[7]", "[8]", "[900]"});
  // --delete-missing removed them, with tombstones.
  CHECK(count_of(w.rdb, "SELECT count(*) FROM stock WHERE id IN (6,7,8,900)") == 0);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_rows WHERE deleted=1") == 4);

  result r = cli(w.d, "diff-sync --db '" + w.mdb + "' --to gw1", diff);
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.find("9 rows queued") != std::string::npos);
  // The master publishes the sync events; the replica receives them on its direct topic.
  {
    auto mc = broker.make_client("master2");
    auto rc = broker.make_client("gw1");
    std::unique_ptr<master> m;
    REQUIRE_FALSE(master::open(w.mdb, quiet_master(), mc.get(), m));
    REQUIRE_FALSE(m->register_table(test::stream_of("item")));
    replica_options ro;
    ro.name = "gw1";
    std::unique_ptr<replica> rep;
    REQUIRE_FALSE(replica::open(w.rdb, ro, rep));
    replica_table_options rto;
    rto.local_table = "stock";
    rto.mapping = {{"name", "label"}};
    REQUIRE_FALSE(rep->register_table("item", rto));
    REQUIRE_FALSE(rep->attach(*rc));
    for (int i = 0; i < 100 && m->stats().records_pending; ++i) {
      REQUIRE_FALSE(m->poll());
      broker.pump_all();
    }
    REQUIRE(m->stats().records_pending == 0);
  }
  CHECK(rows_of(w.rdb, "stock", "label") == rows_of(w.mdb, "item", "name"));
  // A second diff finds nothing.
  REQUIRE(sh("\\$CLI -q diff-master --db '" + w.mdb +
             "' -c item | \\$CLI -q diff-replica --config '" + w.cfg + "' > '" + diff + "'") == 0);
  CHECK(edgecqrs::test::read_file(diff).find("\"op\"") == std::string::npos);

  // An incomplete listing (no end marker) is refused, nothing deleted.
  write_file(
      w.d.file("partial.jsonl"),
      "{\"edgecqrs_diff\":1,\"side\":\"master\",\"cqrs_id\":\"item\",\"pk\":[\"id\"]}\n[[1],2]\n");
  r = cli(w.d, "diff-replica --config '" + w.cfg + "' --delete-missing", w.d.file("partial.jsonl"));
  CHECK(r.status == 1);
  CHECK(r.err.find("without the end marker") != std::string::npos);
  CHECK(count_of(w.rdb, "SELECT count(*) FROM stock") == 300 - 3 + 3);
  // A malformed line names its number.
  write_file(w.d.file("bad.jsonl"),
             "{\"edgecqrs_diff\":1,\"side\":\"master\",\"cqrs_id\":\"item\",\"pk\":[\"id\"]}\n[[1],"
             "2]\n[\"x\"]\n");
  r = cli(w.d, "diff-replica --config '" + w.cfg + "'", w.d.file("bad.jsonl"));
  CHECK(r.status == 1);
  CHECK(r.err.find("line 3") != std::string::npos);
}

TEST_CASE("global flags are accepted after the sub-command too") {
  world w(3);
  result r = cli(w.d, "dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "' --quiet");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(r.err.empty());  // --quiet took effect
  r = cli(w.d, "dead-letters list --config '" + w.cfg + "' -q");
  CHECK(r.status == 0);
  CHECK(r.err.empty());
}

TEST_CASE(
    "status: a completed re-sync is not pending; a wanted or running one is; the master's CHANGED "
    "column") {
  world w(1);
  result r = cli(w.d, "status --db '" + w.mdb + "' --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  // One inserted row, never changed: no version entry. The text column says what it counts.
  CHECK(j["streams"][0]["versioned_rows"] == 0);
  r = cli(w.d, "status --db '" + w.mdb + "'");
  CHECK(r.out.find("CHANGED") != std::string::npos);
  CHECK(r.out.find(" ROWS") == std::string::npos);

  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  REQUIRE(cli(w.d, "-q load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'").status == 0);
  auto pending = [&] {
    result s = cli(w.d, "status --db '" + w.rdb + "' --json");
    REQUIRE(s.status == 0);
    return nlohmann::json::parse(s.out)["streams"][0]["resync_pending"].get<bool>();
  };
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(w.rdb.c_str(), &db) == SQLITE_OK);
  // Session 77 completed (parts at finished_run = 2^62 + 1), nothing wanted.
  exec_sql(db,
           "UPDATE edgecqrs_r_streams SET resync_session=77, resync_parts=4611686018427387905, "
           "resync_want=0");
  CHECK_FALSE(pending());
  // Session 78 running (next part 3).
  exec_sql(db, "UPDATE edgecqrs_r_streams SET resync_session=78, resync_parts=3");
  CHECK(pending());
  // Completed, but a newer re-sync is wanted.
  exec_sql(db, "UPDATE edgecqrs_r_streams SET resync_parts=4611686018427387905, resync_want=12");
  CHECK(pending());
  sqlite3_close(db);
}

TEST_CASE("human-readable output escapes control characters taken from the data") {
  world w(2);
  {
    // A local NOT NULL column whose name carries a terminal escape: every event fails, and the
    // dead letter's detail (SQLite's message) names the column.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(w.rdb.c_str(), &db) == SQLITE_OK);
    exec_sql(db, "DROP TABLE stock");
    exec_sql(db,
             "CREATE TABLE stock(id INTEGER PRIMARY KEY, label TEXT, qty INTEGER, "
             "\"\x1b[2J\x1b]0;pwn\x07x\x7f\" TEXT NOT NULL)");
    sqlite3_close(db);
  }
  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  cli(w.d, "-q load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'");
  REQUIRE(count_of(w.rdb, "SELECT count(*) FROM edgecqrs_r_dead") > 0);
  result r = cli(w.d, "dead-letters list --config '" + w.cfg + "'");
  REQUIRE(r.status == 0);
  INFO(r.out);
  CHECK(r.out.find("\\x1b[2J") != std::string::npos);  // shown, escaped
  for (char c : r.out + r.err) {
    auto u = static_cast<unsigned char>(c);
    const bool control = (u < 0x20 && u != '\n') || u == 0x7f;
    CHECK_FALSE(control);
  }
  // JSON output stays exact (the JSON escapes carry the bytes).
  r = cli(w.d, "dead-letters list --config '" + w.cfg + "' --json -n 1");
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(r.out)["detail"].get<std::string>().find("\x1b[2J") !=
        std::string::npos);
}

TEST_CASE("CLI uses the stream's registered definition, and refuses callbacks it cannot run") {
  edgecqrs::test::temp_dir d{"cli"};
  const std::string mdb = d.file("master.db");
  std::uint32_t cols_tag = 0;
  {
    std::unique_ptr<master> m;
    REQUIRE_FALSE(master::open(mdb, quiet_master(), nullptr, m));
    exec_sql(m->db(), test::item_ddl);
    exec_sql(m->db(), "CREATE TABLE other(id INTEGER PRIMARY KEY, v TEXT)");
    exec_sql(m->db(), "CREATE TABLE part(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
    table_options f = test::stream_of("item");
    f.filter = [](const row_ref& r) { return r.get("qty").i > 100; };
    REQUIRE_FALSE(m->register_table(f));
    table_options c;
    c.table = "part";
    c.cqrs_id = "part_cols";
    c.columns = {"id", "name"};
    c.produce = false;
    REQUIRE_FALSE(m->register_table(c));
    table_options s = test::stream_of("other");
    s.serializer = [](const row_ref&, std::vector<value>&) { return std::error_code{}; };
    REQUIRE_FALSE(m->register_table(s));
    schema sch;
    REQUIRE(m->schema_of("part_cols", sch));
    cols_tag = sch.schema_tag;
    REQUIRE_FALSE(m->transaction([](sqlite3* db) {
      exec_sql(db, "INSERT INTO item VALUES(1,'low',5),(2,'high',500)");
      exec_sql(db, "INSERT INTO other VALUES(1,'x')");
      exec_sql(db, "INSERT INTO part VALUES(1,'p',3)");
      return std::error_code{};
    }));
  }
  const std::string out = d.file("x.cbor");
  // A filter callback: sync, dump and diff-master would send or list rows it excludes.
  for (const std::string& args :
       {"sync --db '" + mdb + "' -c item", "dump --db '" + mdb + "' -c item -o '" + out + "'",
        "diff-master --db '" + mdb + "' -c item"}) {
    CAPTURE(args);
    result r = cli(d, args);
    CAPTURE(r.err);
    CHECK(r.status == 2);
    CHECK(r.err.find("'item'") != std::string::npos);
    CHECK(r.err.find("filter callback") != std::string::npos);
  }
  // A serializer callback: the values would differ.
  result r = cli(d, "dump --db '" + mdb + "' -c other -o '" + out + "'");
  CHECK(r.status == 2);
  CHECK(r.err.find("serializer callback") != std::string::npos);
  // Columns only: the registered table and columns, the same schema tag (no flags needed).
  r = cli(d, "-q dump --db '" + mdb + "' -c part_cols -o '" + out + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  r = cli(d, "decode '" + out + "'");
  REQUIRE(r.status == 0);
  CHECK(r.out.find("\"schema_tag\":" + std::to_string(cols_tag) + ",") != std::string::npos);
  CHECK(r.out.find("\"columns\":2") != std::string::npos);
  // Other columns than the registered ones would publish another schema: refused.
  r = cli(d, "dump --db '" + mdb + "' -c part_cols --columns id,name,qty -o '" + out + "'");
  CHECK(r.status == 2);
  CHECK(r.err.find("registered") != std::string::npos);
  // The CLI's registration kept the stream's definition (no guard for produce off).
  CHECK(count_of(mdb, "SELECT filter FROM edgecqrs_registration WHERE cqrs_id='item'") == 1);
  CHECK(count_of(mdb, "SELECT count(*) FROM sqlite_master WHERE type='trigger'") == 6);
}

TEST_CASE("resync --authoritative stores an authoritative want for the replica daemon") {
  world w(3);
  REQUIRE(cli(w.d, "-q dump --db '" + w.mdb + "' -c item -o '" + w.d.file("i.cbor") + "'").status ==
          0);
  REQUIRE(cli(w.d, "-q load -i '" + w.d.file("i.cbor") + "' --config '" + w.cfg + "'").status == 0);
  const std::string want = "SELECT count(*) FROM edgecqrs_r_streams WHERE cqrs_id='item' AND";
  CHECK(count_of(w.rdb, want + " resync_auth=0") == 1);
  result r = cli(w.d, "resync --config '" + w.cfg + "' -c item");
  CHECK(r.status == 0);
  CHECK(r.err.find("full re-sync of 'item' requested") != std::string::npos);
  CHECK(count_of(w.rdb, want + " resync_want>0 AND resync_auth=0") == 1);
  r = cli(w.d, "resync --config '" + w.cfg + "' -c item --authoritative");
  CHECK(r.status == 0);
  CHECK(r.err.find("authoritative re-sync of 'item' requested") != std::string::npos);
  CHECK(count_of(w.rdb, want + " resync_want>0 AND resync_auth=1") == 1);
  r = cli(w.d, "resync --config '" + w.cfg + "' -c nope --authoritative");
  CHECK(r.status != 0);
  CHECK(r.err.find("nope") != std::string::npos);
}

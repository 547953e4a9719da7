#include "scenario.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sys/types.h>
#include <thread>

using namespace std::chrono_literals;

namespace rel {

bool long_run() {
  const char* v = std::getenv("EDGECQRS_LONG");
  return v != nullptr && std::string(v) == "1";
}

int fault_count(int short_count, int long_count) {
  return long_run() ? long_count : short_count;
}

std::uint64_t seed() {
  const char* v = std::getenv("EDGECQRS_SEED");
  return v != nullptr ? std::strtoull(v, nullptr, 10) : 20261123ULL;
}

void figures::print(const char* name) const {
  std::printf("[reliability] %s: committed=%lld published=%lld applied=%lld "
              "duplicates_skipped=%lld gaps_repaired=%lld lost=%lld phantom=%lld (seed %llu)\n",
              name, committed, published, applied, duplicates, gaps_repaired, lost, phantom,
              static_cast<unsigned long long>(seed()));
  std::fflush(stdout);
}

scenario::scenario(edgecqrs::test::broker_options o) : dir_("rel"), broker_(std::move(o)) {}

namespace {
std::size_t count_connected(const std::string& log) {
  const auto text = edgecqrs::test::read_file(log);
  std::size_t n = 0;
  for (auto p = text.find(": connected"); p != std::string::npos;
       p = text.find(": connected", p + 1)) {
    ++n;
  }
  return n;
}
long long num(const std::map<std::string, std::string>& kv, const char* key) {
  const auto it = kv.find(key);
  return it == kv.end() ? 0 : std::atoll(it->second.c_str());
}
}  // namespace

std::unique_ptr<example::child> scenario::start_replica_with(const std::string& client_id,
                                                             const std::vector<std::string>& more,
                                                             bool wait) {
  auto c = std::make_unique<example::child>();
  std::vector<std::string> argv = {EDGECQRS_EXAMPLE_REPLICA, "--db", path("replica.db"),
                                         "--name", "dashboard", "--summary",
                                         path(client_id + ".summary"), "--uri", uri(),
                                         "--client-id", client_id, "--reorder-ms", "500"};
  for (const auto& x : more) argv.push_back(x);
  const std::string log = path(client_id + ".log");
  const auto before = count_connected(log);
  REQUIRE(c->spawn(argv, log));
  if (wait) {
    const bool up = wait_until([&] { return count_connected(log) > before || !c->running(); }, 20s);
    REQUIRE_MESSAGE(up, edgecqrs::test::read_file(log));
    REQUIRE_MESSAGE(c->running(), edgecqrs::test::read_file(log));
  }
  return c;
}

std::unique_ptr<example::child> scenario::start_master(const std::vector<std::string>& more,
                                                       const std::string& tag,
                                                       const std::string& db) {
  auto c = std::make_unique<example::child>();
  std::vector<std::string> argv = {EDGECQRS_EXAMPLE_MASTER, "--db", path(db),
                                   "--summary", path(tag + ".summary"), "--uri", uri(),
                                   "--client-id", db == "device.db" ? std::string("device-master") : "device-" + tag};
  for (const auto& x : more) argv.push_back(x);
  REQUIRE(c->spawn(argv, path(tag + ".log")));
  return c;
}

void scenario::kill9(example::child& c) {
  if (c.running()) ::kill(c.pid(), SIGKILL);
  c.wait(10s);
}

void scenario::finish_replica(example::child& c, const std::string& client_id, figures& f) {
  CHECK(c.terminate() == 0);
  const auto kv = example::read_summary(path(client_id + ".summary"));
  f.applied += num(kv, "events_applied");
  f.duplicates += num(kv, "duplicates") + num(kv, "skipped_stale");
  f.gaps_repaired += num(kv, "gaps_repaired");
  CHECK(num(kv, "dead_letters") == 0);
}

void scenario::add_master_summary(const std::string& tag, figures& f) {
  const auto kv = example::read_summary(path(tag + ".summary"));
  f.published += num(kv, "messages_published");
}

bool scenario::converges(std::chrono::seconds limit, std::string* why) {
  return wait_until(
      [&] { return example::databases_agree(path("device.db"), path("replica.db"), why); }, limit);
}

namespace {
long long scalar(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  long long v = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    v = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  return v;
}
}  // namespace

void scenario::compare(figures& f) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path("device.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  REQUIRE(sqlite3_exec(db, ("ATTACH '" + path("replica.db") + "' AS rep").c_str(), nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  f.committed = scalar(db, "SELECT (SELECT count(*) FROM main.reading) +"
                           " (SELECT count(*) FROM main.device)");
  f.lost = scalar(db,
                  "SELECT (SELECT count(*) FROM main.reading m WHERE NOT EXISTS (SELECT 1 FROM"
                  " rep.reading r WHERE r.id = m.id AND r.device_id = m.device_id AND"
                  " r.value = m.value AND r.taken_ms = m.taken_ms)) +"
                  " (SELECT count(*) FROM main.device m WHERE NOT EXISTS (SELECT 1 FROM"
                  " rep.device r WHERE r.id = m.id AND r.name = m.name AND"
                  " r.location IS m.location))");
  f.phantom = scalar(db,
                     "SELECT (SELECT count(*) FROM rep.reading r WHERE NOT EXISTS (SELECT 1 FROM"
                     " main.reading m WHERE m.id = r.id)) + (SELECT count(*) FROM rep.device r"
                     " WHERE NOT EXISTS (SELECT 1 FROM main.device m WHERE m.id = r.id))");
  sqlite3_close(db);
}

void scenario::start_broker() { REQUIRE_MESSAGE(broker_.start(), broker_.error()); }

std::unique_ptr<example::child> scenario::start_writer(long long rows, int batch, int pace_ms) {
  return start_master({"--rows", std::to_string(rows), "--batch", std::to_string(batch),
                       "--pace-ms", std::to_string(pace_ms), "--linger"});
}

void scenario::drain_and_check(figures& f, std::chrono::seconds limit) {
  std::string why;
  const bool agree = converges(limit, &why);
  compare(f);
  CHECK_MESSAGE(agree, why);
}

void scenario::finish_writer(example::child& writer, example::child& replica,
                             const std::string& replica_id, figures& f,
                             std::chrono::seconds limit) {
  REQUIRE(wait_until(
      [&] { return log("master").find("lingering") != std::string::npos || !writer.running(); },
      limit));
  REQUIRE_MESSAGE(writer.running(), log("master"));
  drain_and_check(f);
  CHECK(writer.terminate() == 0);
  add_master_summary("master", f);
  finish_replica(replica, replica_id, f);
}

void scenario::report(const figures& f, const char* name) {
  f.print(name);
  CHECK(f.lost == 0);
  CHECK(f.phantom == 0);
  CHECK(f.committed > 0);
}

std::string scenario::log(const std::string& tag) const {
  return edgecqrs::test::read_file(path(tag + ".log"));
}

bool scenario::wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

}  // namespace rel

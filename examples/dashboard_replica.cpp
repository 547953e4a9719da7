// The dashboard side of the host example: an edgecqrs::replica applying the device registry and
// the readings into its own SQLite database, where a view joins them.
//
// edgecqrs_example_replica --uri tcp://127.0.0.1:PORT --db replica.db --name NAME
//   [--client-id ID] [--group G] [--summary FILE] [--mqtt 4|5] [--tls-ca F]
//   [--user U --password P]
// Runs until SIGTERM/SIGINT, then writes a key=value summary (and keeps "<summary>.live" with the
// transport counters up to date while running); SIGUSR1 requests a re-sync of both streams from
// the master. Each reading row gets applied_ms (wall clock, set by a trigger when the replica
// inserts it) so the driver can measure latency.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/ports/paho.hpp"
#include "edgecqrs/replica.hpp"
#include "example_common.hpp"

namespace {

std::atomic<bool> stop_requested{false};
std::atomic<bool> resync_requested{false};
void on_resync_signal(int) { resync_requested.store(true); }
std::atomic<int> stop_signal{0};
std::atomic<long> stop_sender{0};
void on_signal(int sig, siginfo_t* info, void*) {
  stop_signal.store(sig);
  stop_sender.store(info != nullptr ? static_cast<long>(info->si_pid) : 0L);
  stop_requested.store(true);
}

const char* const ddl =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE IF NOT EXISTS device(id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " location TEXT);"
    "CREATE TABLE IF NOT EXISTS reading(id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL,"
    " value REAL NOT NULL, taken_ms INTEGER NOT NULL, applied_ms INTEGER);"
    "CREATE TRIGGER IF NOT EXISTS reading_applied AFTER INSERT ON reading BEGIN"
    " UPDATE reading SET applied_ms = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    " WHERE id = NEW.id; END;"
    "CREATE VIEW IF NOT EXISTS dashboard AS"
    " SELECT d.id AS device_id, d.name, d.location, count(r.id) AS readings,"
    " avg(r.value) AS mean_value, max(r.taken_ms) AS last_taken_ms"
    " FROM device d LEFT JOIN reading r ON r.device_id = d.id GROUP BY d.id;";

// Counts what arrives on the broadcast event topics (".../v1/e/...") before the replica sees it:
// with a shared subscription each stream message reaches one worker only, so the workers' counts
// add up to the master's. Everything else is forwarded unchanged.
class counting_transport final : public edgecqrs::transport {
 public:
  explicit counting_transport(edgecqrs::transport& inner) : inner_(inner) {}
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const edgecqrs::publish_options& opts,
                          edgecqrs::publish_callback done) override {
    return inner_.publish(topic, data, size, opts, std::move(done));
  }
  std::error_code subscribe(std::string_view filter, edgecqrs::message_callback cb) override {
    return inner_.subscribe(filter, [this, cb = std::move(cb)](const edgecqrs::incoming_message& m) {
      if (m.topic.find("/v1/e/") != std::string_view::npos) {
        edgecqrs::message msg;
        if (!edgecqrs::decode_message(m.data, m.size, msg)) {
          stream_events.fetch_add(msg.events.size());
          (msg.events.empty() ? heartbeats : stream_messages).fetch_add(1);
        }
      }
      cb(m);
    });
  }
  std::error_code unsubscribe(std::string_view filter) override {
    return inner_.unsubscribe(filter);
  }
  bool connected() const override { return inner_.connected(); }
  std::size_t max_in_flight() const override { return inner_.max_in_flight(); }

  std::atomic<std::uint64_t> stream_messages{0}, stream_events{0}, heartbeats{0};

 private:
  edgecqrs::transport& inner_;
};

int fail(const char* what, std::error_code ec, const std::string& detail = {}) {
  std::fprintf(stderr, "replica: %s: %s%s%s\n", what, ec.message().c_str(),
               detail.empty() ? "" : ": ", detail.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const example::flags f(argc, argv);
  if (!f.bad().empty() || !f.has("db") || !f.has("name")) {
    std::fprintf(stderr, "usage: %s --uri URI --db PATH --name NAME [--group G] ...\n", argv[0]);
    return 2;
  }
  struct sigaction sa {};
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGUSR1, on_resync_signal);

  sqlite3* db = nullptr;
  if (sqlite3_open(f.get("db").c_str(), &db) != SQLITE_OK) {
    return fail("open", edgecqrs::errc::sqlite_error, sqlite3_errmsg(db));
  }
  sqlite3_busy_timeout(db, 5000);
  if (sqlite3_exec(db, ddl, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return fail("schema", edgecqrs::errc::sqlite_error, sqlite3_errmsg(db));
  }
  edgecqrs::replica_options ro;
  ro.name = f.get("name");
  ro.shared_group = f.get("group");
  ro.reorder_window_ms = f.num("reorder-ms", 2000);
  ro.request_backoff_initial_ms = 500;
  ro.request_backoff_max_ms = 4000;
  std::unique_ptr<edgecqrs::replica> r;
  if (auto ec = edgecqrs::replica::open(db, ro, r)) return fail("replica", ec);
  edgecqrs::replica_table_options devs;
  devs.local_table = "device";
  edgecqrs::replica_table_options reads;
  reads.local_table = "reading";
  if (auto ec = r->register_table("devices", devs)) return fail("register", ec, r->last_error());
  if (auto ec = r->register_table("readings", reads)) return fail("register", ec, r->last_error());

  edgecqrs::ports::paho_transport transport(
      example::transport_config(f, "dashboard-" + ro.name));
  counting_transport counting(transport);
  if (auto ec = r->attach(counting)) return fail("attach", ec);
  if (auto ec = example::connect_with_retry(transport, std::chrono::seconds(15))) {
    return fail("connect", ec, transport.last_error_message());
  }
  std::fprintf(stderr, "replica %s: connected\n", ro.name.c_str());
  // A live view of some counters (transport and replica stats are thread-safe), rewritten every
  // ~200 ms to "<summary>.live", so a driver can wait on progress without stopping the replica.
  const std::string live = f.has("summary") ? f.get("summary") + ".live" : std::string();
  int tick = 0;
  while (!stop_requested.load()) {
    if (!live.empty() && tick++ % 4 == 0) {
      example::write_summary(live,
                             {{"received", std::to_string(transport.stats().received)},
                              {"stream_messages", std::to_string(counting.stream_messages.load())},
                              {"stream_events", std::to_string(counting.stream_events.load())},
                              {"heartbeats", std::to_string(counting.heartbeats.load())},
                              {"resyncs_completed", std::to_string(r->stats().resyncs_completed)}});
    }
    if (resync_requested.exchange(false)) {
      // An operator's "catch up from the master" (e.g. after expired events were dead-lettered).
      for (const char* id : {"devices", "readings"}) {
        if (auto ec = r->request_resync(id))
          std::fprintf(stderr, "replica: resync %s: %s\n", id, ec.message().c_str());
      }
      std::fprintf(stderr, "replica %s: re-sync requested\n", ro.name.c_str());
    }
    if (auto ec = r->poll()) std::fprintf(stderr, "replica: poll: %s\n", ec.message().c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::fprintf(stderr, "replica %s: stopping on signal %d from pid %ld (%s)\n", ro.name.c_str(),
               stop_signal.load(), stop_sender.load(),
               transport.last_error_message().c_str());
  // Detach first: no message may arrive while the replica goes away.
  transport.stop();
  r->detach();
  const auto st = r->stats();
  const auto ts = transport.stats();
  std::size_t dead = 0;
  r->dead_letter_count(dead);
  example::write_summary(f.get("summary"),
                         {{"messages", std::to_string(st.messages)},
                          {"events_applied", std::to_string(st.events_applied)},
                          {"duplicates", std::to_string(st.duplicates)},
                          {"skipped_stale", std::to_string(st.skipped_stale)},
                          {"gaps_detected", std::to_string(st.gaps_detected)},
                          {"gaps_repaired", std::to_string(st.gaps_repaired)},
                          {"replay_requests", std::to_string(st.replay_requests)},
                          {"resync_requests", std::to_string(st.resync_requests)},
                          {"resyncs_completed", std::to_string(st.resyncs_completed)},
                          {"rows_removed_by_resync", std::to_string(st.rows_removed_by_resync)},
                          {"dead_letters", std::to_string(dead)},
                          {"commit_failures", std::to_string(st.commit_failures)},
                          {"received", std::to_string(ts.received)},
                          {"stream_messages", std::to_string(counting.stream_messages.load())},
                          {"stream_events", std::to_string(counting.stream_events.load())},
                          {"heartbeats", std::to_string(counting.heartbeats.load())},
                          {"unrouted", std::to_string(ts.unrouted)},
                          {"connects", std::to_string(ts.connects)},
                          {"peak_rss_kib", std::to_string(example::peak_rss_kib())}});
  r.reset();
  sqlite3_close(db);
  return 0;
}

// The device side of the host example: a device registry and sensor readings in SQLite, written
// in transactions through edgecqrs::master and published over MQTT (Paho port).
//
// edgecqrs_example_master --uri tcp://127.0.0.1:PORT --db master.db [--client-id ID]
//   [--rows 10000] [--batch 100] [--devices 20] [--updates 0] [--deletes 0]
//   [--sync-to REPLICA] [--summary FILE] [--mqtt 4|5] [--tls-ca F] [--user U --password P]
//   [--pace-ms 0] [--max-message-events N] [--linger] [--cache-kib 256] [--ttl-ms 0]
//   [--window 8] [--max-message-bytes 32768]
// Writes --rows readings (plus updates and deletes of some of them), waits until the broker has
// acknowledged every event, writes a key=value summary and exits 0; non-zero on any failure.
// --pace-ms sleeps between transactions; --max-message-events caps events per MQTT message;
// --linger keeps publishing (heartbeats, answers to replay/re-sync requests) until SIGTERM.
// --cache-kib bounds SQLite's page cache; --window and --max-message-bytes bound the publisher's
// in-flight memory; --ttl-ms sets master_config::message_ttl_ms.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/paho.hpp"
#include "example_common.hpp"

namespace {

std::atomic<bool> stop_requested{false};
void on_signal(int) { stop_requested.store(true); }

const char* const ddl =
    "CREATE TABLE IF NOT EXISTS device(id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " location TEXT);"
    "CREATE TABLE IF NOT EXISTS reading(id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL,"
    " value REAL NOT NULL, taken_ms INTEGER NOT NULL);";

int fail(const char* what, std::error_code ec, const std::string& detail = {}) {
  std::fprintf(stderr, "master: %s: %s%s%s\n", what, ec.message().c_str(),
               detail.empty() ? "" : ": ", detail.c_str());
  return 1;
}

std::error_code exec(sqlite3* db, const std::string& sql) {
  return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK
             ? std::error_code()
             : make_error_code(edgecqrs::errc::sqlite_error);
}

}  // namespace

int main(int argc, char** argv) {
  const example::flags f(argc, argv);
  if (!f.bad().empty() || !f.has("db")) {
    std::fprintf(stderr, "usage: %s --uri URI --db PATH [--rows N] [--batch N] ...\n", argv[0]);
    return 2;
  }
  const long long rows = f.num("rows", 10000);
  const long long batch = std::max(1LL, f.num("batch", 100));
  const long long devices = std::max(1LL, f.num("devices", 20));
  const long long updates = f.num("updates", 0);
  const long long deletes = f.num("deletes", 0);

  edgecqrs::ports::paho_transport transport(example::transport_config(f, "device-master"));
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  edgecqrs::master_config mc;
  mc.heartbeat_interval_ms = 1000;
  if (f.has("max-message-events")) {
    mc.max_message_events = static_cast<std::size_t>(std::max(1LL, f.num("max-message-events", 1)));
  }
  // Publisher memory: Paho C and Paho C++ each hold a copy of every message until its PUBACK, so
  // in-flight payload is up to 2 x window x max_message_bytes (32 x 128 KiB by default: 8 MiB).
  // 8 x 32 KiB (<= 512 KiB) still keeps ~1000-event messages flowing at full speed.
  mc.window = static_cast<std::size_t>(std::max(1LL, f.num("window", 8)));
  mc.max_message_bytes = static_cast<std::size_t>(std::max(1024LL, f.num("max-message-bytes", 32 * 1024)));
  mc.message_ttl_ms = f.num("ttl-ms", 0);
  const long long pace_ms = f.num("pace-ms", 0);
  std::unique_ptr<edgecqrs::master> m;
  if (auto ec = edgecqrs::master::open(f.get("db"), mc, &transport, m)) return fail("open", ec);
  sqlite3* db = m->db();
  // A device bounds SQLite's page cache: the default (2000 KiB per connection) fills up while the
  // outbox takes 100k events and is most of this process's heap. 256 KiB keeps the outbox's hot
  // pages (its tail and the publisher's cursor) cached; WAL keeps commits cheap without the rest.
  const long long cache_kib = std::max(16LL, f.num("cache-kib", 256));
  if (auto ec = exec(db, "PRAGMA cache_size=-" + std::to_string(cache_kib)))
    return fail("cache_size", ec, sqlite3_errmsg(db));
  if (auto ec = exec(db, ddl)) return fail("schema", ec, sqlite3_errmsg(db));
  edgecqrs::table_options devs;
  devs.table = "device";
  devs.cqrs_id = "devices";
  edgecqrs::table_options reads;
  reads.table = "reading";
  reads.cqrs_id = "readings";
  reads.tracked = {"value"};
  for (const auto* o : {&devs, &reads}) {
    if (auto ec = m->register_table(*o)) return fail("register", ec, m->last_error_message());
  }
  if (auto ec = example::connect_with_retry(transport, std::chrono::seconds(15))) {
    return fail("connect", ec, transport.last_error_message());
  }
  if (auto ec = m->start(5)) return fail("publisher", ec);

  const auto t0 = std::chrono::steady_clock::now();
  long long written = 0;
  auto ec = m->transaction([&](sqlite3* d) -> std::error_code {
    for (long long i = 1; i <= devices; ++i) {
      const std::string sql = "INSERT OR IGNORE INTO device(id, name, location) VALUES(" +
                              std::to_string(i) + ", 'sensor-" + std::to_string(i) +
                              "', 'hall " + std::to_string((i - 1) / 5 + 1) + "')";
      if (auto e = exec(d, sql)) return e;
    }
    return {};
  });
  if (ec) return fail("devices", ec, m->last_error_message());

  long long first_id = 1;
  {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "SELECT coalesce(max(id), 0) + 1 FROM reading", -1, &st, nullptr);
    if (st != nullptr && sqlite3_step(st) == SQLITE_ROW) first_id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_stmt* ins = nullptr;
  if (sqlite3_prepare_v2(db,
                         "INSERT INTO reading(id, device_id, value, taken_ms) VALUES(?,?,?,?)",
                         -1, &ins, nullptr) != SQLITE_OK) {
    return fail("prepare", edgecqrs::errc::sqlite_error, sqlite3_errmsg(db));
  }
  for (long long done = 0; done < rows;) {
    const long long n = std::min(batch, rows - done);
    ec = m->transaction([&](sqlite3*) -> std::error_code {
      for (long long k = 0; k < n; ++k) {
        const long long id = first_id + done + k;
        sqlite3_reset(ins);
        sqlite3_bind_int64(ins, 1, id);
        sqlite3_bind_int64(ins, 2, id % devices + 1);
        sqlite3_bind_double(ins, 3, 20.0 + 5.0 * std::sin(static_cast<double>(id) / 50.0));
        sqlite3_bind_int64(ins, 4, example::wall_ms());
        if (sqlite3_step(ins) != SQLITE_DONE) return edgecqrs::errc::sqlite_error;
      }
      return {};
    });
    if (ec == edgecqrs::errc::outbox_full) {
      // Back-pressure: the broker is slower than we write; let the publisher drain.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (ec) return fail("insert", ec, m->last_error_message());
    done += n;
    written += n;
    if (pace_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(pace_ms));
  }
  sqlite3_finalize(ins);

  // Corrections and retractions: updates carry the previous value (tracked), deletes leave
  // tombstones on the replica.
  for (long long done = 0; done < updates;) {
    const long long n = std::min(batch, updates - done);
    ec = m->transaction([&](sqlite3* d) {
      return exec(d, "UPDATE reading SET value = value + 100, taken_ms = " +
                         std::to_string(example::wall_ms()) + " WHERE id >= " +
                         std::to_string(first_id + done) + " AND id < " +
                         std::to_string(first_id + done + n));
    });
    if (ec) return fail("update", ec, m->last_error_message());
    done += n;
  }
  if (deletes > 0) {
    ec = m->transaction([&](sqlite3* d) {
      return exec(d, "DELETE FROM reading WHERE id >= " +
                         std::to_string(first_id + rows - deletes) + " AND id < " +
                         std::to_string(first_id + rows));
    });
    if (ec) return fail("delete", ec, m->last_error_message());
  }
  if (f.has("sync-to")) {
    std::size_t synced = 0;
    ec = m->sync("readings", "", {}, f.get("sync-to"), &synced);
    if (ec) return fail("sync", ec, m->last_error_message());
  }
  const double write_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Done when the broker has acknowledged everything in the outbox.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(f.num("wait", 120));
  while (m->stats().records_pending != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto st = m->stats();
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (f.has("linger")) {
    std::printf("master: lingering\n");
    std::fflush(stdout);
    while (!stop_requested.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    st = m->stats();
  }
  m->stop();
  const bool drained = st.records_pending == 0;
  example::write_summary(
      f.get("summary"),
      {{"rows_written", std::to_string(written)},
       {"updates", std::to_string(updates)},
       {"deletes", std::to_string(deletes)},
       {"events", std::to_string(st.events)},
       {"transactions", std::to_string(st.transactions)},
       {"messages_published", std::to_string(st.messages_published)},
       {"publish_failures", std::to_string(st.publish_failures)},
       {"records_pending", std::to_string(st.records_pending)},
       {"control_handled", std::to_string(st.control_handled)},
       {"write_seconds", std::to_string(write_s)},
       {"total_seconds", std::to_string(total_s)},
       {"peak_rss_kib", std::to_string(example::peak_rss_kib())}});
  std::printf("master: %lld rows written, %llu events in %llu messages acknowledged, %.2f s, "
              "peak RSS %ld KiB%s\n",
              written, static_cast<unsigned long long>(st.events),
              static_cast<unsigned long long>(st.messages_published), total_s,
              example::peak_rss_kib(), drained ? "" : " (NOT DRAINED)");
  transport.stop();
  return drained ? 0 : 1;
}

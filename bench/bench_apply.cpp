// Replica apply rate into a file database (WAL, synchronous=NORMAL), in events per second.
// Messages are pre-encoded with the codec (the master's batching: many events per message) and
// delivered through the loopback transport when it is built, else straight to on_message.
// Usage: bench_apply [events] [events_per_message]
#include <sqlite3.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/replica.hpp"

#if __has_include("edgecqrs/ports/loopback.hpp")
#include "edgecqrs/ports/loopback.hpp"
#define BENCH_LOOPBACK 1
#endif

using namespace edgecqrs;

namespace {

std::vector<std::uint8_t> encode(const message& m) {
  std::size_t n = 0;
  encode_message(m, nullptr, 0, n);
  std::vector<std::uint8_t> b(n);
  if (encode_message(m, b.data(), b.size(), n)) {
    std::fprintf(stderr, "encode failed\n");
    std::exit(1);
  }
  b.resize(n);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200000;
  const std::size_t per_msg = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 512;
  char dir[] = "/tmp/edgecqrs-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  const std::string path = std::string(dir) + "/replica.db";

  {
    sqlite3* setup = nullptr;
    if (sqlite3_open(path.c_str(), &setup) != SQLITE_OK) return 1;
    sqlite3_exec(setup, "CREATE TABLE readings(id INTEGER PRIMARY KEY, sensor TEXT NOT NULL,"
                        " value REAL, ts INTEGER)", nullptr, nullptr, nullptr);
    sqlite3_close(setup);
  }
  replica_options ro;
  ro.name = "bench";
  std::unique_ptr<replica> r;
  if (replica::open(path, ro, r)) return 1;
  replica_table_options t;
  t.local_table = "readings";
  if (r->register_table("readings", t)) return 1;

  schema s;
  s.cqrs_id = "readings";
  s.columns = {{"id", "INTEGER"}, {"sensor", "TEXT"}, {"value", "REAL"}, {"ts", "INTEGER"}};
  s.pk = {0};
  s.incarnation.fill(7);
  s.schema_tag = compute_schema_tag(s);
  std::size_t n = 0;
  encode_schema(s, nullptr, 0, n);
  std::vector<std::uint8_t> sb(n);
  encode_schema(s, sb.data(), sb.size(), n);

  // Pass 1 inserts every row (version 1), pass 2 updates it (version 2).
  std::vector<std::vector<std::uint8_t>> msgs;
  std::uint64_t seq = 1;
  for (std::uint64_t version = 1; version <= 2; ++version) {
    for (std::size_t base = 0; base < total; base += per_msg) {
      message m;
      m.schema_tag = s.schema_tag;
      m.first_seq = seq;
      for (std::size_t i = base; i < total && i < base + per_msg; ++i) {
        event e;
        e.row_version = version;
        e.updated_ms = 1763800000000 + static_cast<std::int64_t>(i);
        e.values = {value::integer(static_cast<std::int64_t>(i)),
                    value::text("sensor-" + std::to_string(i % 1000)),
                    value::real(20.0 + static_cast<double>(i % 100) / 4),
                    value::integer(1763800000 + static_cast<std::int64_t>(i))};
        m.events.push_back(std::move(e));
      }
      seq += m.events.size();
      msgs.push_back(encode(m));
    }
  }
  const std::size_t half = msgs.size() / 2;

#ifdef BENCH_LOOPBACK
  loopback::broker broker;
  auto pub = broker.make_client("master", 1u << 20);
  auto sub = broker.make_client("replica");
  if (r->attach(*sub)) return 1;
  const char* how = "loopback transport";
  auto deliver = [&](const std::vector<std::uint8_t>& b, const std::string& topic) {
    pub->publish(topic, b.data(), b.size(), {}, nullptr);
    broker.pump_all();
  };
#else
  const char* how = "replica::on_message";
  auto deliver = [&](const std::vector<std::uint8_t>& b, const std::string& topic) {
    r->on_message(topic, b.data(), b.size());
  };
#endif
  deliver(sb, "edgecqrs/v1/s/readings");
  const std::string topic = "edgecqrs/v1/e/readings";
  // Wall-clock rate, and the rate per second of CPU time used (the honest figure on a shared
  // machine where other processes take the cores).
  double rate[2], cpu_rate[2];
  for (int pass = 0; pass < 2; ++pass) {
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
    for (std::size_t i = pass * half; i < (pass + 1) * half; ++i) deliver(msgs[i], topic);
    auto dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    rate[pass] = static_cast<double>(total) / dt;
    cpu_rate[pass] = cpu > 0 ? static_cast<double>(total) / cpu : 0;
  }
  auto st = r->stats();
  r.reset();
  sqlite3* db = nullptr;
  long long rows = -1;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK) {
    sqlite3_stmt* q = nullptr;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM readings", -1, &q, nullptr);
    if (sqlite3_step(q) == SQLITE_ROW) rows = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
  }
  sqlite3_close(db);
  std::printf("bench_apply: %zu events/pass, %zu events/message, file database, via %s\n", total,
              per_msg, how);
  std::printf("  insert pass: %.0f events/s (%.0f per CPU-second)\n", rate[0], cpu_rate[0]);
  std::printf("  update pass: %.0f events/s (%.0f per CPU-second)\n", rate[1], cpu_rate[1]);
  std::printf("  applied %llu, rows %lld, dead letters %llu (goal >= 150000 events/s)\n",
              static_cast<unsigned long long>(st.events_applied), rows,
              static_cast<unsigned long long>(st.dead_letters));
  std::remove(path.c_str());
  std::remove((path + "-wal").c_str());
  std::remove((path + "-shm").c_str());
  std::remove(dir);
  return st.events_applied == 2 * total && rows == static_cast<long long>(total) ? 0 : 1;
}

// P2 end-to-end throughput, P3 commit-to-visible latency and P6 peak RSS: a master process and a
// replica process (this program, started again with a role) through a real MQTT broker, plus the
// raw Paho QoS 1 message rate on the same broker (one message per event, same window).
//
// Usage: bench_e2e URI [events=100000] [txn_rows=100] [lat_events=200] [lat_rate=100]
//                      [paho_msgs=20000]
// Prints key=value lines (scripts/bench parses them). The broker must keep every QoS 1 message
// (max_queued_messages 0, max_inflight_messages 0: see /work/shared/reference/measurements.md).
// Roles (internal): bench_e2e --master URI DB PREFIX EVENTS TXN_ROWS RATE OUT
//                   bench_e2e --replica URI DB PREFIX EVENTS READY OUT
#include <cstdio>
#include <cstdlib>
#include <string>

#if __has_include("edgecqrs/ports/paho.hpp")
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/paho.hpp"
#include "edgecqrs/replica.hpp"

namespace {

using edgecqrs::ports::paho_config;
using edgecqrs::ports::paho_transport;

std::int64_t now_us() {  // shared clock of both processes
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

double cpu_s() {  // user + system CPU time of this process
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

long peak_rss_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

[[noreturn]] void die(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "bench_e2e: %s %s\n", what, detail.c_str());
  std::exit(2);
}

paho_config client_config(const std::string& uri, const std::string& id) {
  paho_config c;
  c.server_uri = uri;
  c.client_id = id;
  c.persistent_session = false;
  return c;
}

const char* const k_table =
    "CREATE TABLE IF NOT EXISTS reading(id INTEGER PRIMARY KEY, name TEXT, value REAL,"
    " updated INTEGER)";

// ---- master role: inserts `events` rows in transactions of txn_rows (rate > 0: one transaction
// every 1/rate s), stamps the time each COMMIT returned, waits for the outbox to drain.
int run_master(const std::string& uri, const std::string& path, const std::string& prefix,
               long events, long txn_rows, double rate, const std::string& out) {
  paho_transport tx(client_config(uri, prefix + "-master"));
  if (auto ec = tx.start()) die("master connect", ec.message());
  edgecqrs::master_config cfg;
  cfg.topic_prefix = prefix;
  // The device configuration of examples/device_master.cpp (docs/brokers.md "Memory"): the
  // in-flight payload, held twice by Paho until PUBACK, is bounded to 2 x 8 x 32 KiB.
  cfg.window = 8;
  cfg.max_message_bytes = 32 * 1024;
  std::unique_ptr<edgecqrs::master> m;
  if (auto ec = edgecqrs::master::open(path, cfg, &tx, m)) die("master open", ec.message());
  if (sqlite3_exec(m->db(), k_table, nullptr, nullptr, nullptr) != SQLITE_OK) die("create");
  // SQLite's page cache of the master connection, bounded like the example master's (256 KiB;
  // SQLite's default is 2000 KiB); EDGECQRS_BENCH_MASTER_CACHE_KIB overrides it.
  long cache_kib = 256;
  if (const char* kib = std::getenv("EDGECQRS_BENCH_MASTER_CACHE_KIB")) cache_kib = std::atol(kib);
  sqlite3_exec(m->db(), ("PRAGMA cache_size=-" + std::to_string(cache_kib)).c_str(), nullptr,
               nullptr, nullptr);
  edgecqrs::table_options o;
  o.table = "reading";
  o.cqrs_id = "reading";
  if (auto ec = m->register_table(o)) die("register", ec.message());
  if (auto ec = m->start(10)) die("start", ec.message());
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(m->db(), "INSERT INTO reading VALUES(?1, ?2, ?3, ?4)", -1, &s, nullptr);
  std::vector<std::int64_t> committed;
  committed.reserve(static_cast<std::size_t>(rate > 0 ? events : 0));
  char name[32];
  const std::int64_t t0 = now_us();
  long id = 0;
  for (long txn = 0; id < events; ++txn) {
    if (rate > 0) {
      const auto due = t0 + static_cast<std::int64_t>(static_cast<double>(txn) * 1e6 / rate);
      const auto wait = due - now_us();
      if (wait > 0) std::this_thread::sleep_for(std::chrono::microseconds(wait));
    }
    if (auto ec = m->begin()) die("begin", ec.message());
    for (long k = 0; k < txn_rows && id < events; ++k) {
      ++id;
      int len = std::snprintf(name, sizeof name, "sensor-%ld", id % 1000);
      sqlite3_bind_int64(s, 1, id);
      sqlite3_bind_text(s, 2, name, len, SQLITE_STATIC);
      sqlite3_bind_double(s, 3, 20.0 + static_cast<double>(id % 100) * 0.25);
      sqlite3_bind_int64(s, 4, 1763800000 + id);
      if (sqlite3_step(s) != SQLITE_DONE) die("insert", sqlite3_errmsg(m->db()));
      sqlite3_reset(s);
    }
    if (auto ec = m->commit()) die("commit", ec.message() + " " + m->last_error_message());
    if (rate > 0) committed.push_back(now_us());
  }
  const std::int64_t written = now_us();
  sqlite3_finalize(s);
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (m->stats().records_pending > 0 && std::chrono::steady_clock::now() < limit)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::int64_t drained = now_us();
  const auto st = m->stats();
  m->stop();
  std::ofstream f(out);
  f << "start_us=" << t0 << "\nwritten_us=" << written << "\ndrained_us=" << drained
    << "\nevents=" << st.events << "\npending=" << st.records_pending
    << "\nmessages=" << st.messages_published << "\nrss_kib=" << peak_rss_kib()
    << "\ncpu_us=" << static_cast<long long>(cpu_s() * 1e6) << "\n";
  for (std::size_t i = 0; i < committed.size(); ++i) f << "c " << (i + 1) << ' ' << committed[i] << "\n";
  m.reset();
  tx.stop();
  return st.records_pending == 0 ? 0 : 1;
}

// Wraps the Paho transport so that the time a message's rows became visible (the replica's
// COMMIT returned) is stamped right after replica::on_message returns.
class stamping_transport final : public edgecqrs::transport {
 public:
  stamping_transport(edgecqrs::transport& in, std::function<void()> after)
      : in_(in), after_(std::move(after)) {}
  std::error_code publish(std::string_view t, const std::uint8_t* d, std::size_t n,
                          const edgecqrs::publish_options& o, edgecqrs::publish_callback cb) override {
    return in_.publish(t, d, n, o, std::move(cb));
  }
  std::error_code subscribe(std::string_view f, edgecqrs::message_callback cb) override {
    return in_.subscribe(f, [this, cb](const edgecqrs::incoming_message& m) {
      cb(m);
      after_();
    });
  }
  std::error_code unsubscribe(std::string_view f) override { return in_.unsubscribe(f); }
  bool connected() const override { return in_.connected(); }
  std::size_t max_in_flight() const override { return in_.max_in_flight(); }

 private:
  edgecqrs::transport& in_;
  std::function<void()> after_;
};

// ---- replica role: applies until rows 1..events are visible; stamps when each id appeared.
int run_replica(const std::string& uri, const std::string& path, const std::string& prefix,
                long events, const std::string& ready, const std::string& out) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) die("replica db");
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", nullptr, nullptr, nullptr);
  if (sqlite3_exec(db, k_table, nullptr, nullptr, nullptr) != SQLITE_OK) die("create");
  edgecqrs::replica_options ro;
  ro.name = "bench";
  ro.topic_prefix = prefix;
  std::unique_ptr<edgecqrs::replica> r;
  if (auto ec = edgecqrs::replica::open(db, ro, r)) die("replica open", ec.message());
  edgecqrs::replica_table_options t;
  t.local_table = "reading";
  if (auto ec = r->register_table("reading", t)) die("replica register", ec.message());
  sqlite3_stmt* q = nullptr;
  sqlite3_prepare_v2(db, "SELECT max(id) FROM reading", -1, &q, nullptr);
  std::mutex mu;
  std::condition_variable cv;
  long seen = 0;
  std::int64_t first_us = 0, done_us = 0;
  std::vector<std::int64_t> visible(static_cast<std::size_t>(events) + 1, 0);
  paho_transport inner(client_config(uri, prefix + "-replica"));
  stamping_transport tx(inner, [&] {  // runs on the Paho callback thread, after the COMMIT
    const std::int64_t now = now_us();
    long top = 0;
    if (sqlite3_step(q) == SQLITE_ROW) top = static_cast<long>(sqlite3_column_int64(q, 0));
    sqlite3_reset(q);
    std::lock_guard<std::mutex> lk(mu);
    if (top > seen) {
      if (first_us == 0) first_us = now;
      for (long i = seen + 1; i <= top && i <= events; ++i) visible[static_cast<std::size_t>(i)] = now;
      seen = top;
      if (seen >= events) {
        done_us = now;
        cv.notify_all();
      }
    }
  });
  if (auto ec = inner.start()) die("replica connect", ec.message());
  if (auto ec = r->attach(tx)) die("replica attach", ec.message());
  std::ofstream(ready) << "ready\n";
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, std::chrono::seconds(180), [&] { return seen >= events; });
  }
  const auto st = r->stats();
  r->detach();
  inner.stop();
  std::ofstream f(out);
  std::lock_guard<std::mutex> lk(mu);
  f << "first_us=" << first_us << "\ndone_us=" << done_us << "\nseen=" << seen
    << "\napplied=" << st.events_applied << "\nmessages=" << st.messages
    << "\ndead_letters=" << st.dead_letters << "\nrss_kib=" << peak_rss_kib()
    << "\ncpu_us=" << static_cast<long long>(cpu_s() * 1e6) << "\n";
  for (long i = 1; i <= events; ++i) f << "v " << i << ' ' << visible[static_cast<std::size_t>(i)] << "\n";
  sqlite3_finalize(q);
  r.reset();
  sqlite3_close(db);
  return seen >= events ? 0 : 1;
}

// ---- driver
struct result {
  std::vector<std::pair<std::string, std::string>> kv;
  std::vector<std::int64_t> stamps;  // index = id
  std::string get(const std::string& k) const {
    for (auto& p : kv)
      if (p.first == k) return p.second;
    return "0";
  }
  std::int64_t num(const std::string& k) const { return std::strtoll(get(k).c_str(), nullptr, 10); }
};

result read_result(const std::string& path) {
  result r;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.size() > 2 && (line[0] == 'c' || line[0] == 'v') && line[1] == ' ') {
      long id = 0;
      long long us = 0;
      std::sscanf(line.c_str() + 2, "%ld %lld", &id, &us);
      if (r.stamps.size() <= static_cast<std::size_t>(id)) r.stamps.resize(static_cast<std::size_t>(id) + 1, 0);
      r.stamps[static_cast<std::size_t>(id)] = us;
    } else if (auto eq = line.find('='); eq != std::string::npos) {
      r.kv.emplace_back(line.substr(0, eq), line.substr(eq + 1));
    }
  }
  return r;
}

pid_t spawn(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One master -> broker -> replica run; returns {master, replica} results.
std::pair<result, result> pair_run(const std::string& self, const std::string& uri,
                                   const std::string& dir, const std::string& tag, long events,
                                   long txn_rows, double rate) {
  const std::string prefix = "bench" + std::to_string(getpid()) + tag;
  const std::string ready = dir + "/" + tag + ".ready", mo = dir + "/" + tag + ".master",
                    ro = dir + "/" + tag + ".replica";
  pid_t rp = spawn({self, "--replica", uri, dir + "/" + tag + "-replica.db", prefix,
                    std::to_string(events), ready, ro});
  for (int i = 0; i < 1000 && access(ready.c_str(), F_OK) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (access(ready.c_str(), F_OK) != 0) die("replica not ready");
  pid_t mp = spawn({self, "--master", uri, dir + "/" + tag + "-master.db", prefix,
                    std::to_string(events), std::to_string(txn_rows), std::to_string(rate), mo});
  const int ms = wait_child(mp), rs = wait_child(rp);
  if (ms != 0 || rs != 0) die("child failed", "master " + std::to_string(ms) + " replica " + std::to_string(rs));
  return {read_result(mo), read_result(ro)};
}

double raw_paho_rate(const std::string& uri, long msgs, std::size_t window) {
  const std::string tag = "bench" + std::to_string(getpid()) + "raw";
  paho_config pc = client_config(uri, tag + "-pub");
  pc.max_in_flight = window;
  paho_transport pub(pc), sub(client_config(uri, tag + "-sub"));
  if (pub.start() || sub.start()) die("raw paho connect");
  std::mutex mu;
  std::condition_variable cv;
  long received = 0;
  std::size_t in_flight = 0;
  if (sub.subscribe(tag + "/t", [&](const edgecqrs::incoming_message&) {
        std::lock_guard<std::mutex> lk(mu);
        if (++received >= msgs) cv.notify_all();
      }))
    die("raw paho subscribe");
  // A 49-byte payload: the size of one encoded 4-field event.
  std::vector<std::uint8_t> payload(49, 0xa5);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string topic = tag + "/t";
  for (long i = 0; i < msgs; ++i) {
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return in_flight < window; });
      ++in_flight;
    }
    auto ec = pub.publish(topic, payload.data(), payload.size(), {}, [&](std::error_code) {
      std::lock_guard<std::mutex> lk(mu);
      --in_flight;
      cv.notify_all();
    });
    if (ec) die("raw paho publish", ec.message());
  }
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, std::chrono::seconds(120), [&] { return received >= msgs && in_flight == 0; });
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const long got = received;
  pub.stop();
  sub.stop();
  if (got < msgs) die("raw paho lost messages", std::to_string(got));
  return static_cast<double>(msgs) / secs;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 9 && std::string(argv[1]) == "--master")
    return run_master(argv[2], argv[3], argv[4], std::atol(argv[5]), std::atol(argv[6]),
                      std::atof(argv[7]), argv[8]);
  if (argc >= 8 && std::string(argv[1]) == "--replica")
    return run_replica(argv[2], argv[3], argv[4], std::atol(argv[5]), argv[6], argv[7]);
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_e2e URI [events] [txn_rows] [lat_events] [lat_rate] [paho_msgs]\n");
    return 2;
  }
  const std::string uri = argv[1];
  const long events = argc > 2 ? std::atol(argv[2]) : 100000;
  const long txn_rows = argc > 3 ? std::atol(argv[3]) : 100;
  const long lat_events = argc > 4 ? std::atol(argv[4]) : 200;
  const double lat_rate = argc > 5 ? std::atof(argv[5]) : 100;
  const long paho_msgs = argc > 6 ? std::atol(argv[6]) : 20000;
  char dir[] = "/tmp/edgecqrs-bench-e2e-XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp");
  const std::string self = argv[0];

  // P2: throughput.
  auto [m, r] = pair_run(self, uri, dir, "tp", events, txn_rows, 0);
  const double e2e_secs = static_cast<double>(r.num("done_us") - m.num("start_us")) / 1e6;
  std::printf("e2e_events=%ld\ne2e_txn_rows=%ld\n", events, txn_rows);
  std::printf("e2e_events_per_s=%.0f\n", static_cast<double>(events) / e2e_secs);
  std::printf("e2e_master_write_s=%.3f\n", static_cast<double>(m.num("written_us") - m.num("start_us")) / 1e6);
  std::printf("e2e_messages=%lld\n", static_cast<long long>(m.num("messages")));
  std::printf("master_rss_kib=%lld\nreplica_rss_kib=%lld\n", static_cast<long long>(m.num("rss_kib")),
              static_cast<long long>(r.num("rss_kib")));
  // CPU seconds of each process for the whole run (connect, setup, write, drain): on a shared
  // machine the wall-clock rate above also counts time spent descheduled.
  std::printf("e2e_master_cpu_s=%.3f\ne2e_replica_cpu_s=%.3f\n",
              static_cast<double>(m.num("cpu_us")) / 1e6, static_cast<double>(r.num("cpu_us")) / 1e6);
  std::printf("replica_dead_letters=%lld\n", static_cast<long long>(r.num("dead_letters")));

  // P2 baseline: raw Paho QoS 1, one message per event, the master's default window.
  edgecqrs::master_config defaults;
  std::printf("paho_window=%zu\n", defaults.window);
  std::printf("paho_qos1_msgs_per_s=%.0f\n", raw_paho_rate(uri, paho_msgs, defaults.window));

  // P3: latency, one row per transaction at lat_rate per second.
  auto [lm, lr] = pair_run(self, uri, dir, "lat", lat_events, 1, lat_rate);
  std::vector<double> lat;
  for (long i = 1; i <= lat_events; ++i) {
    const auto id = static_cast<std::size_t>(i);
    if (id < lm.stamps.size() && id < lr.stamps.size() && lm.stamps[id] && lr.stamps[id])
      lat.push_back(static_cast<double>(lr.stamps[id] - lm.stamps[id]) / 1000.0);
  }
  std::printf("lat_events=%zu\nlat_p50_ms=%.3f\nlat_p90_ms=%.3f\nlat_p99_ms=%.3f\nlat_max_ms=%.3f\n",
              lat.size(), pct(lat, 50), pct(lat, 90), pct(lat, 99), pct(lat, 100));
  std::printf("lat_master_rss_kib=%lld\nlat_replica_rss_kib=%lld\n",
              static_cast<long long>(lm.num("rss_kib")), static_cast<long long>(lr.num("rss_kib")));
  std::string cmd = std::string("rm -rf '") + dir + "'";
  if (std::system(cmd.c_str()) != 0) return 1;
  return lat.size() == static_cast<std::size_t>(lat_events) ? 0 : 1;
}

#else
int main() {
  std::printf("bench_e2e: the Paho port is not built\n");
  return 0;
}
#endif

// edgecqrs_demo, the README's first command: starts a private mosquitto on a free 127.0.0.1
// port, runs the device master and the dashboard replica as two processes talking through it,
// and prints what happened. Exits 0 only when the replica agrees with the master.
//
// edgecqrs_demo [--rows 10000] [--batch 100] [--updates 500] [--deletes 200] [--keep DIR]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <sys/stat.h>

#include "example_common.hpp"
#include "host_support.hpp"
#include "mosquitto_fixture.hpp"

namespace {

std::string make_work_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/edgecqrs-demo-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return {};
  return tmpl;
}

void print_log(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f) != nullptr) std::fprintf(stderr, "  | %s", buf);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  const example::flags f(argc, argv);
  if (!f.bad().empty()) {
    std::fprintf(stderr, "usage: %s [--rows N] [--batch N] [--updates N] [--deletes N]\n",
                 argv[0]);
    return 2;
  }
  const std::string rows = std::to_string(f.num("rows", 10000));
  const std::string dir = f.has("keep") ? f.get("keep") : make_work_dir();
  if (f.has("keep")) ::mkdir(dir.c_str(), 0755);
  if (dir.empty()) {
    std::fprintf(stderr, "demo: cannot create a work directory\n");
    return 1;
  }
  const std::string bin = example::self_dir();
  const auto t0 = std::chrono::steady_clock::now();

  edgecqrs::test::mosquitto_broker broker;  // tuned settings, docs/brokers.md
  if (!broker.start()) {
    std::fprintf(stderr, "demo: mosquitto did not start: %s\n", broker.error().c_str());
    return 1;
  }
  std::printf("broker:   mosquitto pid %d on %s (max_queued_messages 0, max_inflight 0)\n",
              static_cast<int>(broker.pid()), broker.uri().c_str());

  example::child replica;
  if (!replica.spawn({bin + "/edgecqrs_example_replica", "--uri", broker.uri(), "--db",
                      dir + "/dashboard.db", "--name", "dashboard", "--summary",
                      dir + "/replica.summary"},
                     dir + "/replica.log")) {
    std::fprintf(stderr, "demo: cannot start the replica\n");
    return 1;
  }
  // The replica's first connect creates its persistent session; what the master publishes
  // before that would not be queued for it (gap repair would still fetch it, but slower).
  bool replica_up = false;
  for (int i = 0; i < 150 && !replica_up && replica.running(); ++i) {
    replica_up = example::wait_for_text(dir + "/replica.log", "connected",
                                        std::chrono::milliseconds(100));
  }
  if (!replica_up) {
    std::fprintf(stderr, "demo: the replica did not connect:\n");
    print_log(dir + "/replica.log");
    return 1;
  }

  example::child master;
  if (!master.spawn({bin + "/edgecqrs_example_master", "--uri", broker.uri(), "--db",
                     dir + "/device.db", "--rows", rows, "--batch",
                     std::to_string(f.num("batch", 100)), "--updates",
                     std::to_string(f.num("updates", 500)), "--deletes",
                     std::to_string(f.num("deletes", 200)), "--summary",
                     dir + "/master.summary"},
                    dir + "/master.log")) {
    std::fprintf(stderr, "demo: cannot start the master\n");
    return 1;
  }
  const int master_rc = master.wait(std::chrono::seconds(50));
  if (master_rc != 0) {
    std::fprintf(stderr, "demo: the master failed (status %d):\n", master_rc);
    print_log(dir + "/master.log");
    return 1;
  }

  // Wait for the replica to catch up with everything the broker acknowledged.
  std::string why;
  bool agree = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(agree = example::databases_agree(dir + "/device.db", dir + "/dashboard.db", &why)) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const auto caught_up = std::chrono::steady_clock::now();
  replica.terminate();
  broker.stop();

  const auto ms = example::read_summary(dir + "/master.summary");
  const auto rs = example::read_summary(dir + "/replica.summary");
  const auto lat = example::latencies_ms(dir + "/dashboard.db");
  const auto replica_rows = example::query_rows(dir + "/dashboard.db", "SELECT count(*) FROM reading");
  const auto dash = example::query_rows(
      dir + "/dashboard.db",
      "SELECT count(*), sum(readings), printf('%.2f', avg(mean_value)) FROM dashboard");
  auto get = [](const std::map<std::string, std::string>& m, const char* k) {
    auto it = m.find(k);
    return it == m.end() ? std::string("?") : it->second;
  };
  const double total_s = std::chrono::duration<double>(caught_up - t0).count();
  const double events = std::atof(get(ms, "events").c_str());
  const double pub_s = std::atof(get(ms, "total_seconds").c_str());
  std::printf("master:   %s readings + 20 devices written in %s transactions, %s updates, "
              "%s deletes\n",
              get(ms, "rows_written").c_str(), get(ms, "transactions").c_str(),
              get(ms, "updates").c_str(), get(ms, "deletes").c_str());
  std::printf("publish:  %s events in %s MQTT messages acknowledged (QoS 1) in %.2f s = "
              "%.0f events/s; master peak RSS %s KiB\n",
              get(ms, "events").c_str(), get(ms, "messages_published").c_str(), pub_s,
              pub_s > 0 ? events / pub_s : 0.0, get(ms, "peak_rss_kib").c_str());
  std::printf("replica:  %s readings on the dashboard (%s devices joined); %s events applied, "
              "%s duplicates, %s gaps repaired, %s dead letters\n",
              replica_rows.empty() ? "?" : replica_rows.front().c_str(),
              dash.empty() ? "?" : dash.front().substr(0, dash.front().find('|')).c_str(),
              get(rs, "events_applied").c_str(), get(rs, "duplicates").c_str(),
              get(rs, "gaps_repaired").c_str(), get(rs, "dead_letters").c_str());
  std::printf("latency:  write -> applied on the replica p50 %lld ms, p99 %lld ms (%zu rows)\n",
              static_cast<long long>(example::percentile(lat, 50)),
              static_cast<long long>(example::percentile(lat, 99)), lat.size());
  std::printf("result:   %s after %.1f s%s%s\n",
              agree ? "master and replica AGREE" : "master and replica DISAGREE", total_s,
              agree ? "" : ": ", agree ? "" : why.c_str());
  if (!f.has("keep")) {
    std::system(("rm -rf '" + dir + "'").c_str());
  } else {
    std::printf("files:    %s\n", dir.c_str());
  }
  return agree ? 0 : 1;
}

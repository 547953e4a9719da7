// Shared driver for the reliability scenarios: a private mosquitto, the example master and
// replica as real processes, seeded random instants, and the figures every scenario prints.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "host_support.hpp"
#include "mosquitto_fixture.hpp"
#include "test_support.hpp"

namespace rel {

// EDGECQRS_LONG=1 selects the long counts.
bool long_run();
// A scenario's fault count: `short_count` in the default suite, `long_count` (the issue's
// count) with EDGECQRS_LONG=1.
int fault_count(int short_count, int long_count);
// A fixed seed unless EDGECQRS_SEED is set (printed by every scenario so a failure replays).
std::uint64_t seed();

struct figures {
  long long committed = 0;   // rows in the master's registered tables after the run
  long long published = 0;   // messages acknowledged by the broker (graceful master runs)
  long long applied = 0;     // events applied by the replica (graceful replica runs)
  long long duplicates = 0;  // equal-version redeliveries skipped + stale skipped
  long long gaps_repaired = 0;
  long long lost = 0;        // master rows missing or different on the replica
  long long phantom = 0;     // replica rows the master does not have
  void print(const char* name) const;
};

class scenario {
 public:
  explicit scenario(edgecqrs::test::broker_options o = {});
  edgecqrs::test::mosquitto_broker& broker() { return broker_; }
  std::string path(const std::string& name) const { return dir_.file(name); }
  void set_uri(std::string u) { uri_ = std::move(u); }
  std::string uri() const { return uri_.empty() ? broker_.uri() : uri_; }

  // Starts the replica; waits until it logs one more "connected" line.
  std::unique_ptr<example::child> start_replica(const std::string& client_id, bool wait = true) {
    return start_replica_with(client_id, {}, wait);
  }
  std::unique_ptr<example::child> start_replica_with(const std::string& client_id,
                                                     const std::vector<std::string>& more,
                                                     bool wait = true);
  // `db`: the master's database file name in the scenario directory.
  std::unique_ptr<example::child> start_master(const std::vector<std::string>& more,
                                               const std::string& tag = "master",
                                               const std::string& db = "device.db");
  // SIGKILL by PID and reap.
  static void kill9(example::child& c);
  // Stops gracefully and adds the summary figures to f.
  void finish_replica(example::child& c, const std::string& client_id, figures& f);
  void add_master_summary(const std::string& tag, figures& f);

  bool converges(std::chrono::seconds limit, std::string* why);
  // committed, lost, phantom by comparing the two databases row by row.
  void compare(figures& f);

  // ---- the steps every crash/outage scenario shares ----
  // Starts the private mosquitto (REQUIREd).
  void start_broker();
  // The master writing `rows` rows in transactions of `batch` every `pace_ms`, then lingering
  // (still publishing and answering replays) until terminated. Tag "master".
  std::unique_ptr<example::child> start_writer(long long rows, int batch, int pace_ms);
  // Waits (up to `limit`) for replica == master; counts committed, lost and phantom rows
  // (CHECKs the agreement).
  void drain_and_check(figures& f, std::chrono::seconds limit = std::chrono::seconds(90));
  // After a writer from start_writer: waits until it wrote everything (it lingers, still
  // running), drains, stops it and the replica gracefully and adds their summaries to f.
  void finish_writer(example::child& writer, example::child& replica,
                     const std::string& replica_id, figures& f, std::chrono::seconds limit);
  // Prints the figures and checks the promises: lost == 0, phantom == 0, committed > 0.
  static void report(const figures& f, const char* name);
  std::string log(const std::string& tag) const;

  static bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit);

 private:
  edgecqrs::test::temp_dir dir_;
  edgecqrs::test::mosquitto_broker broker_;
  std::string uri_;
};

}  // namespace rel

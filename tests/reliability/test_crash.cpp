// Crash and outage scenarios (issue 7, item 1): real processes (the example master and replica),
// a real mosquitto, seeded random instants. Each prints committed, published, applied,
// duplicates skipped, gaps repaired, lost and phantom, and requires lost == 0, phantom == 0 and
// replica == master after draining. EDGECQRS_LONG=1: the counts (50 / 20 / 10 / 10).
// The shared steps (broker, writer, drain, figures, checks) are scenario helpers.
#include <doctest/doctest.h>

#include <random>
#include <thread>

#include "fault_proxy.hpp"
#include "scenario.hpp"

using namespace std::chrono_literals;
using rel::figures;
using rel::scenario;

namespace {

// Random fault instants: sleeps of a uniform number of milliseconds in [lo_ms, hi_ms], drawn
// from the run's seed (rel::seed() + seed_offset).
struct random_instants {
  std::mt19937_64 rng;
  std::uniform_int_distribution<int> ms;
  random_instants(std::uint64_t seed_offset, int lo_ms, int hi_ms)
      : rng(rel::seed() + seed_offset), ms(lo_ms, hi_ms) {}
  void sleep() { std::this_thread::sleep_for(std::chrono::milliseconds(ms(rng))); }
};

}  // namespace

TEST_CASE("a: master killed with SIGKILL at random instants during a write loop") {
  const int kills = rel::fault_count(10, 50);
  random_instants at(0, 150, 900);
  scenario s;
  s.start_broker();
  auto replica = s.start_replica("rep-a");
  figures f;
  for (int i = 0; i < kills; ++i) {
    // Effectively endless: 1 ms between transactions of 7 rows, killed long before the end.
    auto m = s.start_master({"--rows", "1000000", "--batch", "7", "--pace-ms", "1"}, "kill");
    at.sleep();
    REQUIRE_MESSAGE(m->running(), s.log("kill"));
    scenario::kill9(*m);
  }
  // A last graceful run writes a few more rows and waits for the broker to acknowledge all.
  auto m = s.start_master({"--rows", "100", "--batch", "10"}, "final");
  REQUIRE_MESSAGE(m->wait(120s) == 0, s.log("final"));
  s.add_master_summary("final", f);
  s.drain_and_check(f);
  s.finish_replica(*replica, "rep-a", f);
  std::printf("[reliability] master SIGKILL: %d kills\n", kills);
  scenario::report(f, "master SIGKILL");
}

TEST_CASE("b: replica killed with SIGKILL mid-batch and restarted") {
  const int kills = rel::fault_count(5, 20);
  random_instants at(1, 200, 800);
  scenario s;
  s.start_broker();
  auto replica = s.start_replica("rep-b");
  figures f;
  // Batches of 50 rows every 20 ms (about 6 s of writing): the replica is always in the middle of
  // one.
  auto m = s.start_writer(kills * 3000LL, 50, 20);
  for (int i = 0; i < kills; ++i) {
    at.sleep();
    scenario::kill9(*replica);
    replica = s.start_replica("rep-b");
  }
  s.finish_writer(*m, *replica, "rep-b", f, 120s);
  std::printf(
      "[reliability] replica SIGKILL: %d kills (applied/duplicates: last, graceful replica run)\n",
      kills);
  scenario::report(f, "replica SIGKILL");
}

namespace {

void broker_restarts(bool persistence) {
  const int restarts = rel::fault_count(3, 10);
  random_instants at(persistence ? 2 : 3, 300, 1200);
  edgecqrs::test::broker_options o;
  o.persistence = persistence;
  scenario s(o);
  s.start_broker();
  auto replica = s.start_replica("rep-c");
  figures f;
  auto m = s.start_writer(restarts * 1500LL, 10, 10);
  for (int i = 0; i < restarts; ++i) {
    at.sleep();
    s.broker().stop();
    at.sleep();
    REQUIRE_MESSAGE(s.broker().restart(persistence), s.broker().error());
  }
  s.finish_writer(*m, *replica, "rep-c", f, 180s);
  std::printf("[reliability] %d broker restarts\n", restarts);
  scenario::report(
      f, persistence ? "broker restart (persistence on)" : "broker restart (persistence off)");
}

}  // namespace

TEST_CASE("c1: broker stopped and restarted during a stream, persistence on") {
  broker_restarts(true);
}

TEST_CASE("c2: broker stopped and restarted during a stream, persistence off (gap repair)") {
  broker_restarts(false);
}

TEST_CASE("d: fault-injecting proxy stalls, cuts and half-closes connections") {
  const int rounds = rel::fault_count(2, 10);
  random_instants at(4, 300, 900);
  scenario s;
  s.start_broker();
  rel::fault_proxy proxy(s.broker().port());
  REQUIRE(proxy.start());
  s.set_uri(proxy.uri());
  auto replica = s.start_replica("rep-d");
  figures f;
  auto m = s.start_writer(rounds * 3000LL, 10, 5);
  for (int i = 0; i < rounds; ++i) {
    at.sleep();
    proxy.stall(true);  // a partition: sockets open, nothing moves
    at.sleep();
    proxy.stall(false);
    at.sleep();
    proxy.cut();  // RST both ways
    at.sleep();
    proxy.half_close();  // FIN towards both ends
    at.sleep();
    proxy.refuse(true);  // reconnects fail for a while
    at.sleep();
    proxy.refuse(false);
  }
  s.finish_writer(*m, *replica, "rep-d", f, 180s);
  std::printf("[reliability] fault proxy: %d rounds, %llu proxied connections\n", rounds,
              proxy.connections());
  scenario::report(f, "fault proxy");
}

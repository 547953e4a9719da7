// Security with mosquitto (issue 7, item 5): TLS + password file + ACLs generated at test time
// (the ACL text is the one docs/brokers.md recommends). The master publishes only to its own
// CQRS_ID topics; the replica only subscribes and publishes control requests; a client without
// credentials, with a wrong password or trusting the wrong CA is refused; an authenticated but
// unauthorised publisher cannot get an event into the replica database.
#include <doctest/doctest.h>

#include <thread>

#include "scenario.hpp"

using namespace std::chrono_literals;

namespace {

// The recommended ACL for one master ("device", streams devices + readings) and one replica
// ("dashboard"), plus an authenticated user with no grants ("intruder").
const char* const acl_text =
    "user device\n"
    "topic write edgecqrs/v1/e/devices\n"
    "topic write edgecqrs/v1/e/readings\n"
    "topic write edgecqrs/v1/d/+/devices\n"
    "topic write edgecqrs/v1/d/+/readings\n"
    "topic write edgecqrs/v1/s/devices\n"
    "topic write edgecqrs/v1/s/readings\n"
    "topic read edgecqrs/v1/c/devices\n"
    "topic read edgecqrs/v1/c/readings\n"
    "\n"
    "user dashboard\n"
    "topic read edgecqrs/v1/e/#\n"
    "topic read edgecqrs/v1/d/dashboard/#\n"
    "topic read edgecqrs/v1/s/#\n"
    "topic write edgecqrs/v1/c/#\n"
    "\n"
    "user intruder\n"
    "topic read edgecqrs/v1/c/#\n";

}  // namespace

TEST_CASE("TLS, passwords and ACLs: only the authorised master's events reach the replica") {
  edgecqrs::test::broker_options o;
  o.tls = true;
  o.users = {{"device", "d-secret"}, {"dashboard", "r-secret"}, {"intruder", "i-secret"}};
  o.acl = acl_text;
  rel::scenario s(o);
  REQUIRE_MESSAGE(s.broker().start(), s.broker().error());
  const std::string ca = s.broker().ca_file();

  auto replica = s.start_replica_with("dash-sec", {"--tls-ca", ca, "--user", "dashboard",
                                                   "--password", "r-secret"});
  // 1. An authenticated publisher without write grants: its events must not land.
  auto intruder = s.start_master({"--rows", "50", "--batch", "10", "--wait", "5", "--tls-ca", ca,
                                  "--user", "intruder", "--password", "i-secret"},
                                 "intruder", "intruder-db");
  intruder->wait(60s);
  std::this_thread::sleep_for(1s);
  const auto rows = example::query_rows(s.path("replica.db"), "SELECT count(*) FROM reading");
  std::printf("[security] unauthorised publisher: replica rows=%s; intruder log: %s\n",
              rows.empty() ? "?" : rows[0].c_str(), s.log("intruder").c_str());
  REQUIRE(rows.size() == 1);
  CHECK(rows[0] == "0");

  // 2. Wrong password, no credentials, wrong CA: refused.
  auto bad = s.start_master({"--rows", "1", "--tls-ca", ca, "--user", "device", "--password", "x"},
                            "badpw", "bad.db");
  CHECK(bad->wait(30s) == 1);
  auto anon = s.start_master({"--rows", "1", "--tls-ca", ca}, "anon", "anon.db");
  CHECK(anon->wait(30s) == 1);
  auto wrongca = s.start_master({"--rows", "1", "--tls-ca", s.broker().other_ca_file(), "--user",
                                 "device", "--password", "d-secret"},
                                "wrongca", "wrongca.db");
  CHECK(wrongca->wait(30s) == 1);
  std::printf("[security] refused: wrong password / no credentials / wrong CA: %s | %s | %s\n",
              s.log("badpw").c_str(), s.log("anon").c_str(), s.log("wrongca").c_str());

  // 3. The authorised master replicates.
  auto m = s.start_master({"--rows", "300", "--batch", "30", "--tls-ca", ca, "--user", "device",
                           "--password", "d-secret"});
  REQUIRE_MESSAGE(m->wait(120s) == 0, s.log("master"));
  std::string why;
  CHECK_MESSAGE(s.converges(60s, &why), why);
  rel::figures f;
  s.add_master_summary("master", f);
  s.compare(f);
  s.finish_replica(*replica, "dash-sec", f);
  f.print("security (TLS + passwords + ACLs)");
  CHECK(f.lost == 0);
  CHECK(f.phantom == 0);
}

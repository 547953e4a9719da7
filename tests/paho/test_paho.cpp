// paho_transport against a real, private mosquitto on 127.0.0.1 (label: integration).
#include <doctest/doctest.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>

#include <mqtt/async_client.h>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/ports/paho.hpp"
#include "mosquitto_fixture.hpp"
#include "paho_test_util.hpp"

using edgecqrs::errc;
using edgecqrs::ports::paho_transport;
using edgecqrs::test::client_config;
using edgecqrs::test::collector;
using edgecqrs::test::mosquitto_broker;
using edgecqrs::test::numbered;
using edgecqrs::test::publish_windowed;
using edgecqrs::test::wait_until;
using namespace std::chrono_literals;

namespace {

std::error_code publish_one(paho_transport& t, const std::string& topic, const std::string& p,
                            const edgecqrs::publish_options& opts = {}) {
  std::atomic<int> done{0};
  std::error_code result;
  auto ec = t.publish(topic, reinterpret_cast<const std::uint8_t*>(p.data()), p.size(), opts,
                      [&](std::error_code e) {
                        result = e;
                        done.store(1);
                      });
  if (ec) return ec;
  if (!wait_until([&] { return done.load() == 1; })) return errc::timeout;
  return result;
}

}  // namespace

TEST_CASE("publish is acknowledged after PUBACK and each callback runs once") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport pub(client_config(broker.uri(), "pub-ack"));
  REQUIRE(pub.start() == std::error_code());
  CHECK(pub.connected());
  CHECK(pub.max_in_flight() == 64);

  const auto r = publish_windowed(pub, "edgecqrs/v1/e/readings", numbered("m", 500));
  CHECK_FALSE(r.first_error);
  CHECK(r.acked == 500);
  CHECK(r.failed == 0);
  CHECK(pub.in_flight() == 0);
  CHECK(pub.stats().published == 500);
  CHECK(pub.stats().publish_failures == 0);
}

TEST_CASE("bad arguments are refused without a callback") {
  paho_transport t(client_config("tcp://127.0.0.1:1", "args"));
  const std::uint8_t b = 1;
  int calls = 0;
  auto cb = [&](std::error_code) { ++calls; };
  CHECK(t.publish("", &b, 1, {}, cb) == errc::invalid_argument);
  CHECK(t.publish("a/+/b", &b, 1, {}, cb) == errc::invalid_argument);
  CHECK(t.publish("a/b", nullptr, 1, {}, cb) == errc::invalid_argument);
  CHECK(t.subscribe("a/#/b", [](const edgecqrs::incoming_message&) {}) == errc::invalid_argument);
  CHECK(t.subscribe("$share/g", [](const edgecqrs::incoming_message&) {}) ==
        errc::invalid_argument);
  CHECK(t.subscribe("a/b", nullptr) == errc::invalid_argument);
  // An empty publish callback is allowed (fire and forget): here refused only for the connection.
  CHECK(t.publish("a/b", &b, 1, {}, nullptr) == errc::not_connected);
  CHECK(t.unsubscribe("never/subscribed") == errc::invalid_argument);
  CHECK(calls == 0);

  auto no_id = client_config("tcp://127.0.0.1:1", "");
  paho_transport t2(no_id);
  CHECK(t2.start() == errc::bad_config);
}

TEST_CASE("publish while disconnected is a clear error and never a silent drop") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport t(client_config(broker.uri(), "offline-pub"));
  const std::string p = "x";
  int calls = 0;
  auto cb = [&](std::error_code) { ++calls; };
  // Never started.
  CHECK(t.publish("a/b", reinterpret_cast<const std::uint8_t*>(p.data()), 1, {}, cb) ==
        errc::not_connected);
  REQUIRE(t.start() == std::error_code());
  CHECK(publish_one(t, "a/b", p) == std::error_code());
  // Broker gone.
  broker.stop();
  REQUIRE(wait_until([&] { return !t.connected(); }));
  CHECK(t.publish("a/b", reinterpret_cast<const std::uint8_t*>(p.data()), 1, {}, cb) ==
        errc::not_connected);
  CHECK(calls == 0);
  // Nothing listening at all.
  paho_transport nobody(client_config("tcp://127.0.0.1:" + std::to_string(broker.port()), "n"));
  CHECK(nobody.start() == errc::connect_failed);
  CHECK_FALSE(nobody.last_error_message().empty());
}

TEST_CASE("stop fails unacknowledged publishes exactly once") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport t(client_config(broker.uri(), "stop-pending"));
  REQUIRE(t.start() == std::error_code());
  // SIGSTOP keeps the TCP connection open but no PUBACK comes back.
  ::kill(broker.pid(), SIGSTOP);
  std::atomic<int> ok{0}, failed{0};
  const std::string p = "payload";
  for (int i = 0; i < 10; ++i) {
    REQUIRE(t.publish("a/b", reinterpret_cast<const std::uint8_t*>(p.data()), p.size(), {},
                      [&](std::error_code e) { ++(e ? failed : ok); }) == std::error_code());
  }
  CHECK(t.in_flight() == 10);
  t.stop();
  ::kill(broker.pid(), SIGCONT);
  CHECK(ok.load() + failed.load() == 10);
  CHECK(failed.load() == 10);
  CHECK(t.in_flight() == 0);
}

TEST_CASE("subscribe receives every message in publish order") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport sub(client_config(broker.uri(), "sub-order"));
  paho_transport pub(client_config(broker.uri(), "pub-order"));
  collector got;
  REQUIRE(sub.start() == std::error_code());
  REQUIRE(sub.subscribe("edgecqrs/v1/e/+", got.callback()) == std::error_code());
  REQUIRE(pub.start() == std::error_code());

  const auto payloads = numbered("ord", 2000);
  const auto r = publish_windowed(pub, "edgecqrs/v1/e/readings", payloads);
  REQUIRE(r.acked == payloads.size());
  REQUIRE(got.wait_for_count(payloads.size()));
  CHECK(got.payloads() == payloads);
  CHECK(got.topics().front() == "edgecqrs/v1/e/readings");
  CHECK(sub.stats().received == payloads.size());

  // After unsubscribe nothing more is delivered to the callback.
  REQUIRE(sub.unsubscribe("edgecqrs/v1/e/+") == std::error_code());
  REQUIRE(publish_one(pub, "edgecqrs/v1/e/readings", "late") == std::error_code());
  std::this_thread::sleep_for(200ms);
  CHECK(got.size() == payloads.size());
}

TEST_CASE("persistent session: messages published while the subscriber was away arrive") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  for (int version : {4, 5}) {
    CAPTURE(version);
    const std::string id = "sub-away-" + std::to_string(version);
    paho_transport pub(client_config(broker.uri(), "pub-away", version));
    REQUIRE(pub.start() == std::error_code());
    {
      paho_transport sub(client_config(broker.uri(), id, version));
      collector first;
      REQUIRE(sub.start() == std::error_code());
      REQUIRE(sub.subscribe("away/t", first.callback()) == std::error_code());
      sub.stop();
    }
    const auto payloads = numbered("away", 300);
    REQUIRE(publish_windowed(pub, "away/t", payloads).acked == payloads.size());
    paho_transport sub(client_config(broker.uri(), id, version));
    collector got;
    REQUIRE(sub.subscribe("away/t", got.callback()) == std::error_code());
    REQUIRE(sub.start() == std::error_code());
    REQUIRE(got.wait_for_count(payloads.size()));
    CHECK(got.payloads() == payloads);
  }
}

TEST_CASE("broker restart: clients reconnect with subscriptions restored and queued messages kept") {
  edgecqrs::test::broker_options o;
  o.persistence = true;
  mosquitto_broker broker(o);
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport sub(client_config(broker.uri(), "sub-restart"));
  paho_transport pub(client_config(broker.uri(), "pub-restart"));
  collector got;
  REQUIRE(sub.subscribe("restart/#", got.callback()) == std::error_code());
  REQUIRE(sub.start() == std::error_code());
  REQUIRE(pub.start() == std::error_code());

  REQUIRE(publish_windowed(pub, "restart/a", numbered("before", 100)).acked == 100);
  REQUIRE(got.wait_for_count(100));

  // Subscriber away, messages queued for its session, then the broker restarts with them.
  sub.stop();
  REQUIRE(publish_windowed(pub, "restart/a", numbered("queued", 100)).acked == 100);
  REQUIRE_MESSAGE(broker.restart(true), broker.error());
  REQUIRE(wait_until([&] { return pub.connected(); }, 15s));
  REQUIRE(sub.start() == std::error_code());
  REQUIRE(wait_until([&] { return got.unique_payloads().size() >= 200; }, 15s));

  // Broker restarted under connected clients: both reconnect by themselves and the
  // subscription (restored by the port) carries new messages.
  REQUIRE_MESSAGE(broker.restart(false), broker.error());
  REQUIRE(wait_until([&] { return pub.connected() && sub.connected(); }, 15s));
  REQUIRE(publish_windowed(pub, "restart/b", numbered("after", 100)).acked == 100);
  REQUIRE(wait_until([&] { return got.unique_payloads().size() >= 300; }, 15s));
  // At-least-once: a message whose PUBACK the restart swallowed comes again, flagged DUP.
  std::size_t unflagged = 0;
  const auto all = got.unique_payloads(&unflagged);
  CHECK(unflagged == 0);
  std::vector<std::string> expected = numbered("before", 100);
  for (auto& s : numbered("queued", 100)) expected.push_back(s);
  for (auto& s : numbered("after", 100)) expected.push_back(s);
  std::string got_text;
  for (auto& s : all) got_text += s + " ";
  CHECK_MESSAGE(all == expected, got_text);
  CHECK(sub.stats().connects >= 3);
  CHECK(pub.stats().connection_losses >= 2);
}

TEST_CASE("shared subscription splits one stream between two workers") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  for (int version : {4, 5}) {
    CAPTURE(version);
    const std::string v = std::to_string(version);
    paho_transport w1(client_config(broker.uri(), "worker1-" + v, version));
    paho_transport w2(client_config(broker.uri(), "worker2-" + v, version));
    paho_transport pub(client_config(broker.uri(), "pub-share-" + v, version));
    collector g1, g2;
    const std::string filter = "$share/dash" + v + "/edgecqrs/v1/e/readings";
    REQUIRE(w1.start() == std::error_code());
    REQUIRE(w2.start() == std::error_code());
    REQUIRE(w1.subscribe(filter, g1.callback()) == std::error_code());
    REQUIRE(w2.subscribe(filter, g2.callback()) == std::error_code());
    REQUIRE(pub.start() == std::error_code());
    const auto payloads = numbered("share", 400);
    REQUIRE(publish_windowed(pub, "edgecqrs/v1/e/readings", payloads).acked == payloads.size());
    REQUIRE(wait_until([&] { return g1.size() + g2.size() >= payloads.size(); }));
    std::this_thread::sleep_for(100ms);
    CHECK(g1.size() + g2.size() == payloads.size());
    CHECK(g1.size() > 0);
    CHECK(g2.size() > 0);
    std::set<std::string> all;
    for (auto& p : g1.payloads()) all.insert(p);
    for (auto& p : g2.payloads()) all.insert(p);
    CHECK(all.size() == payloads.size());
    w1.stop();
    w2.stop();
  }
}

TEST_CASE("MQTT 5: user properties and correlation data and message expiry") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());

  // A raw Paho subscriber sees the properties on the wire.
  mqtt::async_client raw(broker.uri(), "raw-v5", mqtt::create_options(MQTTVERSION_5));
  std::mutex m;
  std::vector<mqtt::const_message_ptr> raw_msgs;
  raw.set_message_callback([&](mqtt::const_message_ptr msg) {
    std::lock_guard<std::mutex> lock(m);
    raw_msgs.push_back(msg);
  });
  mqtt::connect_options copts;
  copts.set_mqtt_version(MQTTVERSION_5);
  raw.connect(copts)->wait();
  raw.subscribe("props/t", 1)->wait();

  paho_transport pub(client_config(broker.uri(), "pub-v5", 5));
  REQUIRE(pub.start() == std::error_code());
  edgecqrs::publish_options opts;
  opts.correlation_data = std::string("corr\0id", 7);
  opts.user_properties = {{"cqrs_id", "readings"}, {"fmt", "1"}};
  opts.expiry_interval_s = 60;
  REQUIRE(publish_one(pub, "props/t", "with-props", opts) == std::error_code());
  REQUIRE(wait_until([&] {
    std::lock_guard<std::mutex> lock(m);
    return !raw_msgs.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(m);
    const auto& props = raw_msgs.front()->get_properties();
    CHECK(mqtt::get<std::string>(props, mqtt::property::CORRELATION_DATA) ==
          std::string("corr\0id", 7));
    const auto up0 = mqtt::get<mqtt::string_pair>(props, mqtt::property::USER_PROPERTY, 0);
    const auto up1 = mqtt::get<mqtt::string_pair>(props, mqtt::property::USER_PROPERTY, 1);
    CHECK(std::get<0>(up0) == "cqrs_id");
    CHECK(std::get<1>(up0) == "readings");
    CHECK(std::get<0>(up1) == "fmt");
    CHECK(std::get<1>(up1) == "1");
    const auto expiry = mqtt::get<int32_t>(props, mqtt::property::MESSAGE_EXPIRY_INTERVAL);
    CHECK(expiry > 0);
    CHECK(expiry <= 60);
  }
  raw.disconnect()->wait();

  // Expiry: a queued message whose interval passes while the subscriber is away is dropped by
  // the broker; one without expiry is kept.
  {
    paho_transport sub(client_config(broker.uri(), "sub-expiry", 5));
    collector first;
    REQUIRE(sub.start() == std::error_code());
    REQUIRE(sub.subscribe("expiry/t", first.callback()) == std::error_code());
    sub.stop();
  }
  edgecqrs::publish_options short_lived;
  short_lived.expiry_interval_s = 1;
  REQUIRE(publish_one(pub, "expiry/t", "expires", short_lived) == std::error_code());
  REQUIRE(publish_one(pub, "expiry/t", "stays") == std::error_code());
  std::this_thread::sleep_for(2200ms);
  paho_transport sub(client_config(broker.uri(), "sub-expiry", 5));
  collector got;
  REQUIRE(sub.subscribe("expiry/t", got.callback()) == std::error_code());
  REQUIRE(sub.start() == std::error_code());
  REQUIRE(got.wait_for_count(1));
  std::this_thread::sleep_for(200ms);
  CHECK(got.payloads() == std::vector<std::string>{"stays"});
}

TEST_CASE("TLS: verified connection works and a wrong CA is refused") {
  edgecqrs::test::broker_options o;
  o.tls = true;
  mosquitto_broker broker(o);
  REQUIRE_MESSAGE(broker.start(), broker.error());

  auto good = client_config(broker.uri(), "tls-good");
  good.tls.ca_file = broker.ca_file();
  paho_transport t(good);
  REQUIRE_MESSAGE(t.start() == std::error_code(), t.last_error_message());
  collector got;
  REQUIRE(t.subscribe("tls/t", got.callback()) == std::error_code());
  REQUIRE(publish_one(t, "tls/t", "secret") == std::error_code());
  REQUIRE(got.wait_for_count(1));
  t.stop();

  auto bad_ca = good;
  bad_ca.client_id = "tls-bad-ca";
  bad_ca.tls.ca_file = broker.other_ca_file();
  paho_transport b(bad_ca);
  CHECK(b.start() == errc::tls_failed);

  // A plain TCP client cannot talk to the TLS listener.
  paho_transport plain(client_config("tcp://127.0.0.1:" + std::to_string(broker.port()), "p"));
  CHECK(plain.start() != std::error_code());
}

TEST_CASE("TLS: a certificate for another host name fails verification unless switched off") {
  edgecqrs::test::broker_options o;
  o.tls = true;
  o.server_cert_san = "DNS:not-this-host.example";
  mosquitto_broker broker(o);
  REQUIRE_MESSAGE(broker.start(), broker.error());
  auto c = client_config(broker.uri(), "tls-name");
  c.tls.ca_file = broker.ca_file();
  paho_transport strict(c);
  CHECK(strict.start() == errc::tls_failed);
  c.tls.verify_hostname = false;
  c.client_id = "tls-name-lax";
  paho_transport lax(c);
  CHECK_MESSAGE(lax.start() == std::error_code(), lax.last_error_message());
}

TEST_CASE("TLS with client certificate required") {
  edgecqrs::test::broker_options o;
  o.tls = true;
  o.require_client_cert = true;
  mosquitto_broker broker(o);
  REQUIRE_MESSAGE(broker.start(), broker.error());
  auto c = client_config(broker.uri(), "tls-cert");
  c.tls.ca_file = broker.ca_file();
  c.tls.cert_file = broker.client_cert_file();
  c.tls.key_file = broker.client_key_file();
  paho_transport t(c);
  REQUIRE_MESSAGE(t.start() == std::error_code(), t.last_error_message());
  REQUIRE(publish_one(t, "cert/t", "x") == std::error_code());

  auto no_cert = c;
  no_cert.client_id = "tls-no-cert";
  no_cert.tls.cert_file.clear();
  no_cert.tls.key_file.clear();
  paho_transport n(no_cert);
  CHECK(n.start() != std::error_code());
}

TEST_CASE("username/password: right credentials connect and wrong ones are refused and ACLs apply") {
  edgecqrs::test::broker_options o;
  o.users = {{"master1", "m-secret"}, {"replica1", "r-secret"}};
  o.acl =
      "user master1\n"
      "topic write edgecqrs/v1/e/readings\n"
      "topic read edgecqrs/v1/c/readings\n"
      "user replica1\n"
      "topic read edgecqrs/v1/e/#\n"
      "topic write edgecqrs/v1/c/#\n";
  mosquitto_broker broker(o);
  REQUIRE_MESSAGE(broker.start(), broker.error());

  for (int version : {4, 5}) {
    CAPTURE(version);
    const std::string v = std::to_string(version);
    auto mc = client_config(broker.uri(), "m-" + v, version);
    mc.username = "master1";
    mc.password = "m-secret";
    auto rc = client_config(broker.uri(), "r-" + v, version);
    rc.username = "replica1";
    rc.password = "r-secret";
    paho_transport master(mc), replica(rc);
    REQUIRE(master.start() == std::error_code());
    REQUIRE(replica.start() == std::error_code());
    collector got;
    REQUIRE(replica.subscribe("edgecqrs/v1/e/readings", got.callback()) == std::error_code());
    REQUIRE(publish_one(master, "edgecqrs/v1/e/readings", "ok") == std::error_code());
    REQUIRE(got.wait_for_count(1));
    // The replica's control request reaches the master.
    collector control;
    REQUIRE(master.subscribe("edgecqrs/v1/c/readings", control.callback()) == std::error_code());
    REQUIRE(publish_one(replica, "edgecqrs/v1/c/readings", "replay") == std::error_code());
    REQUIRE(control.wait_for_count(1));
    // A replica may not write the event stream: MQTT 5 reports the refusal in the PUBACK,
    // 3.1.1 has no way to say it (mosquitto acknowledges and drops), and nothing is delivered.
    const auto denied = publish_one(replica, "edgecqrs/v1/e/readings", "forged");
    if (version == 5) {
      CHECK(denied == errc::publish_failed);
    } else {
      CHECK(denied == std::error_code());
    }
    REQUIRE(publish_one(master, "edgecqrs/v1/e/readings", "ok2") == std::error_code());
    REQUIRE(got.wait_for_count(2));
    CHECK(got.payloads() == std::vector<std::string>{"ok", "ok2"});

    auto wrong = rc;
    wrong.client_id = "wrong-" + v;
    wrong.password = "nope";
    paho_transport w(wrong);
    CHECK_MESSAGE(w.start() == errc::auth_failed, w.last_error_message());
    auto anon = client_config(broker.uri(), "anon-" + v, version);
    paho_transport a(anon);
    CHECK(a.start() == errc::auth_failed);
  }
}

TEST_CASE("window: 10k QoS 1 messages without rc -12 or 1 s stalls") {
  mosquitto_broker broker;
  REQUIRE_MESSAGE(broker.start(), broker.error());
  paho_transport sub(client_config(broker.uri(), "sub-window"));
  paho_transport pub(client_config(broker.uri(), "pub-window"));
  collector got;
  REQUIRE(sub.start() == std::error_code());
  REQUIRE(sub.subscribe("window/t", got.callback()) == std::error_code());
  REQUIRE(pub.start() == std::error_code());
  const std::string body(60, 'x');
  std::vector<std::string> payloads;
  for (int i = 0; i < 10000; ++i) payloads.push_back(std::to_string(i) + body);
  const auto r = publish_windowed(pub, "window/t", payloads);
  CHECK_FALSE(r.first_error);
  CHECK(r.acked == payloads.size());
  CHECK(r.failed == 0);
  CHECK(r.max_seen_in_flight <= pub.max_in_flight());
  REQUIRE(got.wait_for_count(payloads.size()));
  const double rate = static_cast<double>(payloads.size()) / r.seconds;
  std::printf("paho window: 10000 QoS 1 messages (60 B) in %.2f s = %.0f msg/s, window %zu, "
              "window-full waits %zu\n",
              r.seconds, rate, pub.max_in_flight(), r.window_full);
  // Paho's 1 s stall at its in-flight limit would cap this at a few hundred msg/s.
  CHECK(rate > 1000.0);
  CHECK(got.payloads() == payloads);
}

// Loopback broker: routing, retained messages, shared subscriptions, faults, determinism.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "test_support.hpp"

using namespace edgecqrs;

namespace {

std::error_code pub(transport& t, const std::string& topic, const std::string& body,
                    std::vector<std::error_code>* acks = nullptr, bool retain = false) {
  publish_options o;
  o.retain = retain;
  return t.publish(topic, reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), o,
                   [acks](std::error_code ec) {
                     if (acks) acks->push_back(ec);
                   });
}

struct inbox {
  std::vector<std::string> got;
  std::vector<bool> dup;
  message_callback cb() {
    return [this](const incoming_message& m) {
      got.emplace_back(reinterpret_cast<const char*>(m.data), m.size);
      dup.push_back(m.duplicate);
    };
  }
};

// A publisher "p" and a subscriber "s" on one broker, "s" subscribed to `filter` into `in`.
struct pub_sub {
  pub_sub(loopback::broker& b, const std::string& filter, std::size_t p_window = 32)
      : p(b.make_client("p", p_window)), s(b.make_client("s")) {
    REQUIRE_FALSE(s->subscribe(filter, in.cb()));
  }
  std::unique_ptr<loopback::client> p;
  std::unique_ptr<loopback::client> s;
  inbox in;
};

}  // namespace

TEST_CASE("topic filters match like MQTT") {
  const test::topic_case rows[] = {
      {"a/b", "a/b", true},        {"a/b", "a/c", false},  {"a/+/c", "a/x/c", true},
      {"a/+/c", "a/x/y/c", false}, {"a/#", "a/x/y", true}, {"a/#", "a", true},
      {"#", "a/b", true},          {"#", "$SYS/x", false}, {"a/b", "a/b/c", false},
      {"a/b/c", "a/b", false},     {"+", "a", true},       {"+", "a/b", false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.filter);
    CAPTURE(r.topic);
    CHECK(loopback::topic_matches(r.filter, r.topic) == r.match);
  }
}

TEST_CASE("nothing moves until pump, acks after delivery") {
  loopback::broker b;
  pub_sub ps(b, "t/#");
  auto& [p, s, in] = ps;
  std::vector<std::error_code> acks;
  REQUIRE_FALSE(pub(*p, "t/1", "one", &acks));
  REQUIRE_FALSE(pub(*p, "u/1", "other", &acks));
  CHECK(in.got.empty());
  CHECK(acks.empty());
  CHECK(p->in_flight() == 2);
  CHECK(b.pump_all() == 2);
  CHECK(in.got == std::vector<std::string>{"one"});
  REQUIRE(acks.size() == 2);
  CHECK_FALSE(acks[0]);
  CHECK_FALSE(acks[1]);
  CHECK(p->in_flight() == 0);
}

TEST_CASE("window and queue bounds refuse publishes") {
  loopback::broker b(1, nullptr, 3);
  auto p = b.make_client("p", 2);
  CHECK_FALSE(pub(*p, "t", "a"));
  CHECK_FALSE(pub(*p, "t", "b"));
  CHECK(pub(*p, "t", "c") == errc::window_full);
  auto q = b.make_client("q", 10);
  CHECK_FALSE(pub(*q, "t", "c"));
  CHECK(pub(*q, "t", "d") == errc::window_full);  // broker queue of 3 is full
  CHECK(pub(*q, "t/+", "x") == errc::publish_failed);
}

TEST_CASE("retained messages reach later subscribers, empty payload clears") {
  loopback::broker b;
  auto p = b.make_client("p");
  REQUIRE_FALSE(pub(*p, "s/a", "schema-a", nullptr, true));
  REQUIRE_FALSE(pub(*p, "s/b", "schema-b", nullptr, true));
  b.pump_all();
  std::string r;
  CHECK(b.retained("s/a", r));
  CHECK(r == "schema-a");
  auto s = b.make_client("s");
  inbox in;
  REQUIRE_FALSE(s->subscribe("s/+", in.cb()));
  b.pump_all();
  CHECK(in.got == std::vector<std::string>{"schema-a", "schema-b"});
  REQUIRE_FALSE(pub(*p, "s/a", "", nullptr, true));
  b.pump_all();
  CHECK_FALSE(b.retained("s/a", r));
}

TEST_CASE("shared subscriptions deliver each message to one member, round robin") {
  loopback::broker b;
  auto p = b.make_client("p");
  auto w1 = b.make_client("w1");
  auto w2 = b.make_client("w2");
  inbox i1, i2;
  REQUIRE_FALSE(w1->subscribe("$share/g/e/+", i1.cb()));
  REQUIRE_FALSE(w2->subscribe("$share/g/e/+", i2.cb()));
  for (int i = 0; i < 6; ++i) REQUIRE_FALSE(pub(*p, "e/x", std::to_string(i)));
  b.pump_all();
  CHECK(i1.got.size() == 3);
  CHECK(i2.got.size() == 3);
  CHECK(i1.got[0] != i2.got[0]);
  CHECK(w1->subscribe("$share//e", i1.cb()) == errc::subscribe_failed);
}

TEST_CASE("commanded faults: drop, duplicate, failed ack") {
  loopback::broker b;
  pub_sub ps(b, "t");
  auto& [p, s, in] = ps;
  std::vector<std::error_code> acks;
  b.drop_next(1);
  REQUIRE_FALSE(pub(*p, "t", "lost", &acks));
  b.pump_all();
  CHECK(in.got.empty());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0] == errc::timeout);
  b.duplicate_next(1);
  REQUIRE_FALSE(pub(*p, "t", "twice", &acks));
  b.pump_all();
  CHECK(in.got == std::vector<std::string>{"twice", "twice"});
  CHECK(in.dup == std::vector<bool>{false, true});
  b.fail_ack_next(1);
  REQUIRE_FALSE(pub(*p, "t", "unacked", &acks));
  b.pump_all();
  CHECK(in.got.back() == "unacked");
  CHECK(acks.back() == errc::timeout);
  auto st = b.stats();
  CHECK(st.dropped == 1);
  CHECK(st.duplicated == 1);
  CHECK(st.failed_acks == 1);
}

TEST_CASE("disconnect fails queued publishes and refuses new ones until reconnect") {
  loopback::broker b;
  pub_sub ps(b, "t");
  auto& [p, s, in] = ps;
  std::vector<std::error_code> acks;
  REQUIRE_FALSE(pub(*p, "t", "a", &acks));
  b.disconnect(*p);
  REQUIRE(acks.size() == 1);
  CHECK(acks[0] == errc::not_connected);
  CHECK_FALSE(p->connected());
  CHECK(pub(*p, "t", "b") == errc::not_connected);
  b.reconnect(*p);
  CHECK(p->connected());
  REQUIRE_FALSE(pub(*p, "t", "c", &acks));
  b.disconnect(*s);  // an offline subscriber misses it
  b.pump_all();
  CHECK(in.got.empty());
  CHECK_FALSE(acks.back());
}

TEST_CASE("delay holds messages until the clock passes") {
  fake_clock clk;
  loopback::broker b(1, &clk);
  loopback::faults f;
  f.delay_ms = 100;
  b.set_faults(f);
  pub_sub ps(b, "t");
  auto& [p, s, in] = ps;
  REQUIRE_FALSE(pub(*p, "t", "late"));
  CHECK(b.pump_all() == 0);
  clk.advance(99);
  CHECK(b.pump_all() == 0);
  clk.advance(1);
  CHECK(b.pump_all() == 1);
  CHECK(in.got.size() == 1);
}

TEST_CASE("random faults are deterministic for a seed and reorder happens") {
  auto run = [](std::uint64_t seed) {
    loopback::broker b(seed);
    loopback::faults f;
    f.drop = 0.1;
    f.duplicate = 0.1;
    f.reorder = 0.3;
    b.set_faults(f);
    pub_sub ps(b, "t", 1000);
    auto& [p, s, in] = ps;
    for (int i = 0; i < 200; ++i) REQUIRE_FALSE(pub(*p, "t", std::to_string(i)));
    b.pump_all();
    return in.got;
  };
  auto a = run(42), b2 = run(42), c = run(43);
  CHECK(a == b2);
  CHECK(a != c);
  bool reordered = false;
  for (std::size_t i = 1; i < a.size(); ++i)
    if (std::stoi(a[i]) < std::stoi(a[i - 1])) reordered = true;
  CHECK(reordered);
  CHECK(a.size() > 150);
  CHECK(a.size() < 250);
}

TEST_CASE("a callback may publish during pump (no deadlock)") {
  loopback::broker b;
  pub_sub ps(b, "reply");
  auto& [p, s, in] = ps;
  REQUIRE_FALSE(p->subscribe("ask", [&](const incoming_message&) { pub(*p, "reply", "pong"); }));
  REQUIRE_FALSE(pub(*s, "ask", "ping"));
  b.pump_all();
  CHECK(in.got == std::vector<std::string>{"pong"});
}

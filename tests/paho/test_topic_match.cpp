// MQTT topic filter matching used to route arrivals to subscription callbacks (label: unit).
#include <doctest/doctest.h>

#include "edgecqrs/ports/paho.hpp"
#include "test_support.hpp"

using edgecqrs::ports::paho_transport;

TEST_CASE("topic filters match by MQTT rules") {
  const edgecqrs::test::topic_case rows[] = {
      {"a/b", "a/b", true},
      {"a/b", "a/c", false},
      {"a/b", "a/b/c", false},
      {"a/b/c", "a/b", false},
      {"a/+", "a/b", true},
      {"a/+", "a/b/c", false},
      {"a/+/c", "a/b/c", true},
      {"+/+", "a/b", true},
      {"+", "a", true},
      {"+", "a/b", false},
      {"a/#", "a", true},
      {"a/#", "a/b/c", true},
      {"#", "a/b", true},
      {"a/+", "a/", true},
      {"#", "$SYS/broker", false},
      {"+/broker", "$SYS/broker", false},
      {"$SYS/#", "$SYS/broker", true},
      {"$share/g/edgecqrs/v1/e/+", "edgecqrs/v1/e/readings", true},
      {"$share/g/edgecqrs/v1/e/+", "edgecqrs/v1/d/r/readings", false},
      {"$share/g/#", "x/y", true},
      {"edgecqrs/v1/d/r1/#", "edgecqrs/v1/d/r1/readings", true},
      {"edgecqrs/v1/d/r1/#", "edgecqrs/v1/d/r2/readings", false},
      {"", "a", false},
      {"a", "", false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.filter);
    CAPTURE(r.topic);
    CHECK(paho_transport::topic_matches(r.filter, r.topic) == r.match);
  }
}

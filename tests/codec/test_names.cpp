// CQRS_ID / replica name / prefix validation and the topic map (docs/topics.md).
#include <doctest/doctest.h>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/version.hpp"

using namespace edgecqrs;

TEST_CASE("valid CQRS_IDs are accepted") {
  for (const char* id : {"reading", "device_registry", "a", "sensor.v2", "zähler", "x-y:z"})
    CHECK_MESSAGE(!validate_cqrs_id(id), id);
  CHECK(!validate_cqrs_id(std::string(128, 'a')));
}

TEST_CASE("invalid CQRS_IDs are refused with invalid_cqrs_id") {
  using namespace std::string_literals;
  for (const std::string& id : {""s, "a/b"s, "a+"s, "#"s, "$SYS"s, "nul\0x"s, std::string(129, 'a'),
                                "\xff\xfe"s, "\xc0\xaf"s /* overlong */, "\xed\xa0\x80"s /* surrogate */}) {
    auto ec = validate_cqrs_id(id);
    CHECK(ec == errc::invalid_cqrs_id);
  }
  CHECK(validate_replica_name("dash/1") == errc::invalid_replica_name);
}

TEST_CASE("topic prefixes are validated per level") {
  CHECK(!validate_topic_prefix("edgecqrs"));
  CHECK(!validate_topic_prefix("site-7/edgecqrs"));
  CHECK(validate_topic_prefix("") == errc::invalid_topic_prefix);
  CHECK(validate_topic_prefix("a//b") == errc::invalid_topic_prefix);
  CHECK(validate_topic_prefix("a/+/b") == errc::invalid_topic_prefix);
  CHECK(validate_topic_prefix("a/") == errc::invalid_topic_prefix);
}

TEST_CASE("topic map matches docs/topics.md") {
  CHECK(event_topic("edgecqrs", "reading") == "edgecqrs/v1/e/reading");
  CHECK(direct_topic("edgecqrs", "dash", "reading") == "edgecqrs/v1/d/dash/reading");
  CHECK(schema_topic("p/q", "reading") == "p/q/v1/s/reading");
  CHECK(control_topic("edgecqrs", "reading") == "edgecqrs/v1/c/reading");
}

TEST_CASE("error codes have readable messages in the edgecqrs category") {
  std::error_code ec = errc::invalid_utf8;
  CHECK(std::string(ec.category().name()) == "edgecqrs");
  CHECK(ec.message() == "text is not valid UTF-8");
  CHECK(std::string(version()) == "0.1.0");
}

// to_json: the readable one-line form used by the demo and the CLI `decode` command.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "edgecqrs/codec.hpp"
#include "golden_cases.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

schema reading_schema(std::uint32_t tag) {
  schema s;
  s.cqrs_id = "reading";
  s.schema_tag = tag;
  s.columns = {{"id", "INTEGER"}, {"name", "TEXT"}, {"temp", "REAL"}, {"ts", "INTEGER"}};
  s.pk = {0};
  return s;
}

}  // namespace

TEST_CASE("to_json names columns from the schema, positions without it") {
  const message m = save_reading_message();
  CHECK(to_json(m) ==
        "{\"schema_tag\":2654435769,\"seq\":100000,\"events\":[{\"kind\":\"save\",\"seq\":100000,"
        "\"version\":1,\"updated_ms\":1763800000000,"
        "\"values\":[123456,\"sensor-42\",21.5,1763800000]}]}");
  const schema s = reading_schema(m.schema_tag);
  CHECK(to_json(m, &s) ==
        "{\"schema_tag\":2654435769,\"cqrs_id\":\"reading\",\"seq\":100000,\"events\":[{\"kind\":"
        "\"save\",\"seq\":100000,\"version\":1,\"updated_ms\":1763800000000,\"values\":{\"id\":"
        "123456,\"name\":\"sensor-42\",\"temp\":21.5,\"ts\":1763800000}}]}");
  // A schema of another stream is not used.
  const schema other = reading_schema(m.schema_tag + 1);
  CHECK(to_json(m, &other) == to_json(m));
}

TEST_CASE("to_json: deletes use pk names, extras and ext are shown") {
  message m;
  m.schema_tag = 9;
  m.first_seq = 0;
  m.target = "gw-1";
  m.expires_ms = 5;
  m.has_resync = true;
  m.resync = {1, 2, 3, false};
  m.reply_to = "gw-2";
  event d;
  d.kind = event_kind::remove;
  d.row_version = 4;
  d.updated_ms = 10;
  d.values = {value::integer(-7)};
  d.previous = {{2, value::real(1.0)}, {9, value::null()}};
  d.correlation_id = "c\"1";
  d.meta = {{"who", value::text("a\nb")}};
  m.events.push_back(d);
  const schema s = reading_schema(9);
  CHECK(to_json(m, &s) ==
        "{\"schema_tag\":9,\"cqrs_id\":\"reading\",\"seq\":0,\"target\":\"gw-1\","
        "\"expires_ms\":5,\"resync\":{\"session\":1,\"upto_seq\":2,\"part\":3,\"last\":false},"
        "\"reply_to\":\"gw-2\",\"events\":[{\"kind\":\"delete\",\"version\":4,\"updated_ms\":10,"
        "\"values\":{\"id\":-7},\"previous\":{\"temp\":1.0,\"#9\":null},"
        "\"correlation_id\":\"c\\\"1\",\"meta\":{\"who\":\"a\\nb\"}}]}");
}

TEST_CASE("to_json: reals, text with NUL, blobs as base64") {
  message m;
  m.schema_tag = 1;
  m.first_seq = 1;
  event e;
  e.updated_ms = 0;
  e.values = {value::real(std::numeric_limits<double>::quiet_NaN()),
              value::real(std::numeric_limits<double>::infinity()),
              value::real(-std::numeric_limits<double>::infinity()),
              value::real(-0.0),
              value::real(0.1),
              value::real(1e300),
              value::real(20.0),
              value::text(std::string("a\0b", 3)),
              value::blob(""),
              value::blob("f"),
              value::blob("fo"),
              value::blob("foo"),
              value::blob(std::string("\xff\xfe\x00", 3)),
              value::integer(std::numeric_limits<std::int64_t>::min())};
  m.events.push_back(e);
  CHECK(to_json(m) ==
        "{\"schema_tag\":1,\"seq\":1,\"events\":[{\"kind\":\"save\",\"seq\":1,\"version\":0,"
        "\"updated_ms\":0,\"values\":[\"NaN\",\"Infinity\",\"-Infinity\",-0.0,0.1,1e+300,20.0,"
        "\"a\\u0000b\",{\"b64\":\"\"},{\"b64\":\"Zg==\"},{\"b64\":\"Zm8=\"},{\"b64\":\"Zm9v\"},"
        "{\"b64\":\"//4A\"},-9223372036854775808]}]}");
}

TEST_CASE("to_json: a schema with a pk index past its columns leaves deletes positional") {
  message m;
  m.schema_tag = 3;
  event d;
  d.kind = event_kind::remove;
  d.values = {value::integer(1)};
  m.events.push_back(d);
  schema s = reading_schema(3);
  s.pk = {7};
  CHECK(to_json(m, &s).find("\"values\":[1]") != std::string::npos);
  s.pk = {1};
  CHECK(to_json(m, &s).find("\"values\":{\"name\":1}") != std::string::npos);
}

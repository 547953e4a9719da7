// `edgecqrs consume` configuration: valid files parse; every bad key or value is named.
#include <doctest/doctest.h>

#include <string>

#include "config.hpp"

using edgecqrs::cli::consume_config;
using edgecqrs::cli::parse_consume_config;

namespace {
const char* good = R"(
[replica]
name = "dashboard"
database = "/tmp/replica.db"
workers = 2

[broker]
url = "mqtts://127.0.0.1:8883"
username = "dash"
password = "secret"
[broker.tls]
ca_file = "ca.pem"

[retry]
max_retries = 5
base_delay_ms = 100
max_delay_ms = 1000

[[table]]
cqrs_id = "reading"
table = "readings"
unknown_columns = "reject"
[table.mapping]
value = "reading_value"

[[table]]
cqrs_id = "device"
only_direct_syncs = true
)";

std::string error_of(const std::string& text) {
  consume_config c;
  std::string err;
  CHECK_FALSE(parse_consume_config(text, "replica.toml", c, err));
  CHECK(c.tables.empty());  // nothing half-filled
  return err;
}
}  // namespace

TEST_CASE("a complete config parses") {
  consume_config c;
  std::string err;
  REQUIRE_MESSAGE(parse_consume_config(good, "replica.toml", c, err), err);
  CHECK(c.name == "dashboard");
  CHECK(c.workers == 2);
  CHECK(c.broker.url == "mqtts://127.0.0.1:8883");
  CHECK(c.broker.client_id == "dashboard");
  CHECK(c.broker.tls.enabled);
  CHECK(c.broker.tls.verify_hostname);
  CHECK(c.max_retries == 5);
  REQUIRE(c.tables.size() == 2);
  CHECK(c.tables[0].table == "readings");
  CHECK(c.tables[0].reject_unknown_columns);
  REQUIRE(c.tables[0].mapping.size() == 1);
  CHECK(c.tables[0].mapping[0].first == "value");
  CHECK(c.tables[0].mapping[0].second == "reading_value");
  CHECK(c.tables[1].table == "device");
  CHECK(c.tables[1].only_direct_syncs);
}

TEST_CASE("bad configs are refused with the key, the place and the problem") {
  const std::string base = "[replica]\nname = \"r\"\ndatabase = \"x.db\"\n";
  const std::string table = "[[table]]\ncqrs_id = \"reading\"\n";
  struct row { std::string text; const char* expect; };
  for (const row& r : {
           row{"", "replica: missing"},
           row{"[replica\n", "syntax"},
           row{base, "table: missing"},
           row{"[replica]\ndatabase = \"x\"\n" + table, "replica.name: missing"},
           row{"[replica]\nname = \"a/b\"\ndatabase = \"x\"\n" + table, "replica.name: 'a/b': invalid replica name"},
           row{base + "colour = 1\n" + table, "replica.colour: unknown key"},
           row{base + "workers = 0\n" + table, "replica.workers: out of range"},
           row{base + "workers = \"two\"\n" + table, "replica.workers: must be an integer"},
           row{base + "workers = 3\n[broker]\nmqtt_version = 3\n" + table, "replica.workers: more than one worker"},
           row{base + "[broker]\nurl = \"http://x\"\n" + table, "broker.url: 'http://x': must start with"},
           row{base + "[broker]\nmqtt_version = 4\n" + table, "broker.mqtt_version: must be 3"},
           row{base + "[broker]\npassword = \"a\"\npassword_file = \"b\"\n" + table, "broker.password_file: give either"},
           row{base + "[broker.tls]\ncert_file = \"c.pem\"\n" + table, "broker.tls: cert_file and key_file go together"},
           row{base + "[retry]\nbase_delay_ms = 10\nmax_delay_ms = 5\n" + table, "retry.max_delay_ms: must be >="},
           row{base + "[[table]]\ncqrs_id = \"a+b\"\n", "table[0].cqrs_id: 'a+b': invalid CQRS_ID"},
           row{base + "[[table]]\ntable = \"t\"\n", "table[0].cqrs_id: missing"},
           row{base + table + table, "table[1].cqrs_id: 'reading' appears twice"},
           row{base + table + "unknown_columns = \"drop\"\n", "table[0].unknown_columns: 'drop': must be"},
           row{base + table + "[table.mapping]\nx = 3\n", "table[0].mapping.x: must be a string"},
           row{base + "table = 3\n", "replica.table: unknown key"},
           row{"[replica]\nname = \"r\"\ndatabase = \"x.db\"\n[foo]\n" + table, "foo: unknown key"},
       }) {
    std::string err = error_of(r.text);
    CHECK_MESSAGE(err.find(r.expect) != std::string::npos, "got: " << err << " | expected: " << r.expect);
    CHECK_MESSAGE(err.rfind("replica.toml:", 0) == 0, err);
  }
}

#include "master_fixture.hpp"

#include <doctest/doctest.h>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"

namespace edgecqrs::test {

master_fixture::master_fixture(master_config cfg, const std::string& path) {
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sql("PRAGMA foreign_keys=ON");
  pub_client = broker.make_client("master", 100);
  sub_client = broker.make_client("observer", 100);
  REQUIRE_FALSE(sub_client->subscribe("edgecqrs/v1/#", [this](const incoming_message& im) {
    received r;
    r.topic = std::string(im.topic);
    // Schema and control messages have their own checks.
    if (r.topic.find("/v1/s/") != std::string::npos || r.topic.find("/v1/c/") != std::string::npos)
      return;
    std::error_code ec = decode_message(im.data, im.size, r.msg);
    REQUIRE_MESSAGE(!ec, "undecodable message on " << r.topic << ": " << ec.message());
    got.push_back(std::move(r));
  }));
  REQUIRE_FALSE(master::attach(db, cfg, pub_client.get(), m, clk));
}

master_fixture::~master_fixture() {
  m.reset();
  sqlite3_close(db);
}

void master_fixture::insert(int id) {
  REQUIRE_FALSE(
      txn("INSERT INTO t VALUES(" + std::to_string(id) + ", " + std::to_string(id) + ")"));
}

std::size_t send_control(loopback::client& c, control_op op, const std::string& replica,
                         std::uint64_t from, std::uint64_t to) {
  control_request r;
  r.op = op;
  r.replica = replica;
  r.from_seq = from;
  r.to_seq = to;
  std::uint8_t buf[256];
  std::size_t w = 0;
  REQUIRE_FALSE(encode_control(r, buf, sizeof buf, w));
  REQUIRE_FALSE(c.publish(control_topic(default_topic_prefix, "t"), buf, w, {}, nullptr));
  return w;
}

void master_fixture::sql(const std::string& s) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, s.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  REQUIRE_MESSAGE(rc == SQLITE_OK, s << ": " << msg);
}

void master_fixture::add_table(const std::string& create_sql, const table_options& o) {
  sql(create_sql);
  REQUIRE_FALSE(m->register_table(o));
}

std::error_code master_fixture::txn(const std::string& s) {
  return m->transaction([&](sqlite3* d) -> std::error_code {
    char* err = nullptr;
    int rc = sqlite3_exec(d, s.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      MESSAGE(s << ": " << std::string(err ? err : "?"));
      sqlite3_free(err);
      return make_error_code(errc::sqlite_error);
    }
    return {};
  });
}

void master_fixture::drain(int rounds) {
  for (int i = 0; i < rounds; ++i) {
    REQUIRE_FALSE(m->poll());
    if (broker.pump_all() == 0 && broker.queued() == 0) {
      REQUIRE_FALSE(m->poll());
      if (broker.queued() == 0) return;
    }
  }
}

std::vector<event> master_fixture::events(const std::string& cqrs_id) const {
  std::vector<event> out;
  std::string topic = event_topic(default_topic_prefix, cqrs_id);
  for (auto& r : got)
    if (r.topic == topic)
      for (auto& e : r.msg.events) out.push_back(e);
  return out;
}

std::vector<std::uint64_t> master_fixture::seqs(const std::string& cqrs_id) const {
  std::vector<std::uint64_t> out;
  std::string topic = event_topic(default_topic_prefix, cqrs_id);
  for (auto& r : got)
    if (r.topic == topic)
      for (std::size_t i = 0; i < r.msg.events.size(); ++i) out.push_back(r.msg.seq_of(i));
  return out;
}

std::int64_t master_fixture::count(const std::string& query) {
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, query.c_str(), -1, &s, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(s) == SQLITE_ROW);
  std::int64_t n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return n;
}

value I(std::int64_t v) { return value::integer(v); }
value T(const std::string& s) { return value::text(s); }
value R(double d) { return value::real(d); }
value N() { return value::null(); }

}  // namespace edgecqrs::test

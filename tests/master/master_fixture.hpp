// Test fixture for the master: an in-memory (or file) database, a loopback broker, a subscriber
// that decodes every event message it receives.
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"

namespace edgecqrs::test {

struct received {
  std::string topic;
  message msg;
};

class master_fixture {
 public:
  explicit master_fixture(master_config cfg = {}, const std::string& path = ":memory:");
  ~master_fixture();

  // Runs SQL on the connection; fails the test on error.
  void sql(const std::string& s);
  // Runs `create_sql` (fails the test on error) and registers the table of `o` (requires
  // success).
  void add_table(const std::string& create_sql, const table_options& o);
  // Runs SQL inside master.transaction(); returns its result.
  std::error_code txn(const std::string& s);
  // Polls the master and pumps the broker until quiet.
  void drain(int rounds = 20);
  // Received event messages on the broadcast topic of `cqrs_id` (heartbeats excluded), all
  // events flattened in arrival order.
  std::vector<event> events(const std::string& cqrs_id) const;
  std::vector<std::uint64_t> seqs(const std::string& cqrs_id) const;
  void clear() { got.clear(); }
  // Inserts row (id, id) into table t inside a transaction (requires success).
  void insert(int id);
  std::int64_t count(const std::string& query);

  fake_clock clk;
  loopback::broker broker{7, &clk};
  std::unique_ptr<loopback::client> pub_client;
  std::unique_ptr<loopback::client> sub_client;
  sqlite3* db = nullptr;
  std::unique_ptr<master> m;
  std::vector<received> got;
};

// Publishes one control request of `replica` for stream "t" from `c` (requires success; delivered
// at the next pump). Returns the encoded size.
std::size_t send_control(loopback::client& c, control_op op, const std::string& replica,
                         std::uint64_t from, std::uint64_t to);

value I(std::int64_t v);
value T(const std::string& s);
value R(double d);
value N();

}  // namespace edgecqrs::test

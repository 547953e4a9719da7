// A device application as a firmware engineer writes it: register a table, write through the
// transaction API, publish through a transport (here the in-process loopback), check delivery.
#include <sqlite3.h>

#include <cstdio>
#include <memory>
#include <string>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/ports/loopback.hpp"
#include "edgecqrs/version.hpp"

int main() {
  edgecqrs::loopback::broker hub;
  auto device = hub.make_client("device");
  auto observer = hub.make_client("observer");
  int events = 0;
  observer->subscribe(edgecqrs::event_topic("edgecqrs", "reading"),
                      [&](const edgecqrs::incoming_message& m) {
                        edgecqrs::message msg;
                        if (!edgecqrs::decode_message(m.data, m.size, msg))
                          events += static_cast<int>(msg.events.size());
                      });

  std::unique_ptr<edgecqrs::master> master;
  if (auto ec = edgecqrs::master::open(":memory:", {}, device.get(), master)) {
    std::fprintf(stderr, "open: %s\n", ec.message().c_str());
    return 1;
  }
  sqlite3_exec(master->db(), "CREATE TABLE reading(id INTEGER PRIMARY KEY, name TEXT, value REAL)",
               nullptr, nullptr, nullptr);
  edgecqrs::table_options t;
  t.table = "reading";
  t.cqrs_id = "reading";
  if (auto ec = master->register_table(t)) {
    std::fprintf(stderr, "register: %s\n", ec.message().c_str());
    return 1;
  }
  auto ec = master->transaction([](sqlite3* db) -> std::error_code {
    for (int i = 1; i <= 3; ++i) {
      std::string sql = "INSERT INTO reading VALUES(" + std::to_string(i) + ", 'sensor', 21.5)";
      if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK)
        return edgecqrs::errc::sqlite_error;
    }
    return {};
  });
  if (ec) {
    std::fprintf(stderr, "transaction: %s\n", ec.message().c_str());
    return 1;
  }
  for (int i = 0; i < 10 && events < 3; ++i) {
    master->poll();
    hub.pump_all();
  }
  std::printf("edgecqrs %s: %d events delivered\n", edgecqrs::version(), events);
  return events == 3 ? 0 : 1;
}

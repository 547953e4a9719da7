// P4: bytes per event on the wire, measured on what the real master publishes (through the
// loopback transport): the 4-field row and a 20-column row, one event per message (1-row
// transactions) and batched (one 100-row transaction, one message), beside the same row as
// django-cqrs-style JSON. Wire bytes = the MQTT 3.1.1 QoS 1 PUBLISH packet (fixed header,
// topic, packet id, payload); payload bytes = the CBOR message alone.
// Usage: bench_wire [batch=100]. Prints key=value lines (scripts/bench parses them).
#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "edgecqrs/master.hpp"
#include "edgecqrs/ports/loopback.hpp"

namespace {

struct captured {
  std::size_t messages = 0, payload = 0, wire = 0;
};

std::size_t remaining_length_bytes(std::size_t n) {
  std::size_t b = 1;
  while (n >= 128) {
    n /= 128;
    ++b;
  }
  return b;
}

// MQTT 3.1.1 PUBLISH, QoS 1: fixed header (1 + remaining-length varint), topic (2 + len),
// packet id (2), payload.
std::size_t publish_packet(std::size_t topic, std::size_t payload) {
  const std::size_t rem = 2 + topic + 2 + payload;
  return 1 + remaining_length_bytes(rem) + rem;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench_wire: %s\n", what);
  std::exit(2);
}

// The row values of row `id` for a table of `cols` columns (id, name, value, updated, then
// alternating integer / real / short text columns).
std::string table_name(int cols) { return cols == 4 ? "reading" : "wide"; }

std::string insert_sql(int cols) {
  std::string s = "INSERT INTO " + table_name(cols) + " VALUES(?1";
  for (int i = 2; i <= cols; ++i) s += ",?" + std::to_string(i);
  return s + ")";
}

std::string create_sql(int cols) {
  std::string s = "CREATE TABLE " + table_name(cols) + "(id INTEGER PRIMARY KEY, name TEXT, value REAL, updated INTEGER";
  for (int i = 5; i <= cols; ++i)
    s += ", c" + std::to_string(i) + (i % 3 == 0 ? " REAL" : i % 3 == 1 ? " INTEGER" : " TEXT");
  return s + ")";
}

void bind_row(sqlite3_stmt* s, int cols, long id) {
  sqlite3_bind_int64(s, 1, 123455 + id);
  sqlite3_bind_text(s, 2, "sensor-42", -1, SQLITE_STATIC);
  sqlite3_bind_double(s, 3, 21.5);
  sqlite3_bind_int64(s, 4, 1763800000);
  for (int i = 5; i <= cols; ++i) {
    if (i % 3 == 0) sqlite3_bind_double(s, i, 0.5 * i);
    else if (i % 3 == 1) sqlite3_bind_int64(s, i, 1000 + i);
    else sqlite3_bind_text(s, i, "ok", -1, SQLITE_STATIC);
  }
}

std::string json_row(int cols) {
  // django-cqrs style, as its producer sends it (keys and layout of signal payloads).
  std::string data = "{\"id\":123456,\"name\":\"sensor-42\",\"value\":21.5,\"updated\":1763800000";
  for (int i = 5; i <= cols; ++i) {
    data += ",\"c" + std::to_string(i) + "\":";
    if (i % 3 == 0) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", 0.5 * i);
      data += b;
    } else if (i % 3 == 1) {
      data += std::to_string(1000 + i);
    } else {
      data += "\"ok\"";
    }
  }
  data += "}";
  return "{\"signal_type\":\"SAVE\",\"cqrs_id\":\"" + table_name(cols) + "\",\"instance_data\":" + data +
         ",\"previous_data\":null,\"instance_pk\":123456,\"correlation_id\":null,\"expires\":null,"
         "\"retries\":0}";
}

// Runs `txns` transactions of `rows` rows each through a real master; returns what the event
// topic carried.
captured measure(int cols, int txns, int rows) {
  char path[] = "/tmp/edgecqrs-bench-wire-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) die("mkstemp");
  close(fd);
  std::remove(path);
  edgecqrs::loopback::broker broker;
  auto pub = broker.make_client("master", 64);
  auto sub = broker.make_client("observer", 64);
  captured c;
  if (sub->subscribe("edgecqrs/v1/e/#", [&](const edgecqrs::incoming_message& m) {
        ++c.messages;
        c.payload += m.size;
        c.wire += publish_packet(m.topic.size(), m.size);
      }))
    die("subscribe");
  std::unique_ptr<edgecqrs::master> m;
  edgecqrs::master_config cfg;
  cfg.heartbeat_interval_ms = 0;
  if (edgecqrs::master::open(path, cfg, pub.get(), m)) die("open");
  if (sqlite3_exec(m->db(), create_sql(cols).c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) die("create");
  edgecqrs::table_options o;
  o.table = table_name(cols);
  o.cqrs_id = table_name(cols);
  if (m->register_table(o)) die("register");
  m->poll();
  broker.pump_all();
  m->poll();
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(m->db(), insert_sql(cols).c_str(), -1, &s, nullptr);
  long id = 1;
  for (int t = 0; t < txns; ++t) {
    if (m->begin()) die("begin");
    for (int r = 0; r < rows; ++r) {
      bind_row(s, cols, id++);
      if (sqlite3_step(s) != SQLITE_DONE) die("insert");
      sqlite3_reset(s);
    }
    if (m->commit()) die("commit");
    // Publish each transaction on its own (no batching across transactions).
    for (int i = 0; i < 4; ++i) {
      m->poll();
      broker.pump_all();
    }
  }
  sqlite3_finalize(s);
  m.reset();
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((std::string(path) + suffix).c_str());
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const int batch = argc > 1 ? std::atoi(argv[1]) : 100;
  for (int cols : {4, 20}) {
    const captured single = measure(cols, 10, 1);
    const captured batched = measure(cols, 1, batch);
    if (single.messages == 0 || batched.messages == 0) die("nothing published");
    const double n1 = 10, nb = batch;
    std::printf("wire_%d_single_payload_b=%.1f\n", cols, single.payload / n1);
    std::printf("wire_%d_single_packet_b=%.1f\n", cols, single.wire / n1);
    std::printf("wire_%d_batched_payload_b=%.1f\n", cols, batched.payload / nb);
    std::printf("wire_%d_batched_packet_b=%.1f\n", cols, batched.wire / nb);
    std::printf("wire_%d_batched_messages=%zu\n", cols, batched.messages);
    std::printf("wire_%d_json_b=%zu\n", cols, json_row(cols).size());
  }
  return 0;
}

// The replica daemon's configuration file (TOML), parsed and validated into plain structs.
// Every error names the file position, the key and the problem. See examples/replica.toml.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgecqrs::cli {

struct tls_config {
  bool enabled = false;
  std::string ca_file, cert_file, key_file;
  bool verify_hostname = true;
};

struct broker_config {
  std::string url = "mqtt://127.0.0.1:1883";  // mqtt:// or mqtts://
  std::string client_id;                      // default: replica name (+ worker index)
  std::string username;
  std::string password;  // or password_file
  std::string password_file;
  int mqtt_version = 5;  // 3 (3.1.1) or 5
  int keepalive_s = 30;
  tls_config tls;
};

struct table_config {
  std::string cqrs_id;
  std::string table;                                         // local table (default: cqrs_id)
  std::vector<std::pair<std::string, std::string>> mapping;  // remote -> local
  bool reject_unknown_columns = false;  // unknown_columns = "reject" | "ignore"
  bool only_direct_syncs = false;
};

struct consume_config {
  std::string name;      // replica name (direct topic, control requests)
  std::string database;  // replica SQLite file
  std::string topic_prefix = "edgecqrs";
  int workers = 1;  // > 1: shared subscription $share/<name>/...
  broker_config broker;
  int max_retries = 30;
  std::int64_t retry_base_ms = 2000;
  std::int64_t retry_max_ms = 60000;
  std::int64_t dead_letter_max_rows = 100000;
  std::int64_t reorder_window_ms = 2000;
  std::vector<table_config> tables;
};

// Parses and validates `text` (named `source` in messages). On failure returns false and sets
// `error` to one line: "<source>:<line>:<col>: <key>: <problem>". Never throws.
bool parse_consume_config(std::string_view text, std::string_view source, consume_config& out,
                          std::string& error);

}  // namespace edgecqrs::cli

// TOML config for `edgecqrs consume`: strict (unknown keys are errors), every message names
// the place, the key and the problem.
#include "config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <exception>
#include <set>
#include <sstream>

#include "edgecqrs/names.hpp"

namespace edgecqrs::cli {
namespace {

struct config_error {
  std::string text;
};

std::string where(std::string_view source, const toml::source_region& r) {
  std::ostringstream s;
  s << source << ":" << r.begin.line << ":" << r.begin.column;
  return s.str();
}

class reader {
 public:
  explicit reader(std::string_view source) : source_(source) {}

  [[noreturn]] void fail(const toml::node& n, const std::string& key,
                         const std::string& problem) const {
    throw config_error{where(source_, n.source()) + ": " + key + ": " + problem};
  }
  [[noreturn]] void fail_at(const toml::table& t, const std::string& key,
                            const std::string& problem) const {
    throw config_error{where(source_, t.source()) + ": " + key + ": " + problem};
  }

  void only_keys(const toml::table& t, const std::string& path,
                 std::initializer_list<const char*> allowed) const {
    for (auto&& [k, v] : t) {
      const auto key = k.str();  // C++17: a structured binding cannot be captured (clang)
      bool ok =
          std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; });
      if (!ok) {
        std::string all;
        for (const char* a : allowed) all += std::string(all.empty() ? "" : ", ") + a;
        fail(v, path + std::string(k.str()), "unknown key (expected one of: " + all + ")");
      }
    }
  }

  bool get_string(const toml::table& t, const std::string& path, const char* key, std::string& out,
                  bool required = false) const {
    const toml::node* n = t.get(key);
    if (!n) {
      if (required) fail_at(t, path + key, "missing (required)");
      return false;
    }
    auto v = n->value<std::string>();
    if (!n->is_string() || !v) fail(*n, path + key, "must be a string");
    out = *v;
    return true;
  }

  template <class Int>
  void get_int(const toml::table& t, const std::string& path, const char* key, Int& out,
               std::int64_t min, std::int64_t max) const {
    const toml::node* n = t.get(key);
    if (!n) return;
    if (!n->is_integer()) fail(*n, path + key, "must be an integer");
    std::int64_t v = *n->value<std::int64_t>();
    if (v < min || v > max)
      fail(*n, path + key,
           "out of range (" + std::to_string(v) + "; allowed " + std::to_string(min) + ".." +
               std::to_string(max) + ")");
    out = static_cast<Int>(v);
  }

  void get_bool(const toml::table& t, const std::string& path, const char* key, bool& out) const {
    const toml::node* n = t.get(key);
    if (!n) return;
    if (!n->is_boolean()) fail(*n, path + key, "must be true or false");
    out = *n->value<bool>();
  }

  const toml::table* get_table(const toml::table& t, const std::string& path,
                               const char* key) const {
    const toml::node* n = t.get(key);
    if (!n) return nullptr;
    if (!n->is_table()) fail(*n, path + key, "must be a table");
    return n->as_table();
  }

 private:
  std::string_view source_;
};

void check_name(const reader& r, const toml::table& t, const std::string& key,
                const std::string& value, std::error_code ec) {
  if (ec) r.fail(*t.get(key.substr(key.rfind('.') + 1)), key, "'" + value + "': " + ec.message());
}

void parse(const toml::table& root, const reader& r, consume_config& c) {
  r.only_keys(root, "", {"replica", "broker", "retry", "dead_letters", "table"});
  const toml::table* rep = r.get_table(root, "", "replica");
  if (!rep) r.fail_at(root, "replica", "missing (required table with name and database)");
  r.only_keys(*rep, "replica.",
              {"name", "database", "topic_prefix", "workers", "reorder_window_ms"});
  r.get_string(*rep, "replica.", "name", c.name, true);
  check_name(r, *rep, "replica.name", c.name, validate_replica_name(c.name));
  r.get_string(*rep, "replica.", "database", c.database, true);
  if (c.database.empty()) r.fail(*rep->get("database"), "replica.database", "must not be empty");
  if (r.get_string(*rep, "replica.", "topic_prefix", c.topic_prefix))
    check_name(r, *rep, "replica.topic_prefix", c.topic_prefix,
               validate_topic_prefix(c.topic_prefix));
  r.get_int(*rep, "replica.", "workers", c.workers, 1, 64);
  r.get_int(*rep, "replica.", "reorder_window_ms", c.reorder_window_ms, 0, 3600 * 1000);

  if (const toml::table* b = r.get_table(root, "", "broker")) {
    r.only_keys(*b, "broker.",
                {"url", "client_id", "username", "password", "password_file", "mqtt_version",
                 "keepalive_s", "tls"});
    if (r.get_string(*b, "broker.", "url", c.broker.url)) {
      const std::string& u = c.broker.url;
      if (u.rfind("mqtt://", 0) != 0 && u.rfind("mqtts://", 0) != 0 && u.rfind("tcp://", 0) != 0 &&
          u.rfind("ssl://", 0) != 0)
        r.fail(*b->get("url"), "broker.url",
               "'" + u + "': must start with mqtt://, mqtts://, tcp:// or ssl://");
      if (u.find("://") + 3 >= u.size())
        r.fail(*b->get("url"), "broker.url", "'" + u + "': missing host");
    }
    r.get_string(*b, "broker.", "client_id", c.broker.client_id);
    r.get_string(*b, "broker.", "username", c.broker.username);
    r.get_string(*b, "broker.", "password", c.broker.password);
    r.get_string(*b, "broker.", "password_file", c.broker.password_file);
    if (!c.broker.password.empty() && !c.broker.password_file.empty())
      r.fail(*b->get("password_file"), "broker.password_file",
             "give either password or password_file, not both");
    r.get_int(*b, "broker.", "mqtt_version", c.broker.mqtt_version, 3, 5);
    if (c.broker.mqtt_version == 4)
      r.fail(*b->get("mqtt_version"), "broker.mqtt_version", "must be 3 (MQTT 3.1.1) or 5");
    r.get_int(*b, "broker.", "keepalive_s", c.broker.keepalive_s, 1, 65535);
    if (const toml::table* t = r.get_table(*b, "broker.", "tls")) {
      r.only_keys(*t, "broker.tls.", {"ca_file", "cert_file", "key_file", "verify_hostname"});
      c.broker.tls.enabled = true;
      r.get_string(*t, "broker.tls.", "ca_file", c.broker.tls.ca_file);
      r.get_string(*t, "broker.tls.", "cert_file", c.broker.tls.cert_file);
      r.get_string(*t, "broker.tls.", "key_file", c.broker.tls.key_file);
      r.get_bool(*t, "broker.tls.", "verify_hostname", c.broker.tls.verify_hostname);
      if (c.broker.tls.cert_file.empty() != c.broker.tls.key_file.empty())
        r.fail_at(*t, "broker.tls", "cert_file and key_file go together");
    }
  }
  if (c.workers > 1 && c.broker.mqtt_version != 5)
    r.fail(*rep->get("workers"), "replica.workers",
           "more than one worker needs MQTT 5 shared subscriptions (broker.mqtt_version = 5)");

  if (const toml::table* t = r.get_table(root, "", "retry")) {
    r.only_keys(*t, "retry.", {"max_retries", "base_delay_ms", "max_delay_ms"});
    r.get_int(*t, "retry.", "max_retries", c.max_retries, 0, 1000000);
    r.get_int(*t, "retry.", "base_delay_ms", c.retry_base_ms, 1, 86400000);
    r.get_int(*t, "retry.", "max_delay_ms", c.retry_max_ms, 1, 86400000);
    if (c.retry_max_ms < c.retry_base_ms)
      r.fail_at(*t, "retry.max_delay_ms", "must be >= retry.base_delay_ms");
  }
  if (const toml::table* t = r.get_table(root, "", "dead_letters")) {
    r.only_keys(*t, "dead_letters.", {"max_rows"});
    r.get_int(*t, "dead_letters.", "max_rows", c.dead_letter_max_rows, 1, INT64_MAX);
  }

  const toml::node* tables = root.get("table");
  if (!tables) r.fail_at(root, "table", "missing (at least one [[table]] with a cqrs_id)");
  if (!tables->is_array_of_tables())
    r.fail(*tables, "table", "must be an array of tables ([[table]])");
  std::set<std::string> ids;
  std::size_t i = 0;
  for (const toml::node& n : *tables->as_array()) {
    const toml::table& t = *n.as_table();
    const std::string p = "table[" + std::to_string(i++) + "].";
    r.only_keys(t, p, {"cqrs_id", "table", "mapping", "unknown_columns", "only_direct_syncs"});
    table_config tc;
    r.get_string(t, p, "cqrs_id", tc.cqrs_id, true);
    check_name(r, t, p + "cqrs_id", tc.cqrs_id, validate_cqrs_id(tc.cqrs_id));
    if (!ids.insert(tc.cqrs_id).second)
      r.fail(*t.get("cqrs_id"), p + "cqrs_id", "'" + tc.cqrs_id + "' appears twice");
    tc.table = tc.cqrs_id;
    r.get_string(t, p, "table", tc.table);
    if (tc.table.empty()) r.fail(*t.get("table"), p + "table", "must not be empty");
    std::string unknown = "ignore";
    if (r.get_string(t, p, "unknown_columns", unknown)) {
      if (unknown != "ignore" && unknown != "reject")
        r.fail(*t.get("unknown_columns"), p + "unknown_columns",
               "'" + unknown + "': must be \"ignore\" or \"reject\"");
    }
    tc.reject_unknown_columns = unknown == "reject";
    r.get_bool(t, p, "only_direct_syncs", tc.only_direct_syncs);
    if (const toml::table* m = r.get_table(t, p, "mapping")) {
      for (auto&& [k, v] : *m) {
        auto local = v.value<std::string>();
        if (!v.is_string() || !local)
          r.fail(v, p + "mapping." + std::string(k.str()), "must be a string (the local column)");
        if (local->empty())
          r.fail(v, p + "mapping." + std::string(k.str()), "local column name must not be empty");
        tc.mapping.emplace_back(std::string(k.str()), *local);
      }
    }
    c.tables.push_back(std::move(tc));
  }
}

}  // namespace

bool parse_consume_config(std::string_view text, std::string_view source, consume_config& out,
                          std::string& error) {
  out = consume_config{};
  try {
    toml::table root = toml::parse(text, source);
    reader r(source);
    parse(root, r, out);
    if (out.broker.client_id.empty()) out.broker.client_id = out.name;
    return true;
  } catch (const toml::parse_error& e) {
    std::ostringstream s;
    s << source << ":" << e.source().begin.line << ":" << e.source().begin.column
      << ": syntax: " << e.description();
    error = s.str();
  } catch (const config_error& e) {
    error = e.text;
  } catch (const std::exception& e) {
    error = std::string(source) + ": " + e.what();
  }
  out = consume_config{};
  return false;
}

}  // namespace edgecqrs::cli

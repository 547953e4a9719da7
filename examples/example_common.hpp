// Shared bits of the host example programs: flags, the MQTT transport config, clocks, RSS.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <system_error>
#include <thread>
#include <string>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/ports/paho.hpp"

namespace example {

// "--name value" pairs; a flag without a value is "1".
class flags {
 public:
  flags(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        bad_ = a;
        continue;
      }
      a = a.substr(2);
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        values_[a] = argv[++i];
      } else {
        values_[a] = "1";
      }
    }
  }
  std::string get(const std::string& k, const std::string& def = {}) const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second;
  }
  long long num(const std::string& k, long long def) const {
    auto it = values_.find(k);
    return it == values_.end() ? def : std::atoll(it->second.c_str());
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  const std::string& bad() const { return bad_; }

 private:
  std::map<std::string, std::string> values_;
  std::string bad_;
};

inline edgecqrs::ports::paho_config transport_config(const flags& f, const std::string& id) {
  edgecqrs::ports::paho_config c;
  c.server_uri = f.get("uri", "tcp://127.0.0.1:1883");
  c.client_id = f.get("client-id", id);
  c.mqtt_version = static_cast<int>(f.num("mqtt", 4));
  c.username = f.get("user");
  c.password = f.get("password");
  c.tls.ca_file = f.get("tls-ca");
  c.connect_timeout = std::chrono::seconds(5);
  c.reconnect_min = std::chrono::seconds(1);
  c.reconnect_max = std::chrono::seconds(2);
  return c;
}

// Connects, retrying for up to `limit` (the broker may still be starting). Refusals that will
// not change (credentials, TLS, configuration) end the wait at once.
inline std::error_code connect_with_retry(edgecqrs::ports::paho_transport& t,
                                          std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    const auto ec = t.start();
    if (!ec || ec == edgecqrs::errc::auth_failed || ec == edgecqrs::errc::tls_failed ||
        ec == edgecqrs::errc::bad_config || std::chrono::steady_clock::now() >= deadline) {
      return ec;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

inline std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Peak resident set size of this process (VmHWM), KiB; 0 when unknown.
inline long peak_rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return 0;
}

// key=value lines, read by the demo driver and the integration tests.
inline bool write_summary(const std::string& path, const std::map<std::string, std::string>& kv) {
  if (path.empty()) return true;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& [k, v] : kv) out << k << "=" << v << "\n";
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace example

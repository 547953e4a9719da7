// Helpers for tests that drive paho_transport: windowed publishing, waiting, collecting.
#pragma once

#include <chrono>
#include <condition_variable>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/ports/paho.hpp"

namespace edgecqrs::test {

// Polls `pred` every 5 ms until it holds or `limit` passes; returns its last value.
inline bool wait_until(const std::function<bool()>& pred,
                       std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

inline edgecqrs::ports::paho_config client_config(const std::string& uri, const std::string& id,
                                                  int version = 4) {
  edgecqrs::ports::paho_config c;
  c.server_uri = uri;
  c.client_id = id;
  c.mqtt_version = version;
  c.connect_timeout = std::chrono::seconds(5);
  c.reconnect_min = std::chrono::seconds(1);
  c.reconnect_max = std::chrono::seconds(2);
  return c;
}

// Receives messages and remembers their payloads (as strings) in arrival order.
class collector {
 public:
  edgecqrs::message_callback callback() {
    return [this](const edgecqrs::incoming_message& m) {
      std::lock_guard<std::mutex> lock(mutex_);
      payloads_.emplace_back(reinterpret_cast<const char*>(m.data), m.size);
      topics_.emplace_back(m.topic);
      duplicate_flags_.push_back(m.duplicate);
    };
  }
  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return payloads_.size();
  }
  std::vector<std::string> payloads() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return payloads_;
  }
  std::vector<bool> duplicate_flags() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return duplicate_flags_;
  }
  // Payloads with redeliveries removed (first arrival kept); `redelivered_unflagged` counts
  // repeats that the broker did not flag as duplicates.
  std::vector<std::string> unique_payloads(std::size_t* redelivered_unflagged = nullptr) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    std::set<std::string> seen;
    std::size_t unflagged = 0;
    for (std::size_t i = 0; i < payloads_.size(); ++i) {
      if (seen.insert(payloads_[i]).second) {
        out.push_back(payloads_[i]);
      } else if (!duplicate_flags_[i]) {
        ++unflagged;
      }
    }
    if (redelivered_unflagged != nullptr) *redelivered_unflagged = unflagged;
    return out;
  }
  std::vector<std::string> topics() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return topics_;
  }
  bool wait_for_count(std::size_t n, std::chrono::milliseconds limit = std::chrono::seconds(15)) {
    return wait_until([&] { return size() >= n; }, limit);
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> payloads_;
  std::vector<std::string> topics_;
  std::vector<bool> duplicate_flags_;
};

// Publishes payloads one after another, keeping at most max_in_flight() outstanding, the way
// the master's publisher does. Returns the first error that is not a full window.
struct windowed_result {
  std::error_code first_error;       // from publish() (other than window_full)
  std::size_t acked = 0;
  std::size_t failed = 0;            // callbacks with an error
  std::size_t window_full = 0;       // times publish() said the window was full
  std::size_t max_seen_in_flight = 0;
  double seconds = 0;
};

inline windowed_result publish_windowed(edgecqrs::ports::paho_transport& t,
                                        const std::string& topic,
                                        const std::vector<std::string>& payloads,
                                        const edgecqrs::publish_options& opts = {}) {
  // Shared with the callbacks, which may outlive this call when the broker never answers.
  struct state {
    std::mutex m;
    std::condition_variable cv;
    std::size_t done = 0, acked = 0, failed = 0;
  };
  auto st = std::make_shared<state>();
  windowed_result r;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& p : payloads) {
    while (true) {
      const auto ec = t.publish(topic, reinterpret_cast<const std::uint8_t*>(p.data()), p.size(),
                                opts, [st](std::error_code e) {
                                  std::lock_guard<std::mutex> lock(st->m);
                                  ++st->done;
                                  ++(e ? st->failed : st->acked);
                                  st->cv.notify_all();
                                });
      if (!ec) break;
      if (ec != edgecqrs::errc::window_full) {
        r.first_error = ec;
        break;
      }
      ++r.window_full;
      std::unique_lock<std::mutex> lock(st->m);
      const auto before = st->done;
      st->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return st->done != before; });
    }
    if (r.first_error) break;
    r.max_seen_in_flight = std::max(r.max_seen_in_flight, t.in_flight());
  }
  std::unique_lock<std::mutex> lock(st->m);
  st->cv.wait_for(lock, std::chrono::seconds(30), [&] { return t.in_flight() == 0; });
  r.acked = st->acked;
  r.failed = st->failed;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

inline std::vector<std::string> numbered(const std::string& tag, std::size_t n) {
  std::vector<std::string> v;
  v.reserve(n);
  for (std::size_t i = 0; i < n; ++i) v.push_back(tag + "-" + std::to_string(i));
  return v;
}

}  // namespace edgecqrs::test

// The transport port: the small interface the master and replica use to reach a broker.
// Implementations: ports/loopback (in-process, deterministic, fault injection) and ports/paho
// (MQTT over Paho MQTT C++). Delivery is at-least-once: QoS 1 semantics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "edgecqrs/export.hpp"

namespace edgecqrs {

struct publish_options {
  bool retain = false;
  std::uint32_t expiry_interval_s = 0;   // MQTT 5 message expiry; 0: none
  std::string correlation_data;          // MQTT 5 correlation data; empty: none
  std::vector<std::pair<std::string, std::string>> user_properties;  // MQTT 5
};

struct incoming_message {
  std::string_view topic;
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  bool duplicate = false;   // the broker flagged it as a redelivery (informational only)
};

// Called exactly once per accepted publish: an empty error_code after the broker's
// acknowledgement (PUBACK), otherwise the reason it failed. May run on a transport thread.
using publish_callback = std::function<void(std::error_code)>;

// Called for each arriving message, serially (never two at once for one transport). The message
// is acknowledged to the broker when the callback returns, so the callback must have made the
// message durable (committed) before returning. The bytes are valid only during the call.
using message_callback = std::function<void(const incoming_message&)>;

class EDGECQRS_API transport {
 public:
  virtual ~transport() = default;

  // Queues a QoS 1 publish. Returns an error (and never calls `done`) when it cannot be queued:
  // errc::not_connected, errc::window_full, errc::publish_failed. Thread-safe.
  virtual std::error_code publish(std::string_view topic, const std::uint8_t* data,
                                  std::size_t size, const publish_options& opts,
                                  publish_callback done) = 0;

  // Subscribes a topic filter (may be "$share/<group>/..."); the subscription is restored after
  // every reconnect. One callback per filter. Thread-safe.
  virtual std::error_code subscribe(std::string_view filter, message_callback on_message) = 0;
  virtual std::error_code unsubscribe(std::string_view filter) = 0;

  virtual bool connected() const = 0;

  // Most unacknowledged publishes the caller should keep outstanding (the publisher's window).
  virtual std::size_t max_in_flight() const = 0;
};

}  // namespace edgecqrs

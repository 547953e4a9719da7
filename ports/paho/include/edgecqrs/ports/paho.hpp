// The MQTT transport port over Paho MQTT C++ (mqtt::async_client): QoS 1, persistent sessions,
// automatic reconnect with resubscribe, MQTT 5 properties, shared subscriptions, TLS.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

#include "edgecqrs/export.hpp"
#include "edgecqrs/transport.hpp"

namespace edgecqrs::ports {

// TLS settings. TLS is on when ca_file is set or server_uri starts with "ssl://" / "mqtts://".
struct paho_tls_config {
  std::string ca_file;           // PEM trust store; empty: the system default
  std::string cert_file;         // optional client certificate (PEM)
  std::string key_file;          // its private key (PEM); empty: inside cert_file
  std::string key_password;
  bool verify_hostname = true;   // the server certificate must name the host of server_uri
};

struct paho_config {
  std::string server_uri = "tcp://127.0.0.1:1883";  // tcp://, ssl://, mqtt://, mqtts://
  std::string client_id;         // required: the broker keys the persistent session by it
  int mqtt_version = 4;          // 4: MQTT 3.1.1; 5: MQTT 5 (properties, session expiry)
  // Keep the session (queued QoS 1 messages, subscriptions) across disconnects: clean session
  // off (3.1.1) / clean start off with session_expiry_s (5). Off only for throw-away clients.
  bool persistent_session = true;
  std::uint32_t session_expiry_s = 7 * 24 * 3600;   // MQTT 5 only
  std::chrono::seconds keep_alive{30};
  std::chrono::seconds connect_timeout{10};  // also the wait for SUBACK/UNSUBACK
  std::chrono::seconds reconnect_min{1};     // automatic reconnect backoff, doubling up to max
  std::chrono::seconds reconnect_max{30};
  std::string username;          // empty: anonymous
  std::string password;
  paho_tls_config tls;
  // The publish window: most unacknowledged QoS 1 publishes. Paho's own limits (in-flight,
  // buffered) are set above it so that Paho C 1.3.11's 1 s stall at its in-flight limit and
  // Paho C++ 1.2's rc -12 beyond its buffer are never reached. Clamped to [1, 1024].
  std::size_t max_in_flight = 64;
};

// Counters since construction; read with stats().
struct paho_stats {
  std::uint64_t published = 0;        // publishes acknowledged by the broker
  std::uint64_t publish_failures = 0; // publishes whose callback got an error
  std::uint64_t received = 0;         // messages handed to a message_callback
  std::uint64_t unrouted = 0;         // arrived messages matching no subscribed filter
  std::uint64_t callback_exceptions = 0;  // exceptions thrown by a message_callback (swallowed)
  std::uint64_t connects = 0;         // successful connects, first and reconnects
  std::uint64_t connection_losses = 0;
};

// A transport over one MQTT connection.
//
// Lifecycle: construct, subscribe() (may come before or after start()), start() to connect;
// Paho reconnects automatically afterwards and this class restores every subscription on each
// reconnect. stop() (or the destructor) disconnects; publishes still unacknowledged then get
// errc::not_connected in their callback, so every accepted publish's callback runs exactly once.
//
// Threading: publish, subscribe, unsubscribe, connected, max_in_flight, stats are thread-safe.
// Callbacks (publish_callback, message_callback) run on Paho's callback thread, one at a time.
// A message is acknowledged to the broker when its message_callback returns *only while Paho C's
// message queue is empty and the client is connected* (Paho C 1.3.12, MQTTProtocol_handlePublishes);
// otherwise Paho queues it and sends PUBACK at once, before the callback runs. Paho C++ 1.2 has no
// manual acknowledgement. So the callback should make the message durable before returning (the
// common path), and the protocol must not rely on it (docs/replication.md section 6). An
// exception escaping the callback is caught and counted; the message is acknowledged anyway.
// subscribe/unsubscribe called from inside a callback do not wait for the broker's answer.
//
// publish() accepts an empty publish_callback (fire and forget; the publish still counts against
// the window until acknowledged).
//
// Errors: start(): errc::connect_failed, errc::auth_failed (bad credentials / not authorised),
// errc::tls_failed (handshake or certificate verification), errc::timeout, errc::bad_config.
// publish(): errc::not_connected, errc::window_full, errc::publish_failed, errc::invalid_argument.
// subscribe(): errc::subscribe_failed (refused, e.g. by an ACL), errc::timeout,
// errc::invalid_argument (bad filter or empty callback).
class paho_transport final : public transport {
 public:
  EDGECQRS_API explicit paho_transport(paho_config config);
  EDGECQRS_API ~paho_transport() override;
  paho_transport(const paho_transport&) = delete;
  paho_transport& operator=(const paho_transport&) = delete;

  // Connects and waits up to connect_timeout for the broker's CONNACK, then subscribes every
  // filter registered so far and waits for the SUBACKs (errc::subscribe_failed when one is
  // refused). Calling it while started returns an empty error_code. After a failure it may be
  // called again.
  EDGECQRS_API std::error_code start();
  // Disconnects (waits up to 1 s for a clean DISCONNECT) and fails unacknowledged publishes.
  // The object can be start()ed again. Must not be called from a transport callback.
  EDGECQRS_API void stop();

  EDGECQRS_API std::error_code publish(std::string_view topic, const std::uint8_t* data,
                                       std::size_t size, const publish_options& opts,
                                       publish_callback done) override;
  EDGECQRS_API std::error_code subscribe(std::string_view filter,
                                         message_callback on_message) override;
  EDGECQRS_API std::error_code unsubscribe(std::string_view filter) override;
  EDGECQRS_API bool connected() const override;
  EDGECQRS_API std::size_t max_in_flight() const override;

  // Unacknowledged publishes right now (always <= max_in_flight()).
  EDGECQRS_API std::size_t in_flight() const;
  EDGECQRS_API paho_stats stats() const;
  // Paho's text for the last connection or TLS failure (diagnostics only).
  EDGECQRS_API std::string last_error_message() const;

  // True when `topic` matches `filter` by MQTT rules ('+', '#', "$share/<group>/" removed,
  // wildcards never match a first level starting with '$').
  EDGECQRS_API static bool topic_matches(std::string_view filter, std::string_view topic) noexcept;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace edgecqrs::ports

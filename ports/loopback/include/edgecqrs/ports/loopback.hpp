// Loopback transport: an in-process MQTT-like broker and client transports for tests.
// Deterministic: nothing moves until the test calls broker::pump(); faults (drop, duplicate,
// reorder, delay, failed acknowledgements, disconnects) come from a seeded generator or from
// explicit commands. Supports retained messages, '+'/'#' filters and shared subscriptions
// ("$share/<group>/<filter>": each message goes to one member of the group, round robin).
// Thread-safety: every member of broker and client is thread-safe. Callbacks (subscriber
// callbacks, publish completions) run on the thread that calls pump(), never under a lock, so
// they may publish or subscribe again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/export.hpp"
#include "edgecqrs/transport.hpp"

namespace edgecqrs::loopback {

// Fault probabilities (0..1) applied to each publish when it is pumped.
struct faults {
  double drop = 0;            // lost before the broker: no delivery, publisher gets errc::timeout
  double drop_after_ack = 0;  // acknowledged to the publisher, delivered to nobody
  double duplicate = 0;       // delivered twice (second copy flagged duplicate)
  double fail_ack = 0;        // delivered, but the publisher gets errc::timeout (it will resend)
  double reorder = 0;         // on publish, queued at a random earlier position
  std::int64_t delay_ms = 0;  // every publish is held this long (needs the broker's clock)
};

struct broker_stats {
  std::uint64_t published = 0;   // publishes accepted into the queue
  std::uint64_t delivered = 0;   // subscriber callbacks made
  std::uint64_t dropped = 0;     // drop + drop_after_ack + lost by disconnect
  std::uint64_t duplicated = 0;
  std::uint64_t failed_acks = 0;
};

class client;

class broker {
 public:
  // `clk` (optional, not owned, must outlive the broker) times delays; `max_queued` bounds the
  // queue: a publish beyond it is refused with errc::window_full.
  EDGECQRS_API explicit broker(std::uint64_t seed = 1, clock* clk = nullptr,
                               std::size_t max_queued = 100000);
  EDGECQRS_API ~broker();
  broker(const broker&) = delete;
  broker& operator=(const broker&) = delete;

  // A new connected client. `max_in_flight`: unacknowledged publishes it accepts (window_full
  // beyond). The client may outlive the broker (it then reports not_connected).
  EDGECQRS_API std::unique_ptr<client> make_client(std::string name,
                                                   std::size_t max_in_flight = 32);

  EDGECQRS_API void set_faults(const faults& f);
  // Deterministic commands, applied to the next n publishes pumped (before random faults).
  EDGECQRS_API void drop_next(std::size_t n);
  EDGECQRS_API void duplicate_next(std::size_t n);
  EDGECQRS_API void fail_ack_next(std::size_t n);

  // Disconnects a client: its queued, unacknowledged publishes fail with errc::not_connected and
  // it refuses publishes until reconnect(). Subscriptions are kept (persistent session) but
  // messages published meanwhile are not queued for it (QoS 1 session queue not modelled).
  EDGECQRS_API void disconnect(const client& c);
  EDGECQRS_API void reconnect(const client& c);

  // Processes up to `max` queued items whose delay has passed, in queue order; returns how many.
  EDGECQRS_API std::size_t pump(std::size_t max = SIZE_MAX);
  // Pumps until the queue is empty of due items or `max_rounds` items were processed.
  EDGECQRS_API std::size_t pump_all(std::size_t max_rounds = 1000000);
  EDGECQRS_API std::size_t queued() const;
  // The retained payload of a topic, if any.
  EDGECQRS_API bool retained(std::string_view topic, std::string& payload) const;
  EDGECQRS_API broker_stats stats() const;

  struct state;

 private:
  std::shared_ptr<state> state_;
};

class EDGECQRS_API client final : public transport {
 public:
  ~client() override;
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options& opts, publish_callback done) override;
  std::error_code subscribe(std::string_view filter, message_callback on_message) override;
  std::error_code unsubscribe(std::string_view filter) override;
  bool connected() const override;
  std::size_t max_in_flight() const override { return max_in_flight_; }
  const std::string& name() const { return name_; }
  std::size_t in_flight() const;

 private:
  friend class broker;
  client(std::shared_ptr<broker::state> s, std::string name, std::size_t max_in_flight,
         std::uint64_t id);
  std::shared_ptr<broker::state> state_;
  std::string name_;
  std::size_t max_in_flight_;
  std::uint64_t id_;
};

// MQTT topic filter matching ('+' one level, '#' the rest); no "$share/" prefix.
EDGECQRS_API bool topic_matches(std::string_view filter, std::string_view topic) noexcept;

}  // namespace edgecqrs::loopback

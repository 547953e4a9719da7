// Time source port. The library never reads the wall clock directly, so tests can use a fake.
#pragma once

#include <cstdint>

#include "edgecqrs/export.hpp"

namespace edgecqrs {

class EDGECQRS_API clock {
 public:
  virtual ~clock() = default;
  // Milliseconds since the Unix epoch (wall time: event times, expiry).
  virtual std::int64_t now_ms() = 0;
  // Monotonic milliseconds (timeouts, backoff). Defaults to now_ms().
  virtual std::int64_t steady_ms() { return now_ms(); }
};

// The process-wide real clock (std::chrono::system_clock / steady_clock). Thread-safe.
EDGECQRS_API clock& system_clock() noexcept;

// A manually driven clock for tests and simulations. Not thread-safe.
class EDGECQRS_API fake_clock final : public clock {
 public:
  explicit fake_clock(std::int64_t start_ms = 1763800000000) : now_(start_ms) {}
  std::int64_t now_ms() override { return now_; }
  std::int64_t steady_ms() override { return now_; }
  void advance(std::int64_t ms) { now_ += ms; }
  void set(std::int64_t ms) { now_ = ms; }

 private:
  std::int64_t now_;
};

}  // namespace edgecqrs

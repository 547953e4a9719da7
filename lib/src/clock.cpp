// The real clock.
#include <chrono>

#include "edgecqrs/clock.hpp"

namespace edgecqrs {
namespace {
class real_clock final : public clock {
 public:
  std::int64_t now_ms() override {
    using namespace std::chrono;
    return duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  std::int64_t steady_ms() override {
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
  }
};
}  // namespace

clock& system_clock() noexcept {
  static real_clock c;
  return c;
}

}  // namespace edgecqrs

// Fuzz target: the replica daemon's config parser (tools/edgecqrs/config.hpp,
// parse_consume_config over TOML). Must never throw, crash or accept with an error message set.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 65536) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  edgecqrs::cli::consume_config cfg;
  std::string error;
  const bool ok = edgecqrs::cli::parse_consume_config(text, "fuzz.toml", cfg, error);
  if (!ok && error.empty()) std::abort();  // a refusal always says why
  return 0;
}

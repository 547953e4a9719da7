// The sub-commands of the `edgecqrs` CLI. Each registers itself on the app and returns the
// exit status through `status` when it ran.
#pragma once

#include <CLI/CLI.hpp>

namespace edgecqrs::cli {

struct run_state {
  int status = 0;
  bool quiet = false;
};

void register_decode(CLI::App& app, run_state& st);

}  // namespace edgecqrs::cli

// The sub-commands of the `edgecqrs` CLI. Each registers itself on the app and returns the
// exit status through `status` when it ran.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace edgecqrs::cli {

struct run_state {
  int status = 0;
  bool quiet = false;
};

void register_decode(CLI::App& app, run_state& st);
void register_status(CLI::App& app, run_state& st);
void register_dump(CLI::App& app, run_state& st);  // dump and load
void register_diff(CLI::App& app, run_state& st);  // diff-master, diff-replica, diff-sync
void register_dead_letters(CLI::App& app, run_state& st);
void register_resync(CLI::App& app, run_state& st);
#ifdef EDGECQRS_HAVE_PAHO
void register_consume(CLI::App& app, run_state& st);  // consume and sync
// decode --subscribe: prints messages of `topic` live until SIGINT/SIGTERM or `count` messages.
int decode_subscribe(const std::string& url, const std::string& topic, std::uint64_t count,
                     bool quiet);
#endif

}  // namespace edgecqrs::cli

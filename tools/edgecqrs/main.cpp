// `edgecqrs`: operations CLI for masters and replicas (see README "Operations").
#include <cstdio>

#include "commands.hpp"
#include "edgecqrs/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{"edgecqrs: SQLite -> MQTT CQRS replication, operations tool"};
  app.require_subcommand(1);
  // Global flags are accepted before or after the sub-command (`edgecqrs consume ... --quiet`,
  // as the shipped systemd unit writes it): sub-commands made after this inherit it.
  app.fallthrough();
  edgecqrs::cli::run_state st;
  app.add_flag("-q,--quiet", st.quiet, "No progress display");
  app.set_version_flag("--version", std::string("edgecqrs ") + edgecqrs::version());
  edgecqrs::cli::register_status(app, st);
  edgecqrs::cli::register_dump(app, st);
  edgecqrs::cli::register_diff(app, st);
  edgecqrs::cli::register_dead_letters(app, st);
  edgecqrs::cli::register_resync(app, st);
  edgecqrs::cli::register_decode(app, st);
#ifdef EDGECQRS_HAVE_PAHO
  edgecqrs::cli::register_consume(app, st);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return st.status;
}

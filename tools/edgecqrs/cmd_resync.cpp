// `edgecqrs resync`: asks for a full re-sync of a replica's stream (replica::request_resync).
// The want is stored in the replica database; the replica daemon (`edgecqrs consume` or the
// application) sends the request and applies the session. With --authoritative the session is
// an operator's repair: the master's rows win over tombstones and higher versions, and rows the
// master lacks are removed (docs/replication.md §4).
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "common.hpp"

namespace edgecqrs::cli {
namespace {

struct opts {
  std::string config, db, cqrs_id;
  bool authoritative = false;
};

int run(const opts& o, const run_state& st) {
  const char* cmd = "resync";
  consume_config cfg;
  if (!load_config(cmd, o.config, cfg)) return 2;
  std::unique_ptr<replica> r;
  if (!open_replica(cmd, cfg, o.db, r)) return 2;
  if (auto ec = r->request_resync(o.cqrs_id, o.authoritative)) {
    errorf(cmd, "stream '%s': %s", printable(o.cqrs_id).c_str(), ec.message().c_str());
    return 1;
  }
  if (!st.quiet)
    std::fprintf(stderr,
                 "edgecqrs resync: %s re-sync of '%s' requested; the replica daemon asks the "
                 "master within its re-sync backoff and applies it (consume reports rows "
                 "overwritten, tombstones cleared and rows removed)\n",
                 o.authoritative ? "authoritative" : "full", printable(o.cqrs_id).c_str());
  return 0;
}

}  // namespace

void register_resync(CLI::App& app, run_state& st) {
  auto* c = app.add_subcommand("resync", "Ask a replica's daemon for a full re-sync of a stream");
  auto o = std::make_shared<opts>();
  c->add_option("--config", o->config, "Replica config (TOML)")->required();
  c->add_option("--db", o->db, "Replica database (default: the config's replica.database)");
  c->add_option("-c,--cqrs-id", o->cqrs_id, "The stream")->required();
  c->add_flag("--authoritative", o->authoritative,
              "The master's rows win over tombstones and higher replica versions, rows the "
              "master lacks are removed, the checkpoint follows the master even backwards");
  c->callback([&st, o] { st.status = run(*o, st); });
}

}  // namespace edgecqrs::cli

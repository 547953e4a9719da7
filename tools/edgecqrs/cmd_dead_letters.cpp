// `edgecqrs dead-letters list|retry|purge`: the replica's dead letters, filtered by CQRS_ID and
// age. retry re-runs each through the replica's normal pipeline (replica::retry_dead_letter).
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "io.hpp"

namespace edgecqrs::cli {
namespace {

struct opts {
  std::string config, db, cqrs_id, older_than;
  bool json = false;
  std::size_t limit = 0;  // list: 0 = all
};

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Visits the dead letters matching the filters, oldest first, a page at a time. The ids are
// collected per page before `fn` runs so retry/purge cannot disturb the paging.
template <class F>
std::error_code for_each_match(replica& r, const opts& o, std::int64_t cutoff_ms, F&& fn) {
  constexpr std::size_t page = 256;
  std::int64_t last_id = 0;
  std::size_t offset = 0;
  for (;;) {
    std::vector<dead_letter> batch;
    if (auto ec = r.list_dead_letters(batch, offset, page)) return ec;
    if (batch.empty()) return {};
    std::size_t removed = 0;
    for (auto& d : batch) {
      if (d.id <= last_id) continue;  // already seen (paging after removals)
      last_id = d.id;
      if (!o.cqrs_id.empty() && d.cqrs_id != o.cqrs_id) continue;
      if (cutoff_ms && d.at_ms > cutoff_ms) continue;
      bool gone = false;
      if (!fn(d, gone)) return {};
      if (gone) ++removed;
    }
    offset += batch.size() - removed;
    if (batch.size() < page) return {};
  }
}

std::string key_text(const std::vector<value>& key) {
  nlohmann::json k = nlohmann::json::array();
  for (const auto& v : key) k.push_back(value_to_json(v));
  return k.dump();
}

int run(const std::string& action, const opts& o, const run_state& st) {
  const std::string name = "dead-letters " + action;
  const char* cmd = name.c_str();
  consume_config cfg;
  if (!load_config(cmd, o.config, cfg)) return 2;
  std::int64_t cutoff = 0;
  if (!o.older_than.empty()) {
    std::int64_t age = 0;
    if (!parse_duration_ms(o.older_than, age)) {
      errorf(cmd, "--older-than '%s': expected a duration such as 90s, 15m, 2h or 7d",
             o.older_than.c_str());
      return 2;
    }
    cutoff = now_ms() - age;
  }
  std::unique_ptr<replica> r;
  if (!open_replica(cmd, cfg, o.db, r)) return 2;
  std::uint64_t matched = 0, ok = 0, failed = 0;
  progress prog(cmd, st.quiet || action == "list");
  std::error_code ec = for_each_match(*r, o, cutoff, [&](const dead_letter& d, bool& gone) {
    ++matched;
    if (action == "list") {
      if (o.json) {
        nlohmann::json j = {{"id", d.id},
                            {"at_ms", d.at_ms},
                            {"cqrs_id", d.cqrs_id},
                            {"topic", d.topic},
                            {"reason", d.reason.message()},
                            {"code", d.reason.value()},
                            {"detail", d.detail},
                            {"attempts", d.attempts},
                            {"bytes", d.raw.size()},
                            {"key", nlohmann::json::array()}};
        for (const auto& v : d.key) j["key"].push_back(value_to_json(v));
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%-8lld %-14lld %-20s %-12s %-32s %s%s%s\n", (long long)d.id,
                    (long long)d.at_ms, printable(d.cqrs_id).c_str(),
                    printable(key_text(d.key)).c_str(), d.reason.message().c_str(),
                    printable(d.detail).c_str(), d.attempts ? " attempts=" : "",
                    d.attempts ? std::to_string(d.attempts).c_str() : "");
      }
      return !o.limit || matched < o.limit;
    }
    std::error_code e = action == "retry" ? r->retry_dead_letter(d.id) : r->purge_dead_letter(d.id);
    if (e) {
      ++failed;
      if (action == "retry") {
        // It stays, with the new reason; list it to see why.
        if (!st.quiet)
          std::fprintf(stderr, "edgecqrs %s: id %lld (%s): still failing: %s\n", cmd,
                       (long long)d.id, printable(d.cqrs_id).c_str(), e.message().c_str());
      } else {
        errorf(cmd, "id %lld: %s", (long long)d.id, e.message().c_str());
      }
    } else {
      ++ok;
      gone = true;
    }
    prog.update(matched);
    return true;
  });
  prog.done();
  if (ec) {
    errorf(cmd, "%s", ec.message().c_str());
    return 1;
  }
  if (action == "list") {
    if (!o.json && !st.quiet)
      std::fprintf(stderr, "edgecqrs %s: %llu dead letters\n", cmd, (unsigned long long)matched);
    return 0;
  }
  if (!st.quiet || failed)
    std::fprintf(stderr, "edgecqrs %s: %llu matched, %llu %s, %llu failed\n", cmd,
                 (unsigned long long)matched, (unsigned long long)ok,
                 action == "retry" ? "applied" : "purged", (unsigned long long)failed);
  return failed ? 1 : 0;
}

}  // namespace

void register_dead_letters(CLI::App& app, run_state& st) {
  auto* c = app.add_subcommand("dead-letters", "List, retry or purge a replica's dead letters");
  c->require_subcommand(1);
  for (const char* action : {"list", "retry", "purge"}) {
    const char* help = std::string(action) == "list" ? "Print dead letters, oldest first"
                       : std::string(action) == "retry"
                           ? "Re-apply dead letters through the replica's normal path"
                           : "Delete dead letters";
    auto* s = c->add_subcommand(action, help);
    auto o = std::make_shared<opts>();
    s->add_option("--config", o->config, "Replica config (TOML)")->required();
    s->add_option("--db", o->db, "Replica database (default: the config's replica.database)");
    s->add_option("-c,--cqrs-id", o->cqrs_id, "Only this stream");
    s->add_option("--older-than", o->older_than, "Only those older than this (90s, 15m, 2h, 7d)");
    if (std::string(action) == "list") {
      s->add_flag("--json", o->json, "One JSON object per line");
      s->add_option("-n,--limit", o->limit, "At most this many (0: all)");
    }
    std::string a = action;
    s->callback([&st, o, a] { st.status = run(a, *o, st); });
  }
}

}  // namespace edgecqrs::cli

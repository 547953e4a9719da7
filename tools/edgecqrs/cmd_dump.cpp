// `edgecqrs dump` (master database -> CBOR sequence file) and `edgecqrs load` (file -> replica
// database through the replica's normal version rules). File format: RFC 8742 sequence,
// ["edgecqrs-dump", 1, schema-message] then sync messages (docs/operations.md).
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "io.hpp"

namespace edgecqrs::cli {
namespace {

struct dump_opts {
  master_target target;
  std::string where;
  std::vector<std::string> params;
  std::string output;
};

int run_dump(const dump_opts& o, const run_state& st) {
  const char* cmd = "dump";
  std::unique_ptr<master> m;
  if (!open_master(cmd, o.target, m)) return 2;
  std::vector<sql_param> params;
  for (const auto& p : o.params) params.push_back(parse_param(p));
  const std::string path = o.output == "-" ? "/dev/stdout" : o.output;
  std::size_t rows = 0;
  if (auto ec = m->dump(o.target.cqrs_id, path, o.where, params, &rows)) {
    std::string detail = m->last_error_message();
    errorf(cmd, "%s: %s%s%s", o.output.c_str(), ec.message().c_str(), detail.empty() ? "" : ": ",
           detail.c_str());
    return 1;
  }
  if (!st.quiet)
    std::fprintf(stderr, "edgecqrs dump: %zu rows of '%s' written to %s\n", rows,
                 printable(o.target.cqrs_id).c_str(), printable(o.output).c_str());
  return 0;
}

struct load_opts {
  std::string input = "-";
  std::string db;
  std::string config;
  bool clear = false;
};

// Empties the local table and forgets the stream's row versions and tombstones, so the load
// starts from nothing (the replica's --clear).
bool clear_stream(const char* cmd, const std::string& path, const table_config& t) {
  db_handle h;
  if (!open_db(cmd, path, false, h)) return false;
  std::string sql =
      "BEGIN IMMEDIATE; DELETE FROM " + quote_ident(t.table) +
      "; DELETE FROM edgecqrs_r_rows WHERE sid IN (SELECT sid FROM edgecqrs_r_streams "
      "WHERE cqrs_id=" +
      "'" +
      [&] {
        std::string e;
        for (char c : t.cqrs_id) e += c == '\'' ? std::string("''") : std::string(1, c);
        return e;
      }() +
      "'); COMMIT;";
  char* err = nullptr;
  if (sqlite3_exec(h.db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    errorf(cmd, "%s: --clear of table '%s': %s", path.c_str(), t.table.c_str(),
           err ? err : "failed");
    sqlite3_free(err);
    sqlite3_exec(h.db, "ROLLBACK", nullptr, nullptr, nullptr);
    return false;
  }
  return true;
}

int run_load(const load_opts& o, const run_state& st) {
  const char* cmd = "load";
  consume_config cfg;
  if (!load_config(cmd, o.config, cfg)) return 2;
  const std::string db_path = o.db.empty() ? cfg.database : o.db;
  decode_limits limits;
  cbor_seq_reader in(limits.max_message_bytes + 64);
  if (auto ec = in.open(o.input)) {
    errorf(cmd, "%s: cannot read: %s", o.input.c_str(), ec.message().c_str());
    return 2;
  }
  const std::uint8_t* item = nullptr;
  std::size_t len = 0;
  std::uint64_t off = 0;
  std::error_code ec;
  int r = in.next(item, len, off, ec);
  const std::uint8_t* sb = nullptr;
  std::size_t sn = 0;
  schema sch;
  if (r <= 0 || !dump_header_schema(item, len, sb, sn) || decode_schema(sb, sn, sch, limits)) {
    errorf(cmd,
           "%s: item 0 at byte 0: not an edgecqrs dump (expected the header [\"edgecqrs-dump\", 1, "
           "schema])%s%s",
           o.input.c_str(), r < 0 ? ": " : "", r < 0 ? ec.message().c_str() : "");
    return 1;
  }
  const table_config* tc = find_table(cfg, sch.cqrs_id);
  if (!tc) {
    errorf(cmd, "%s: the dump is of CQRS_ID '%s', which %s does not list in a [[table]]",
           o.input.c_str(), sch.cqrs_id.c_str(), o.config.c_str());
    return 2;
  }
  std::unique_ptr<replica> rep;
  if (!open_replica(cmd, cfg, o.db, rep)) return 2;
  if (o.clear && !clear_stream(cmd, db_path, *tc)) return 1;
  const std::string schema_topic = cfg.topic_prefix + "/v1/s/" + sch.cqrs_id;
  const std::string direct_topic = cfg.topic_prefix + "/v1/d/" + cfg.name + "/" + sch.cqrs_id;
  if (auto e = rep->on_message(schema_topic, sb, sn)) {
    std::string detail = rep->last_error();
    errorf(cmd, "%s: the dump's schema is refused by table '%s': %s%s%s", o.input.c_str(),
           tc->table.c_str(), e.message().c_str(), detail.empty() ? "" : ": ", detail.c_str());
    return 1;
  }
  const replica_stats before = rep->stats();
  progress prog("edgecqrs load", st.quiet);
  std::uint64_t index = 1, rows = 0, bad = 0, messages = 0;
  while ((r = in.next(item, len, off, ec)) == 1) {
    message m;
    if (auto e = decode_message(item, len, m, limits)) {
      errorf(cmd, "%s: item %llu at byte %llu: %s (skipped)", o.input.c_str(),
             (unsigned long long)index, (unsigned long long)off, e.message().c_str());
      ++bad;
    } else if (m.first_seq != 0 || m.schema_tag != sch.schema_tag) {
      errorf(cmd, "%s: item %llu at byte %llu: not a sync message of the dump's schema (skipped)",
             o.input.c_str(), (unsigned long long)index, (unsigned long long)off);
      ++bad;
    } else if (auto e2 = rep->on_message(direct_topic, item, len)) {
      errorf(cmd, "%s: item %llu at byte %llu: %s (kept as a dead letter)", o.input.c_str(),
             (unsigned long long)index, (unsigned long long)off, e2.message().c_str());
      ++bad;
    } else {
      rows += m.events.size();
      ++messages;
    }
    ++index;
    prog.update(rows);
  }
  prog.done();
  if (r < 0) {
    errorf(cmd, "%s: item %llu at byte %llu: %s (cannot find the next item; stopped)",
           o.input.c_str(), (unsigned long long)index, (unsigned long long)off,
           ec.message().c_str());
    ++bad;
  }
  const replica_stats after = rep->stats();
  std::fprintf(stderr,
               "edgecqrs load: %s -> %s: %llu rows in %llu messages; applied %llu, stale %llu, "
               "duplicate %llu, bad records %llu\n",
               sch.cqrs_id.c_str(), tc->table.c_str(), (unsigned long long)rows,
               (unsigned long long)messages,
               (unsigned long long)(after.events_applied - before.events_applied),
               (unsigned long long)(after.skipped_stale - before.skipped_stale),
               (unsigned long long)(after.duplicates - before.duplicates), (unsigned long long)bad);
  return bad ? 1 : 0;
}

}  // namespace

void register_dump(CLI::App& app, run_state& st) {
  auto* c = app.add_subcommand("dump", "Write a master table as a CBOR sequence dump file");
  auto o = std::make_shared<dump_opts>();
  c->add_option("--db", o->target.db_path, "Master SQLite database")->required();
  c->add_option("-c,--cqrs-id", o->target.cqrs_id, "Stream to dump")->required();
  c->add_option("--table", o->target.table, "Master table of the stream (default: the CQRS_ID)");
  c->add_option("--columns", o->target.columns,
                "Columns sent (default: all), as the master registers them")
      ->delimiter(',');
  c->add_option("-w,--where", o->where, "SQL expression on the table's columns selecting rows");
  c->add_option("-p,--param", o->params,
                "Bound value of ?1, ?2... in --where (repeat; text:X forces text)");
  c->add_option("-o,--output", o->output, "Output file, '-' for stdout")->required();
  c->callback([&st, o] { st.status = run_dump(*o, st); });

  auto* l =
      app.add_subcommand("load", "Apply a dump file to a replica database (normal version rules)");
  auto lo = std::make_shared<load_opts>();
  l->add_option("-i,--input", lo->input, "Dump file, '-' for stdin")->capture_default_str();
  l->add_option("--config", lo->config, "Replica config (TOML): name, tables, mapping")->required();
  l->add_option("--db", lo->db, "Replica database (default: the config's replica.database)");
  l->add_flag("--clear", lo->clear, "Empty the stream's local table and versions first");
  l->callback([&st, lo] { st.status = run_load(*lo, st); });
}

}  // namespace edgecqrs::cli

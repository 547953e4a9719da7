// Diff and repair as a pipeline across machines (like django-cqrs cqrs_diff_master |
// cqrs_diff_replica | cqrs_diff_sync, and the deleted-rows direction):
//   edgecqrs diff-master  --db master.db --cqrs-id X             > keys and versions (JSON lines)
//   edgecqrs diff-replica --db replica.db --config r.toml        < that; > what the replica lacks
//   edgecqrs diff-sync    --db master.db [--to REPLICA]          < that; queues sync events
// Line format (docs/operations.md): a header {"edgecqrs_diff":1,...}, one JSON array per row,
// and a trailer {"end":N}; a stream without its trailer is incomplete and is never acted on
// destructively. Every side streams in batches: memory does not grow with the table (the
// replica keeps the master's keys in a temporary SQLite table, which spills to disk).
#include <cctype>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "edgecqrs/codec.hpp"
#include "io.hpp"
#include "key_codec.hpp"

namespace edgecqrs::cli {
namespace {

constexpr int diff_format = 1;

// The master's key of a row in edgecqrs_version (lib/src/master/master.cpp encode_key): the
// CBOR items of the primary-key values, concatenated; TEXT/BLOB lengths >= 24 use the 8-byte
// length form. A drift from the library shows as every row at version 1 (the diff tests catch
// that: their changed rows have higher versions).
std::string master_key(const std::vector<value>& pk) {
  std::string key;
  for (const value& v : pk) {
    if (v.type() == value_type::text || v.type() == value_type::blob) {
      std::uint8_t major = v.type() == value_type::text ? 0x60 : 0x40;
      std::uint64_t len = v.bytes().size();
      if (len < 24) {
        key += static_cast<char>(major | len);
      } else {
        key += static_cast<char>(major | 27);
        for (int b = 7; b >= 0; --b) key += static_cast<char>((len >> (8 * b)) & 0xff);
      }
      key.append(v.bytes());
      continue;
    }
    std::uint8_t tmp[16];
    std::size_t w = 0;
    if (encode_value(v.view(), tmp, sizeof tmp, w)) w = 0;
    key.append(reinterpret_cast<const char*>(tmp), w);
  }
  return key;
}

bool primary_key(const char* cmd, sqlite3* db, const std::string& table,
                 std::vector<std::string>& pk) {
  stmt q;
  if (!q.prepare(db, "SELECT name FROM pragma_table_info(?1) WHERE pk>0 ORDER BY pk")) {
    errorf(cmd, "table_info: %s", sqlite3_errmsg(db));
    return false;
  }
  sqlite3_bind_text(q.get(), 1, table.c_str(), -1, SQLITE_TRANSIENT);
  while (sqlite3_step(q.get()) == SQLITE_ROW)
    pk.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0)));
  if (pk.empty()) {
    errorf(cmd, "table '%s': no such table, or it has no declared PRIMARY KEY", table.c_str());
    return false;
  }
  return true;
}

std::string join_cols(const std::vector<std::string>& cols, const std::string& prefix = "") {
  std::string s;
  for (std::size_t i = 0; i < cols.size(); ++i) s += (i ? "," : "") + prefix + quote_ident(cols[i]);
  return s;
}

// ------------------------------------------------------------------ diff-master

struct master_opts {
  std::string db, cqrs_id, table, where;
  std::vector<std::string> params;
};

int run_diff_master(const master_opts& o, const run_state& st) {
  const char* cmd = "diff-master";
  db_handle h;
  if (!open_db(cmd, o.db, true, h)) return 2;
  master_target def;
  def.db_path = o.db;
  def.cqrs_id = o.cqrs_id;
  def.table = o.table;
  if (!registered_definition(cmd, h.db, def)) return 2;  // its table; refuses a filter callback
  const std::string table = def.table.empty() ? o.cqrs_id : def.table;
  std::vector<std::string> pk;
  if (!primary_key(cmd, h.db, table, pk)) return 2;
  if (sqlite3_exec(h.db, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
    errorf(cmd, "%s: %s", o.db.c_str(), sqlite3_errmsg(h.db));
    return 1;
  }
  std::int64_t stream = -1;
  stmt ver;
  if (has_table(h.db, "edgecqrs_stream") && has_table(h.db, "edgecqrs_version")) {
    stmt q;
    if (q.prepare(h.db, "SELECT rowid FROM edgecqrs_stream WHERE cqrs_id=?1")) {
      sqlite3_bind_text(q.get(), 1, o.cqrs_id.c_str(), -1, SQLITE_TRANSIENT);
      if (sqlite3_step(q.get()) == SQLITE_ROW) stream = sqlite3_column_int64(q.get(), 0);
    }
    if (!ver.prepare(h.db, "SELECT version FROM edgecqrs_version WHERE stream=?1 AND key=?2")) {
      errorf(cmd, "%s: %s", o.db.c_str(), sqlite3_errmsg(h.db));
      return 1;
    }
  }
  std::string sql = "SELECT " + join_cols(pk) + " FROM " + quote_ident(table);
  if (!o.where.empty()) sql += " WHERE (" + o.where + ")";
  sql += " ORDER BY " + join_cols(pk);
  stmt rows;
  if (!rows.prepare(h.db, sql)) {
    errorf(cmd, "--where: %s", sqlite3_errmsg(h.db));
    return 2;
  }
  if (sqlite3_bind_parameter_count(rows.get()) != static_cast<int>(o.params.size())) {
    errorf(cmd, "--where takes %d parameters, %zu given", sqlite3_bind_parameter_count(rows.get()),
           o.params.size());
    return 2;
  }
  for (std::size_t i = 0; i < o.params.size(); ++i)
    bind_value(rows.get(), static_cast<int>(i + 1), parse_param(o.params[i]));
  nlohmann::json head = {
      {"edgecqrs_diff", diff_format}, {"side", "master"}, {"cqrs_id", o.cqrs_id}, {"pk", pk}};
  std::printf("%s\n", head.dump().c_str());
  progress prog("edgecqrs diff-master", st.quiet);
  std::uint64_t n = 0;
  std::vector<value> key(pk.size());
  int rc;
  while ((rc = sqlite3_step(rows.get())) == SQLITE_ROW) {
    nlohmann::json k = nlohmann::json::array();
    for (std::size_t i = 0; i < pk.size(); ++i) {
      key[i] = column_value(rows.get(), static_cast<int>(i));
      k.push_back(value_to_json(key[i]));
    }
    // A row never captured (older than its registration) is version 1, as the master syncs it.
    std::int64_t v = 1;
    if (stream >= 0) {
      std::string mk = master_key(key);
      sqlite3_reset(ver.get());
      sqlite3_bind_int64(ver.get(), 1, stream);
      sqlite3_bind_blob(ver.get(), 2, mk.data(), static_cast<int>(mk.size()), SQLITE_TRANSIENT);
      if (sqlite3_step(ver.get()) == SQLITE_ROW) v = sqlite3_column_int64(ver.get(), 0);
    }
    std::printf("%s\n", nlohmann::json::array({k, v}).dump().c_str());
    prog.update(++n);
  }
  prog.done();
  if (rc != SQLITE_DONE) {
    errorf(cmd, "%s: reading '%s': %s", o.db.c_str(), table.c_str(), sqlite3_errmsg(h.db));
    return 1;
  }
  sqlite3_exec(h.db, "COMMIT", nullptr, nullptr, nullptr);
  std::printf("%s\n", nlohmann::json{{"end", n}}.dump().c_str());
  if (std::fflush(stdout) != 0) {
    errorf(cmd, "writing stdout failed");
    return 1;
  }
  return 0;
}

// Reads the header line of a diff stream.
bool read_header(const char* cmd, std::istream& in, nlohmann::json& head,
                 std::vector<std::string>& pk) {
  std::string line;
  if (!std::getline(in, line)) {
    errorf(cmd, "stdin: line 1: empty input (expected a diff header)");
    return false;
  }
  head = nlohmann::json::parse(line, nullptr, false);
  if (head.is_discarded() || !head.is_object() || !head.contains("edgecqrs_diff") ||
      head["edgecqrs_diff"] != diff_format || !head.contains("cqrs_id") ||
      !head["cqrs_id"].is_string() || !head.contains("pk") || !head["pk"].is_array() ||
      head["pk"].empty()) {
    errorf(cmd,
           "stdin: line 1: not an edgecqrs diff header (expected "
           "{\"edgecqrs_diff\":%d,\"cqrs_id\":..,\"pk\":[..]})",
           diff_format);
    return false;
  }
  for (const auto& c : head["pk"]) {
    if (!c.is_string()) {
      errorf(cmd, "stdin: line 1: pk: column names must be strings");
      return false;
    }
    pk.push_back(c.get<std::string>());
  }
  return true;
}

bool parse_key(const nlohmann::json& j, std::size_t npk, std::vector<value>& key) {
  if (!j.is_array() || j.size() != npk) return false;
  key.resize(npk);
  for (std::size_t i = 0; i < npk; ++i)
    if (!json_to_value(j[i], key[i])) return false;
  return true;
}

// ------------------------------------------------------------------ diff-replica

struct replica_opts {
  std::string db, config;
  bool delete_missing = false;
};

bool exec(const char* cmd, sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    errorf(cmd, "%s", err ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    return false;
  }
  return true;
}

int run_diff_replica(const replica_opts& o, const run_state& st) {
  const char* cmd = "diff-replica";
  consume_config cfg;
  if (!load_config(cmd, o.config, cfg)) return 2;
  nlohmann::json head;
  std::vector<std::string> mpk;
  std::ios::sync_with_stdio(false);
  if (!read_header(cmd, std::cin, head, mpk)) return 1;
  const std::string cqrs_id = head["cqrs_id"].get<std::string>();
  const table_config* tc = find_table(cfg, cqrs_id);
  if (!tc) {
    errorf(cmd, "the diff is of CQRS_ID '%s', which %s does not list in a [[table]]",
           cqrs_id.c_str(), o.config.c_str());
    return 2;
  }
  // The master's key columns, mapped to local columns as the replica maps them.
  std::vector<std::string> lpk;
  for (const auto& c : mpk) {
    std::string local = c;
    for (const auto& [remote, loc] : tc->mapping)
      if (remote == c) local = loc;
    if (local.empty()) {
      errorf(cmd, "%s: table '%s': the key column '%s' is mapped to \"\" (dropped)",
             o.config.c_str(), tc->table.c_str(), c.c_str());
      return 2;
    }
    lpk.push_back(local);
  }
  const std::string path = o.db.empty() ? cfg.database : o.db;
  db_handle h;
  if (!open_db(cmd, path, !o.delete_missing, h)) return 2;
  if (!has_table(h.db, "edgecqrs_r_rows") || !has_table(h.db, "edgecqrs_r_streams")) {
    errorf(cmd, "%s: not an edgecqrs replica database (no edgecqrs_r_rows table)", path.c_str());
    return 2;
  }
  std::int64_t sid = -1;
  {
    stmt q;
    if (q.prepare(h.db, "SELECT sid FROM edgecqrs_r_streams WHERE cqrs_id=?1")) {
      sqlite3_bind_text(q.get(), 1, cqrs_id.c_str(), -1, SQLITE_TRANSIENT);
      if (sqlite3_step(q.get()) == SQLITE_ROW) sid = sqlite3_column_int64(q.get(), 0);
    }
  }
  const std::size_t npk = mpk.size();
  // The key columns take the local columns' declared types: with the same affinity on both
  // sides the joins below use the indexes (otherwise every probe is a full scan).
  std::vector<std::string> ktype(npk);
  {
    stmt q;
    if (!q.prepare(h.db, "SELECT type FROM pragma_table_info(?1) WHERE name=?2")) {
      errorf(cmd, "%s", sqlite3_errmsg(h.db));
      return 1;
    }
    for (std::size_t i = 0; i < npk; ++i) {
      sqlite3_reset(q.get());
      sqlite3_bind_text(q.get(), 1, tc->table.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(q.get(), 2, lpk[i].c_str(), -1, SQLITE_TRANSIENT);
      if (sqlite3_step(q.get()) != SQLITE_ROW) {
        errorf(cmd, "%s: table '%s' has no key column '%s' (master key column '%s')", path.c_str(),
               tc->table.c_str(), lpk[i].c_str(), mpk[i].c_str());
        return 2;
      }
      // Only the affinity matters: keep letters, digits, spaces, parentheses, commas.
      for (const char* c = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0)); *c; ++c)
        if (std::isalnum(static_cast<unsigned char>(*c)) || *c == ' ' || *c == '(' || *c == ')' ||
            *c == ',')
          ktype[i] += *c;
    }
  }
  std::string kcols, kdecl, kq, kmatch;
  for (std::size_t i = 0; i < npk; ++i) {
    kdecl += (i ? ",k" : "k") + std::to_string(i) + " " + ktype[i];
    kcols += (i ? ",k" : "k") + std::to_string(i);
    kq += i ? ",?" : "?";
    kmatch += (i ? " AND m.k" : "m.k") + std::to_string(i) + "=l." + quote_ident(lpk[i]);
  }
  // The master's keys go into a temporary table (on disk beyond the page cache): bounded memory
  // and set operations in SQL, whatever the key order of either side.
  if (!exec(cmd, h.db, "PRAGMA temp_store=FILE") ||
      !exec(cmd, h.db,
            "CREATE TEMP TABLE diff_m(" + kdecl +
                ", key BLOB PRIMARY KEY, version INTEGER NOT NULL)") ||
      !exec(cmd, h.db, "CREATE INDEX temp.diff_m_k ON diff_m(" + kcols + ")"))
    return 1;
  stmt ins;
  if (!ins.prepare(h.db, "INSERT OR REPLACE INTO temp.diff_m(" + kcols + ",key,version) VALUES(" +
                             kq + ",?,?)")) {
    errorf(cmd, "%s", sqlite3_errmsg(h.db));
    return 1;
  }
  progress prog("edgecqrs diff-replica: master keys", st.quiet);
  std::string line;
  std::uint64_t lineno = 1, n = 0;
  bool ended = false;
  std::vector<value> key;
  exec(cmd, h.db, "BEGIN");
  while (std::getline(std::cin, line)) {
    ++lineno;
    if (ended) {
      errorf(cmd, "stdin: line %llu: data after the end marker", (unsigned long long)lineno);
      return 1;
    }
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("end") && j["end"].is_number_unsigned()) {
      if (j["end"].get<std::uint64_t>() != n) {
        errorf(cmd, "stdin: line %llu: end marker counts %llu rows, %llu received",
               (unsigned long long)lineno, (unsigned long long)j["end"].get<std::uint64_t>(),
               (unsigned long long)n);
        return 1;
      }
      ended = true;
      continue;
    }
    if (j.is_discarded() || !j.is_array() || j.size() != 2 || !parse_key(j[0], npk, key) ||
        !j[1].is_number_integer()) {
      errorf(cmd, "stdin: line %llu: expected [[key values...], version] with %zu key values",
             (unsigned long long)lineno, npk);
      return 1;
    }
    std::string rk;
    for (const auto& v : key) replica_detail::append_key(rk, v);
    sqlite3_reset(ins.get());
    for (std::size_t i = 0; i < npk; ++i) bind_value(ins.get(), static_cast<int>(i + 1), key[i]);
    sqlite3_bind_blob(ins.get(), static_cast<int>(npk + 1), rk.data(), static_cast<int>(rk.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(ins.get(), static_cast<int>(npk + 2), j[1].get<std::int64_t>());
    if (sqlite3_step(ins.get()) != SQLITE_DONE) {
      errorf(cmd, "temporary table: %s", sqlite3_errmsg(h.db));
      return 1;
    }
    if (++n % 10000 == 0 && (!exec(cmd, h.db, "COMMIT") || !exec(cmd, h.db, "BEGIN"))) return 1;
    prog.update(n);
  }
  if (!exec(cmd, h.db, "COMMIT")) return 1;
  prog.done();
  if (!ended) {
    errorf(cmd,
           "stdin: ended after line %llu without the end marker {\"end\":N}: the master's "
           "listing is incomplete (did diff-master fail?)",
           (unsigned long long)lineno);
    return 1;
  }
  head["side"] = "replica";
  std::printf("%s\n", head.dump().c_str());
  const std::string ltable = quote_ident(tc->table);
  std::uint64_t out_sync = 0, out_delete = 0, deleted = 0;
  // 1. Rows the master has that the replica lacks, or holds at another version.
  {
    std::string sql = "SELECT ";
    for (std::size_t i = 0; i < npk; ++i) sql += "m.k" + std::to_string(i) + ",";
    sql += " m.version, r.version, r.deleted, EXISTS(SELECT 1 FROM " + ltable + " l WHERE " +
           kmatch + ") FROM temp.diff_m m LEFT JOIN edgecqrs_r_rows r ON r.sid=?1 AND r.key=m.key";
    stmt q;
    if (!q.prepare(h.db, sql)) {
      errorf(cmd, "table '%s': %s", tc->table.c_str(), sqlite3_errmsg(h.db));
      return 2;
    }
    sqlite3_bind_int64(q.get(), 1, sid);
    int rc;
    const int c = static_cast<int>(npk);
    while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
      std::int64_t mv = sqlite3_column_int64(q.get(), c);
      bool has_r = sqlite3_column_type(q.get(), c + 1) != SQLITE_NULL;
      std::int64_t rv = sqlite3_column_int64(q.get(), c + 1);
      bool tomb = has_r && sqlite3_column_int64(q.get(), c + 2) != 0;
      bool local = sqlite3_column_int64(q.get(), c + 3) != 0;
      const char* reason = nullptr;
      if (!local)
        reason = tomb ? "deleted" : "missing";
      else if (!has_r)
        reason = "unversioned";
      else if (tomb)
        reason = "deleted";
      else if (rv < mv)
        reason = "stale";
      else if (rv > mv)
        reason = "newer";
      if (!reason) continue;
      nlohmann::json k = nlohmann::json::array();
      for (int i = 0; i < c; ++i) k.push_back(value_to_json(column_value(q.get(), i)));
      nlohmann::json line_out = {{"op", "sync"},
                                 {"key", k},
                                 {"master_version", mv},
                                 {"replica_version", has_r ? nlohmann::json(rv) : nlohmann::json()},
                                 {"reason", reason}};
      std::printf("%s\n", line_out.dump().c_str());
      ++out_sync;
    }
    if (rc != SQLITE_DONE) {
      errorf(cmd, "%s: %s", path.c_str(), sqlite3_errmsg(h.db));
      return 1;
    }
  }
  // 2. Rows the replica has that the master no longer has.
  {
    std::string sel = "SELECT " + join_cols(lpk, "l.") + " FROM " + ltable +
                      " l WHERE NOT EXISTS (SELECT 1 FROM temp.diff_m m WHERE " + kmatch + ")";
    if (!exec(cmd, h.db, "CREATE TEMP TABLE diff_x AS " + sel)) return 1;
    stmt q;
    if (!q.prepare(h.db, "SELECT * FROM temp.diff_x")) {
      errorf(cmd, "%s", sqlite3_errmsg(h.db));
      return 1;
    }
    int rc;
    while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
      nlohmann::json k = nlohmann::json::array();
      for (std::size_t i = 0; i < npk; ++i)
        k.push_back(value_to_json(column_value(q.get(), static_cast<int>(i))));
      std::printf("%s\n", nlohmann::json{{"op", "delete"}, {"key", k}}.dump().c_str());
      ++out_delete;
    }
    if (rc != SQLITE_DONE) {
      errorf(cmd, "%s: %s", path.c_str(), sqlite3_errmsg(h.db));
      return 1;
    }
  }
  // --delete-missing: remove them as a versioned delete would: the local row goes and the
  // stream's row record becomes a tombstone (its version kept), so a late, older save of the
  // key cannot bring it back; tombstones are pruned by the replica's normal retention.
  if (o.delete_missing && out_delete) {
    std::string where;
    for (std::size_t i = 0; i < npk; ++i)
      where += (i ? " AND " : "") + quote_ident(lpk[i]) + "=?" + std::to_string(i + 1);
    stmt del, tomb, q;
    if (!del.prepare(h.db, "DELETE FROM " + ltable + " WHERE " + where) ||
        !tomb.prepare(
            h.db,
            "INSERT INTO edgecqrs_r_rows(sid,key,version,deleted,seq,session,at_ms) "
            "VALUES(?1,?2,0,1,0,0,?3) ON CONFLICT(sid,key) DO UPDATE SET deleted=1, at_ms=?3") ||
        !q.prepare(h.db, "SELECT * FROM temp.diff_x")) {
      errorf(cmd, "%s", sqlite3_errmsg(h.db));
      return 1;
    }
    const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    progress dprog("edgecqrs diff-replica: deleting", st.quiet);
    if (!exec(cmd, h.db, "BEGIN IMMEDIATE")) return 1;
    int rc;
    while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
      std::string rk;
      sqlite3_reset(del.get());
      for (std::size_t i = 0; i < npk; ++i) {
        value v = column_value(q.get(), static_cast<int>(i));
        bind_value(del.get(), static_cast<int>(i + 1), v);
        replica_detail::append_key(rk, v);
      }
      if (sqlite3_step(del.get()) != SQLITE_DONE) {
        errorf(cmd, "%s: delete from '%s': %s", path.c_str(), tc->table.c_str(),
               sqlite3_errmsg(h.db));
        exec(cmd, h.db, "ROLLBACK");
        return 1;
      }
      if (sid >= 0) {
        sqlite3_reset(tomb.get());
        sqlite3_bind_int64(tomb.get(), 1, sid);
        sqlite3_bind_blob(tomb.get(), 2, rk.data(), static_cast<int>(rk.size()), SQLITE_TRANSIENT);
        sqlite3_bind_int64(tomb.get(), 3, now);
        if (sqlite3_step(tomb.get()) != SQLITE_DONE) {
          errorf(cmd, "%s: tombstone: %s", path.c_str(), sqlite3_errmsg(h.db));
          exec(cmd, h.db, "ROLLBACK");
          return 1;
        }
      }
      if (++deleted % 1000 == 0 &&
          (!exec(cmd, h.db, "COMMIT") || !exec(cmd, h.db, "BEGIN IMMEDIATE")))
        return 1;
      dprog.update(deleted, out_delete);
    }
    if (rc != SQLITE_DONE || !exec(cmd, h.db, "COMMIT")) {
      errorf(cmd, "%s: %s", path.c_str(), sqlite3_errmsg(h.db));
      exec(cmd, h.db, "ROLLBACK");
      return 1;
    }
  }
  std::printf("%s\n", nlohmann::json{{"end", out_sync + out_delete}}.dump().c_str());
  if (std::fflush(stdout) != 0) {
    errorf(cmd, "writing stdout failed");
    return 1;
  }
  if (!st.quiet)
    std::fprintf(
        stderr,
        "edgecqrs diff-replica: %s: %llu master rows; %llu to sync, %llu not on the master%s\n",
        printable(cqrs_id).c_str(), (unsigned long long)n, (unsigned long long)out_sync,
        (unsigned long long)out_delete,
        o.delete_missing ? (", " + std::to_string(deleted) + " deleted").c_str() : "");
  return 0;
}

// ------------------------------------------------------------------ diff-sync

struct sync_opts {
  std::string db, cqrs_id, table, to;
  std::vector<std::string> columns;
  std::size_t batch = 256;
};

int run_diff_sync(const sync_opts& o, const run_state& st) {
  const char* cmd = "diff-sync";
  nlohmann::json head;
  std::vector<std::string> pk;
  std::ios::sync_with_stdio(false);
  if (!read_header(cmd, std::cin, head, pk)) return 1;
  const std::string cqrs_id = head["cqrs_id"].get<std::string>();
  if (!o.cqrs_id.empty() && o.cqrs_id != cqrs_id) {
    errorf(cmd, "stdin: line 1: the diff is of CQRS_ID '%s', not '%s'", cqrs_id.c_str(),
           o.cqrs_id.c_str());
    return 2;
  }
  master_target t;
  t.db_path = o.db;
  t.cqrs_id = cqrs_id;
  t.table = o.table;
  t.columns = o.columns;
  std::unique_ptr<master> m;
  if (!open_master(cmd, t, m)) return 2;
  std::string one;
  for (std::size_t i = 0; i < pk.size(); ++i) one += (i ? " AND " : "") + quote_ident(pk[i]) + "=?";
  std::vector<sql_param> params;
  std::string where;
  std::uint64_t requested = 0, synced = 0, deletes = 0, lineno = 1;
  progress prog("edgecqrs diff-sync", st.quiet);
  auto flush = [&]() -> bool {
    if (params.empty()) return true;
    std::size_t n = 0;
    if (auto ec = m->sync(cqrs_id, where, params, o.to, &n)) {
      std::string d = m->last_error_message();
      errorf(cmd, "%s: sync of '%s': %s%s%s", o.db.c_str(), cqrs_id.c_str(), ec.message().c_str(),
             d.empty() ? "" : ": ", d.c_str());
      return false;
    }
    synced += n;
    params.clear();
    where.clear();
    prog.update(synced);
    return true;
  };
  std::string line;
  bool ended = false;
  std::vector<value> key;
  while (std::getline(std::cin, line)) {
    ++lineno;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("end")) {
      ended = true;
      break;
    }
    if (j.is_discarded() || !j.is_object() || !j.contains("op") || !j.contains("key") ||
        !parse_key(j["key"], pk.size(), key)) {
      errorf(cmd, "stdin: line %llu: expected {\"op\":\"sync\"|\"delete\",\"key\":[%zu values]}",
             (unsigned long long)lineno, pk.size());
      return 1;
    }
    if (j["op"] == "delete") {
      ++deletes;  // the replica removes those itself (diff-replica --delete-missing)
      continue;
    }
    if (j["op"] != "sync") {
      errorf(cmd, "stdin: line %llu: unknown op %s", (unsigned long long)lineno,
             j["op"].dump().c_str());
      return 1;
    }
    where += (where.empty() ? "(" : " OR (") + one + ")";
    for (auto& v : key) params.push_back(std::move(v));
    ++requested;
    if (requested % o.batch == 0 && !flush()) return 1;
  }
  if (!flush()) return 1;
  prog.done();
  if (!st.quiet)
    std::fprintf(stderr,
                 "edgecqrs diff-sync: %s: %llu rows queued as sync events%s%s (%llu requested, "
                 "%llu no longer on the master; %llu replica-only rows left to diff-replica "
                 "--delete-missing)\n",
                 printable(cqrs_id).c_str(), (unsigned long long)synced,
                 o.to.empty() ? "" : " to replica ", printable(o.to).c_str(),
                 (unsigned long long)requested, (unsigned long long)(requested - synced),
                 (unsigned long long)deletes);
  if (!ended) {
    errorf(cmd,
           "stdin: ended after line %llu without the end marker: the diff was incomplete "
           "(what was read is queued)",
           (unsigned long long)lineno);
    return 1;
  }
  return 0;
}

}  // namespace

void register_diff(CLI::App& app, run_state& st) {
  auto* dm = app.add_subcommand(
      "diff-master", "List a master table's keys and row versions (JSON lines) on stdout");
  auto mo = std::make_shared<master_opts>();
  dm->add_option("--db", mo->db, "Master SQLite database")->required();
  dm->add_option("-c,--cqrs-id", mo->cqrs_id, "Stream")->required();
  dm->add_option("--table", mo->table, "Master table of the stream (default: the CQRS_ID)");
  dm->add_option("-w,--where", mo->where, "SQL expression selecting the rows to compare");
  dm->add_option("-p,--param", mo->params, "Bound value of ?1, ?2... in --where (repeat)");
  dm->callback([&st, mo] { st.status = run_diff_master(*mo, st); });

  auto* dr = app.add_subcommand(
      "diff-replica",
      "Read diff-master's output on stdin; print the rows the replica lacks or has extra");
  auto ro = std::make_shared<replica_opts>();
  dr->add_option("--config", ro->config, "Replica config (TOML): tables and mapping")->required();
  dr->add_option("--db", ro->db, "Replica database (default: the config's replica.database)");
  dr->add_flag("--delete-missing", ro->delete_missing,
               "Delete the replica rows the master no longer has (versioned: tombstones)");
  dr->callback([&st, ro] { st.status = run_diff_replica(*ro, st); });

  auto* ds = app.add_subcommand(
      "diff-sync", "Read diff-replica's output on stdin; queue sync events on the master");
  auto so = std::make_shared<sync_opts>();
  ds->add_option("--db", so->db, "Master SQLite database")->required();
  ds->add_option("-c,--cqrs-id", so->cqrs_id, "Expected stream (default: the diff's)");
  ds->add_option("--table", so->table, "Master table of the stream (default: the CQRS_ID)");
  ds->add_option("--columns", so->columns,
                 "Columns sent (default: all), as the master registers them")
      ->delimiter(',');
  ds->add_option("--to", so->to, "Send to this replica only (its direct topic)");
  ds->add_option("-b,--batch", so->batch, "Keys per sync query")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  ds->callback([&st, so] { st.status = run_diff_sync(*so, st); });
}

}  // namespace edgecqrs::cli

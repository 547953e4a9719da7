// `edgecqrs status`: the state of a master or replica database (detected by its edgecqrs
// tables), read-only: outbox depth and oldest age, acknowledged sequence per stream, replica
// checkpoint and lag per stream, retries and dead letters. --json for machines.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "common.hpp"
#include "edgecqrs/codec.hpp"

namespace edgecqrs::cli {
namespace {

const char* const cmd = "status";

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t scalar(sqlite3* db, const std::string& sql, std::int64_t dflt = 0) {
  stmt q;
  if (!q.prepare(db, sql) || sqlite3_step(q.get()) != SQLITE_ROW ||
      sqlite3_column_type(q.get(), 0) == SQLITE_NULL)
    return dflt;
  return sqlite3_column_int64(q.get(), 0);
}

// The time of the oldest event in an outbox record body (one group: [t0, events...]), read by
// decoding it as a message; -1 when it carries no events (schema records) or cannot be read.
std::int64_t record_time_ms(std::uint32_t tag, const void* body, int size) {
  std::uint8_t head[32];
  std::size_t w = 0;
  if (encode_message_head(tag, 0, 1, false, head, sizeof head, w)) return -1;
  std::vector<std::uint8_t> buf(head, head + w);
  const auto* p = static_cast<const std::uint8_t*>(body);
  buf.insert(buf.end(), p, p + size);
  message m;
  if (decode_message(buf.data(), buf.size(), m) || m.events.empty()) return -1;
  std::int64_t t = m.events[0].updated_ms;
  for (const auto& e : m.events) t = std::min(t, e.updated_ms);
  return t;
}

int master_status(sqlite3* db, nlohmann::json& j) {
  j["role"] = "master";
  j["outbox_depth"] = scalar(db, "SELECT count(*) FROM edgecqrs_outbox WHERE acked=0");
  j["outbox_bytes"] =
      scalar(db, "SELECT coalesce(sum(length(body)),0) FROM edgecqrs_outbox WHERE acked=0");
  j["outbox_oldest_age_ms"] = nullptr;
  {
    stmt q;
    if (!q.prepare(db,
                   "SELECT body FROM edgecqrs_outbox WHERE acked=0 AND kind IN (0,1,3) ORDER BY id "
                   "LIMIT 1")) {
      errorf(cmd, "master tables: %s", sqlite3_errmsg(db));
      return 1;
    }
    if (sqlite3_step(q.get()) == SQLITE_ROW) {
      std::int64_t t =
          record_time_ms(0, sqlite3_column_blob(q.get(), 0), sqlite3_column_bytes(q.get(), 0));
      if (t >= 0) j["outbox_oldest_age_ms"] = std::max<std::int64_t>(0, now_ms() - t);
    }
  }
  nlohmann::json streams = nlohmann::json::array();
  stmt q;
  if (!q.prepare(
          db,
          // The stream row's next_seq is persisted lazily (at pruning); the outbox
          // holds the newer records, as the master reads it at registration.
          "SELECT s.cqrs_id, max(s.next_seq - 1, coalesce((SELECT max(first_seq + n_events - 1)"
          " FROM edgecqrs_outbox o WHERE o.stream=s.rowid AND o.kind=0), 0)),"
          " (SELECT min(first_seq) FROM edgecqrs_outbox o WHERE o.stream=s.rowid AND o.kind=0 AND "
          "o.acked=0),"
          " (SELECT count(*) FROM edgecqrs_outbox o WHERE o.stream=s.rowid AND o.acked=0),"
          " (SELECT count(*) FROM edgecqrs_version v WHERE v.stream=s.rowid)"
          " FROM edgecqrs_stream s ORDER BY s.cqrs_id")) {
    errorf(cmd, "master tables: %s", sqlite3_errmsg(db));
    return 1;
  }
  while (sqlite3_step(q.get()) == SQLITE_ROW) {
    nlohmann::json s;
    s["cqrs_id"] = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
    std::int64_t head = sqlite3_column_int64(q.get(), 1);
    s["head_seq"] = head;
    s["acked_seq"] = sqlite3_column_type(q.get(), 2) == SQLITE_NULL
                         ? head
                         : sqlite3_column_int64(q.get(), 2) - 1;
    s["pending_records"] = sqlite3_column_int64(q.get(), 3);
    s["versioned_rows"] = sqlite3_column_int64(q.get(), 4);
    streams.push_back(std::move(s));
  }
  j["streams"] = std::move(streams);
  return 0;
}

int replica_status(sqlite3* db, nlohmann::json& j) {
  j["role"] = "replica";
  j["dead_letters"] = scalar(db, "SELECT count(*) FROM edgecqrs_r_dead");
  j["pending_retries"] = scalar(db, "SELECT count(*) FROM edgecqrs_r_retries");
  nlohmann::json streams = nlohmann::json::array();
  stmt q;
  if (!q.prepare(db,
                 // A re-sync is pending while one is wanted (persisted want) or a session has
                 // started and not finished (resync_parts below finished_run = 2^62 + 1; the
                 // session id alone stays set after completion).
                 "SELECT s.cqrs_id, s.checkpoint, s.head,"
                 " s.resync_want <> 0 OR (s.resync_session <> 0 AND s.resync_parts <> "
                 "4611686018427387905),"
                 " (SELECT count(*) FROM edgecqrs_r_rows r WHERE r.sid=s.sid AND r.deleted=0),"
                 " (SELECT count(*) FROM edgecqrs_r_rows r WHERE r.sid=s.sid AND r.deleted<>0),"
                 " (SELECT count(*) FROM edgecqrs_r_dead d WHERE d.cqrs_id=s.cqrs_id),"
                 " (SELECT count(*) FROM edgecqrs_r_retries t WHERE t.sid=s.sid)"
                 " FROM edgecqrs_r_streams s ORDER BY s.cqrs_id")) {
    errorf(cmd, "replica tables: %s", sqlite3_errmsg(db));
    return 1;
  }
  while (sqlite3_step(q.get()) == SQLITE_ROW) {
    nlohmann::json s;
    s["cqrs_id"] = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
    std::int64_t cp = sqlite3_column_int64(q.get(), 1), head = sqlite3_column_int64(q.get(), 2);
    s["checkpoint"] = cp;
    s["head_seq"] = head;
    s["lag"] = head > cp ? head - cp : 0;
    s["resync_pending"] = sqlite3_column_int64(q.get(), 3) != 0;
    s["rows"] = sqlite3_column_int64(q.get(), 4);
    s["tombstones"] = sqlite3_column_int64(q.get(), 5);
    s["dead_letters"] = sqlite3_column_int64(q.get(), 6);
    s["pending_retries"] = sqlite3_column_int64(q.get(), 7);
    streams.push_back(std::move(s));
  }
  j["streams"] = std::move(streams);
  return 0;
}

void print_text(const nlohmann::json& j) {
  auto num = [](const nlohmann::json& v) { return v.is_null() ? std::string("-") : v.dump(); };
  auto text = [](const nlohmann::json& v) { return printable(v.get<std::string>()); };
  std::printf("database: %s\nrole: %s\n", text(j["database"]).c_str(),
              j["role"].get<std::string>().c_str());
  if (j["role"] == "master") {
    std::printf("outbox: %s records pending, %s bytes, oldest %s ms\n",
                num(j["outbox_depth"]).c_str(), num(j["outbox_bytes"]).c_str(),
                num(j["outbox_oldest_age_ms"]).c_str());
    // CHANGED: rows with a version entry, i.e. updated or deleted since their insert (a row
    // never changed since its insert is at version 1 and has none); not the table's row count.
    std::printf("%-24s %12s %12s %10s %12s\n", "CQRS_ID", "HEAD_SEQ", "ACKED_SEQ", "PENDING",
                "CHANGED");
    for (const auto& s : j["streams"])
      std::printf("%-24s %12s %12s %10s %12s\n", text(s["cqrs_id"]).c_str(),
                  num(s["head_seq"]).c_str(), num(s["acked_seq"]).c_str(),
                  num(s["pending_records"]).c_str(), num(s["versioned_rows"]).c_str());
  } else {
    std::printf("dead letters: %s\npending retries: %s\n", num(j["dead_letters"]).c_str(),
                num(j["pending_retries"]).c_str());
    std::printf("%-24s %12s %12s %8s %10s %10s %6s %8s\n", "CQRS_ID", "CHECKPOINT", "HEAD_SEQ",
                "LAG", "ROWS", "TOMBSTONES", "DEAD", "RESYNC");
    for (const auto& s : j["streams"])
      std::printf("%-24s %12s %12s %8s %10s %10s %6s %8s\n", text(s["cqrs_id"]).c_str(),
                  num(s["checkpoint"]).c_str(), num(s["head_seq"]).c_str(), num(s["lag"]).c_str(),
                  num(s["rows"]).c_str(), num(s["tombstones"]).c_str(),
                  num(s["dead_letters"]).c_str(),
                  s["resync_pending"].get<bool>() ? "pending" : "-");
  }
}

int run(const std::string& path, bool json) {
  db_handle h;
  if (!open_db(cmd, path, true, h)) return 2;
  nlohmann::json j;
  j["database"] = path;
  bool is_master = has_table(h.db, "edgecqrs_outbox") && has_table(h.db, "edgecqrs_stream");
  bool is_replica = has_table(h.db, "edgecqrs_r_streams");
  int rc;
  if (is_master && !is_replica)
    rc = master_status(h.db, j);
  else if (is_replica && !is_master)
    rc = replica_status(h.db, j);
  else if (is_master && is_replica) {
    // A device may be both; report both sides.
    nlohmann::json r;
    rc = master_status(h.db, j);
    if (!rc) rc = replica_status(h.db, r);
    j["role"] = "master";
    j["replica"] = std::move(r);
  } else {
    errorf(cmd, "%s: not an edgecqrs database (no edgecqrs_outbox or edgecqrs_r_streams table)",
           path.c_str());
    return 1;
  }
  if (rc) return rc;
  if (json)
    std::printf("%s\n", j.dump().c_str());
  else {
    print_text(j);
    if (j.contains("replica")) {
      j["replica"]["database"] = path;
      print_text(j["replica"]);
    }
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace

void register_status(CLI::App& app, run_state& st) {
  auto* c = app.add_subcommand(
      "status", "Outbox, stream and dead-letter state of a master or replica database");
  struct opts {
    std::string db;
    bool json = false;
  };
  auto o = std::make_shared<opts>();
  c->add_option("--db", o->db, "Master or replica SQLite database")->required();
  c->add_flag("--json", o->json, "One JSON object on stdout");
  c->callback([&st, o] { st.status = run(o->db, o->json); });
}

}  // namespace edgecqrs::cli

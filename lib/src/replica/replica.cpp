// The replica: decode -> validate against the master's schema -> apply in one transaction per
// message -> commit, with per-row versions, tombstones, stream checkpoints and gap repair,
// retries and dead letters. The protocol is docs/replication.md.
#include "edgecqrs/replica.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "replica/key_codec.hpp"
#include "sqlite_util.hpp"

namespace edgecqrs {

using detail::exec;
using detail::quote_ident;
using reset_guard = detail::statement_reset;
using detail::statement;

namespace {

constexpr std::size_t max_pending_controls = 64;
constexpr int max_replays_per_poll = 8;
constexpr int max_retries_per_poll = 64;
constexpr std::int64_t prune_interval_ms = 60000;
constexpr std::size_t max_schemas_per_stream = 32;
constexpr std::uint64_t broken_run = std::uint64_t{1} << 62;
constexpr std::uint64_t finished_run = broken_run + 1;
constexpr std::size_t max_skipped_sessions = 8;

const char* const schema_sql =
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_streams("
    " sid INTEGER PRIMARY KEY, cqrs_id TEXT UNIQUE NOT NULL, incarnation BLOB,"
    " checkpoint INTEGER NOT NULL DEFAULT 0, head INTEGER NOT NULL DEFAULT 0, seen BLOB,"
    " resync_session INTEGER NOT NULL DEFAULT 0, resync_parts INTEGER NOT NULL DEFAULT 0,"
    " resync_at_ms INTEGER NOT NULL DEFAULT 0, resync_done INTEGER NOT NULL DEFAULT 0,"
    " resync_done_upto INTEGER NOT NULL DEFAULT 0, resync_skip BLOB,"
    " resync_want INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_rows("
    " sid INTEGER NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, session INTEGER NOT NULL, at_ms INTEGER NOT NULL,"
    " PRIMARY KEY(sid, key)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_schemas("
    " sid INTEGER NOT NULL, tag INTEGER NOT NULL, incarnation BLOB NOT NULL, body BLOB NOT NULL,"
    " PRIMARY KEY(sid, tag));"
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_retries("
    " id INTEGER PRIMARY KEY, sid INTEGER NOT NULL, topic TEXT NOT NULL, key BLOB NOT NULL,"
    " body BLOB NOT NULL, attempts INTEGER NOT NULL, next_ms INTEGER NOT NULL,"
    " reason INTEGER NOT NULL, detail TEXT NOT NULL, first_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS edgecqrs_r_retries_due ON edgecqrs_r_retries(next_ms);"
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_dead("
    " id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, cqrs_id TEXT NOT NULL, topic TEXT NOT NULL,"
    " key BLOB NOT NULL, reason INTEGER NOT NULL, category TEXT NOT NULL, detail TEXT NOT NULL,"
    " attempts INTEGER NOT NULL, body BLOB NOT NULL);";

struct local_column {
  std::string name;
  std::string type;
  bool notnull = false;
  bool has_default = false;
  int pk = 0;  // 1-based position in the primary key, 0: not part of it
};

// Stream progress: persisted in edgecqrs_r_streams, changed only after a successful COMMIT.
struct progress {
  std::uint64_t checkpoint = 0;
  std::uint64_t head = 0;
  std::map<std::uint64_t, std::uint64_t> seen;  // applied ranges above the checkpoint: lo -> hi
  std::uint64_t resync_session = 0;
  std::uint64_t resync_parts = 0;
  // Re-sync ownership across replica objects (and processes) on one database
  // (docs/replication.md §4): when the running session last made progress (wall ms), how many
  // sessions completed and the upto_seq of the last one, the ids of competing sessions that are
  // ignored, and the lowest upto_seq a wanted re-sync must reach (0: none wanted, e.g. expired
  // stream messages were dead-lettered).
  std::int64_t resync_at_ms = 0;
  std::uint64_t resync_done = 0;
  std::uint64_t resync_done_upto = 0;
  std::vector<std::uint64_t> resync_skip;
  std::uint64_t resync_want = 0;
};

struct stream {
  std::int64_t sid = 0;
  std::string cqrs_id;
  replica_table_options opts;
  std::vector<local_column> local;
  bool has_incarnation = false;
  std::array<std::uint8_t, 16> incarnation{};
  progress prog;
  // Timers (memory only; restarted after a restart).
  bool gap_open = false;
  std::int64_t gap_since_ms = 0;
  std::int64_t next_replay_ms = 0;
  std::int64_t replay_backoff_ms = 0;
  bool resync_pending = false;
  std::int64_t next_resync_ms = 0;
  std::int64_t resync_backoff_ms = 0;
  // The pending request is satisfied by a session completed after it (prog.resync_done above
  // resync_done_mark) whose upto_seq reaches resync_min_upto.
  std::uint64_t resync_done_mark = 0;
  std::uint64_t resync_min_upto = 0;
  bool schema_wanted = false;
  std::int64_t next_schema_ms = 0;
  std::int64_t schema_backoff_ms = 0;
};

// A resolved schema for one stream: how its columns land in the local table.
struct plan {
  stream* st = nullptr;
  schema sch;
  std::error_code problem;
  std::string problem_detail;
  std::vector<std::string> local_name;  // per remote column; empty: not mapped
  statement upsert;                     // DB mode
  statement remove;                     // DB mode
  std::vector<std::uint32_t> upsert_cols;  // remote indices bound by `upsert`, in order
};

std::string seen_to_blob(const std::map<std::uint64_t, std::uint64_t>& seen) {
  std::string b;
  b.reserve(seen.size() * 16);
  for (const auto& [lo, hi] : seen) {
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((lo >> s) & 0xff));
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((hi >> s) & 0xff));
  }
  return b;
}

void seen_from_blob(std::string_view b, std::map<std::uint64_t, std::uint64_t>& seen) {
  seen.clear();
  for (std::size_t i = 0; i + 16 <= b.size(); i += 16) {
    std::uint64_t lo = 0, hi = 0;
    for (int k = 0; k < 8; ++k) lo = (lo << 8) | static_cast<std::uint8_t>(b[i + k]);
    for (int k = 0; k < 8; ++k) hi = (hi << 8) | static_cast<std::uint8_t>(b[i + 8 + k]);
    if (lo <= hi) seen[lo] = hi;
  }
}

// Marks [lo, hi] applied and advances the checkpoint over contiguous ranges.
void mark_seen(progress& p, std::uint64_t lo, std::uint64_t hi, std::size_t max_ranges) {
  if (hi <= p.checkpoint || lo > hi) return;
  lo = std::max(lo, p.checkpoint + 1);
  p.head = std::max(p.head, hi);
  auto it = p.seen.upper_bound(lo);
  if (it != p.seen.begin()) {
    auto prev = std::prev(it);
    if (prev->second + 1 >= lo) {
      lo = prev->first;
      hi = std::max(hi, prev->second);
      it = p.seen.erase(prev);
    }
  }
  while (it != p.seen.end() && it->first <= hi + 1) {
    hi = std::max(hi, it->second);
    it = p.seen.erase(it);
  }
  p.seen[lo] = hi;
  while (!p.seen.empty() && p.seen.begin()->first <= p.checkpoint + 1) {
    p.checkpoint = std::max(p.checkpoint, p.seen.begin()->second);
    p.seen.erase(p.seen.begin());
  }
  // Bounded: forget the highest ranges (head keeps them counted as existing, so a replay brings
  // them back and they are skipped as duplicates).
  while (p.seen.size() > max_ranges) p.seen.erase(std::prev(p.seen.end()));
}

void raise_checkpoint(progress& p, std::uint64_t to) {
  if (to <= p.checkpoint) return;
  p.checkpoint = to;
  p.head = std::max(p.head, to);
  while (!p.seen.empty() && p.seen.begin()->first <= p.checkpoint + 1) {
    p.checkpoint = std::max(p.checkpoint, p.seen.begin()->second);
    p.seen.erase(p.seen.begin());
  }
}

std::string ids_to_blob(const std::vector<std::uint64_t>& ids) {
  std::string b;
  for (std::uint64_t v : ids)
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((v >> s) & 0xff));
  return b;
}

void ids_from_blob(std::string_view b, std::vector<std::uint64_t>& ids) {
  ids.clear();
  for (std::size_t i = 0; i + 8 <= b.size(); i += 8) {
    std::uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = (v << 8) | static_cast<std::uint8_t>(b[i + k]);
    ids.push_back(v);
  }
}

// What a message tells about the stream: a heartbeat announces the head, events mark their seqs.
void advance(progress& p, const message& m, std::size_t max_ranges) {
  const std::size_t n = m.events.size();
  if (n == 0 && m.first_seq > 0) {
    p.head = std::max(p.head, m.first_seq - 1);  // heartbeat: seqs below it exist
  } else if (m.first_seq > 0) {
    mark_seen(p, m.first_seq, m.first_seq + n - 1, max_ranges);
  }
}

bool has_gap(const progress& p) { return !p.seen.empty() || p.head > p.checkpoint; }

// A storage fault (disk full, I/O error, lock not obtained within the busy timeout, out of
// memory, read-only file) is no fault of the event being applied: the whole message is left
// uncommitted instead of being retried per event or dead-lettered, and gap repair fetches it
// again once the database accepts writes (tests/reliability/README.md, "Storage faults").
bool storage_fault(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_BUSY: case SQLITE_LOCKED:
    case SQLITE_NOMEM: case SQLITE_READONLY: case SQLITE_CANTOPEN: case SQLITE_PROTOCOL:
      return true;
    default:
      return false;
  }
}

std::error_code sql_error(sqlite3* db, std::string& detail) {
  detail = sqlite3_errmsg(db);
  return make_error_code(errc::sqlite_error);
}

enum class topic_kind { event, direct, schema, other };

struct parsed_topic {
  topic_kind kind = topic_kind::other;
  std::string_view cqrs_id;
  std::string_view replica;
};

parsed_topic parse_topic(std::string_view prefix, std::string_view t) {
  parsed_topic p;
  if (t.size() < prefix.size() + 6 || t.substr(0, prefix.size()) != prefix) return p;
  t.remove_prefix(prefix.size());
  if (t.substr(0, 4) != "/v1/" || t.size() < 7 || t[5] != '/') return p;
  char k = t[4];
  t.remove_prefix(6);
  if (k == 'e' || k == 's') {
    if (t.empty() || t.find('/') != std::string_view::npos) return p;
    p.kind = k == 'e' ? topic_kind::event : topic_kind::schema;
    p.cqrs_id = t;
  } else if (k == 'd') {
    auto slash = t.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 >= t.size()) return p;
    p.replica = t.substr(0, slash);
    p.cqrs_id = t.substr(slash + 1);
    if (p.cqrs_id.find('/') != std::string_view::npos) return p;
    p.kind = topic_kind::direct;
  }
  return p;
}

enum class outcome { applied, stale, duplicate, ignored };

}  // namespace

struct replica::impl {
  sqlite3* db = nullptr;
  bool owns_db = false;
  replica_options opts;
  clock* time = nullptr;
  mutable std::mutex mu;
  transport* tp = nullptr;
  std::vector<std::unique_ptr<stream>> streams;
  std::unordered_map<std::string, stream*> by_id;
  std::map<std::pair<std::int64_t, std::uint32_t>, std::unique_ptr<plan>> plans;
  replica_stats st;
  std::string last_error;
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> controls;  // to publish
  std::int64_t next_prune_ms = 0;

  statement q_row_get, q_row_put, q_row_cas, q_row_session, q_stream_put, q_stream_get,
      q_schema_get, q_schema_put, q_retry_put, q_dead_put, q_dead_trim;
  std::string keybuf;
  std::vector<std::uint8_t> encbuf;

  ~impl() {
    // Statements must be finalized before the connection closes.
    plans.clear();
    q_row_get = {};
    q_row_put = {};
    q_row_cas = {};
    q_row_session = {};
    q_stream_put = {};
    q_stream_get = {};
    q_schema_get = {};
    q_schema_put = {};
    q_retry_put = {};
    q_dead_put = {};
    q_dead_trim = {};
    if (owns_db) sqlite3_close_v2(db);
  }

  std::error_code init() {
    if (exec(db, schema_sql) != SQLITE_OK) return make_error_code(errc::sqlite_error);
    // Databases created before re-sync ownership lack its columns.
    {
      statement has;
      if (has.prepare(db, "SELECT count(*) FROM pragma_table_info('edgecqrs_r_streams')"
                          " WHERE name='resync_want'") != SQLITE_OK ||
          has.step() != SQLITE_ROW)
        return make_error_code(errc::sqlite_error);
      const bool missing = has.col_int(0) == 0;
      has.reset();
      if (missing &&
          exec(db, "BEGIN IMMEDIATE;"
                   "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_at_ms INTEGER NOT NULL"
                   " DEFAULT 0;"
                   "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_done INTEGER NOT NULL"
                   " DEFAULT 0;"
                   "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_done_upto INTEGER NOT NULL"
                   " DEFAULT 0;"
                   "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_skip BLOB;"
                   "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_want INTEGER NOT NULL"
                   " DEFAULT 0;"
                   "COMMIT") != SQLITE_OK) {
        exec(db, "ROLLBACK");
        // Another replica object may have migrated it meanwhile.
        statement again;
        if (again.prepare(db, "SELECT count(*) FROM pragma_table_info('edgecqrs_r_streams')"
                              " WHERE name='resync_want'") != SQLITE_OK ||
            again.step() != SQLITE_ROW || again.col_int(0) == 0)
          return make_error_code(errc::sqlite_error);
      }
    }
    struct {
      statement* s;
      const char* sql;
    } const list[] = {
        {&q_row_get, "SELECT version, deleted FROM edgecqrs_r_rows WHERE sid=?1 AND key=?2"},
        {&q_row_put,
         "INSERT INTO edgecqrs_r_rows(sid,key,version,deleted,seq,session,at_ms)"
         " VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(sid,key) DO UPDATE SET"
         " version=excluded.version, deleted=excluded.deleted, seq=max(seq, excluded.seq),"
         " session=CASE WHEN excluded.session>0 THEN excluded.session ELSE session END,"
         " at_ms=excluded.at_ms"},
        // Version check and write in one statement (the fast path without handlers): the
        // row changes only when the event wins by the rules of docs/replication.md §2.
        {&q_row_cas,
         "INSERT INTO edgecqrs_r_rows(sid,key,version,deleted,seq,session,at_ms)"
         " VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(sid,key) DO UPDATE SET"
         " version=excluded.version, deleted=excluded.deleted, seq=max(seq, excluded.seq),"
         " session=CASE WHEN excluded.session>0 THEN excluded.session ELSE session END,"
         " at_ms=excluded.at_ms WHERE excluded.version>version OR (?8 AND deleted=0 AND"
         " version>0 AND excluded.version=version)"},
        {&q_row_session,
         "INSERT INTO edgecqrs_r_rows(sid,key,version,deleted,seq,session,at_ms)"
         " VALUES(?1,?2,0,1,0,?3,?4) ON CONFLICT(sid,key) DO UPDATE SET session=excluded.session"},
        {&q_stream_put,
         "UPDATE edgecqrs_r_streams SET incarnation=?2, checkpoint=?3, head=?4, seen=?5,"
         " resync_session=?6, resync_parts=?7, resync_at_ms=?8, resync_done=?9,"
         " resync_done_upto=?10, resync_skip=?11, resync_want=?12 WHERE sid=?1"},
        {&q_stream_get,
         "SELECT incarnation, checkpoint, head, seen, resync_session, resync_parts, resync_at_ms,"
         " resync_done, resync_done_upto, resync_skip, resync_want FROM edgecqrs_r_streams"
         " WHERE sid=?1"},
        {&q_schema_get, "SELECT body FROM edgecqrs_r_schemas WHERE sid=?1 AND tag=?2"},
        {&q_schema_put,
         "INSERT OR REPLACE INTO edgecqrs_r_schemas(sid,tag,incarnation,body) VALUES(?1,?2,?3,?4)"},
        {&q_retry_put,
         "INSERT INTO edgecqrs_r_retries(sid,topic,key,body,attempts,next_ms,reason,detail,"
         "first_ms) VALUES(?1,?2,?3,?4,0,?5,?6,?7,?8)"},
        {&q_dead_put,
         "INSERT INTO edgecqrs_r_dead(at_ms,cqrs_id,topic,key,reason,category,detail,attempts,body)"
         " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)"},
        {&q_dead_trim,
         "DELETE FROM edgecqrs_r_dead WHERE id IN (SELECT id FROM edgecqrs_r_dead ORDER BY id"
         " LIMIT max(0, (SELECT count(*) FROM edgecqrs_r_dead) - ?1))"},
    };
    for (const auto& e : list)
      if (e.s->prepare(db, e.sql) != SQLITE_OK) return make_error_code(errc::sqlite_error);
    return {};
  }

  std::int64_t now() { return time->now_ms(); }
  std::int64_t msg_now = 0;  // wall time of the message being applied (read once per message)
  std::int64_t steady() { return time->steady_ms(); }

  // ---- control requests (published after the lock is released) ----

  void queue_control(const stream& s, control_op op, std::uint64_t from, std::uint64_t to) {
    if (!tp) return;
    control_request c;
    c.op = op;
    c.replica = opts.name;
    c.from_seq = from;
    c.to_seq = to;
    std::size_t n = 0;
    if (encode_control(c, nullptr, 0, n)) return;
    std::vector<std::uint8_t> buf(n);
    if (encode_control(c, buf.data(), buf.size(), n)) return;
    buf.resize(n);
    if (controls.size() >= max_pending_controls) return;  // the timers ask again
    controls.emplace_back(control_topic(opts.topic_prefix, s.cqrs_id), std::move(buf));
    if (op == control_op::replay) ++st.replay_requests;
    if (op == control_op::resync) ++st.resync_requests;
    if (op == control_op::schema) ++st.schema_requests;
  }

  void want_schema(stream& s) {
    if (s.schema_wanted) return;
    s.schema_wanted = true;
    s.schema_backoff_ms = opts.request_backoff_initial_ms;
    s.next_schema_ms = steady() + s.schema_backoff_ms;
    queue_control(s, control_op::schema, 0, 0);
  }

  std::int64_t resync_initial_backoff() const {
    return std::max<std::int64_t>(opts.reorder_window_ms * 5, 10000);
  }

  // One pending re-sync per stream: a second want only raises the upto_seq the completing
  // session must reach (coalesced); the timer in poll() repeats the request with backoff.
  void want_resync(stream& s, std::uint64_t min_upto = 0) {
    if (s.resync_pending) {
      s.resync_min_upto = std::max(s.resync_min_upto, min_upto);
      return;
    }
    s.resync_pending = true;
    s.resync_min_upto = min_upto;
    s.resync_done_mark = s.prog.resync_done;
    s.resync_backoff_ms = resync_initial_backoff();
    s.next_resync_ms = steady() + s.resync_backoff_ms;
    queue_control(s, control_op::resync, 0, 0);
  }

  // After s.prog was refreshed: a session completed (by this object or another one on the same
  // database) since the request satisfies it when its upto_seq is high enough; otherwise the
  // request goes out again at once.
  void settle_resync(stream& s) {
    if (!s.resync_pending || s.prog.resync_done <= s.resync_done_mark) return;
    if (s.prog.resync_done_upto >= s.resync_min_upto) {
      s.resync_pending = false;
      return;
    }
    s.resync_done_mark = s.prog.resync_done;
    s.resync_backoff_ms = resync_initial_backoff();
    s.next_resync_ms = steady() + s.resync_backoff_ms;
    queue_control(s, control_op::resync, 0, 0);
  }

  // ---- persistence ----

  std::error_code save_stream(const stream& s, const progress& p) {
    reset_guard g(q_stream_put);
    q_stream_put.bind(1, s.sid);
    if (s.has_incarnation)
      q_stream_put.bind_blob(2, s.incarnation.data(), s.incarnation.size());
    else
      q_stream_put.bind_null(2);
    q_stream_put.bind(3, static_cast<std::int64_t>(p.checkpoint));
    q_stream_put.bind(4, static_cast<std::int64_t>(p.head));
    std::string blob = seen_to_blob(p.seen);
    q_stream_put.bind_blob(5, blob.data(), blob.size());
    q_stream_put.bind(6, static_cast<std::int64_t>(p.resync_session));
    q_stream_put.bind(7, static_cast<std::int64_t>(p.resync_parts));
    q_stream_put.bind(8, p.resync_at_ms);
    q_stream_put.bind(9, static_cast<std::int64_t>(p.resync_done));
    q_stream_put.bind(10, static_cast<std::int64_t>(p.resync_done_upto));
    std::string skip = ids_to_blob(p.resync_skip);
    q_stream_put.bind_blob(11, skip.data(), skip.size());
    q_stream_put.bind(12, static_cast<std::int64_t>(p.resync_want));
    return q_stream_put.step() == SQLITE_DONE ? std::error_code{}
                                              : make_error_code(errc::sqlite_error);
  }

  // Re-reads the stream's persisted state (another replica object or process on the same
  // database may have moved it): call it inside the write transaction before computing the
  // new state from s.prog, so that nothing another writer committed is overwritten.
  std::error_code reload_stream(stream& s) {
    reset_guard g(q_stream_get);
    q_stream_get.bind(1, s.sid);
    if (q_stream_get.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
    auto inc = q_stream_get.col_blob(0);
    if (inc.size() == s.incarnation.size()) {
      if (!s.has_incarnation || std::memcmp(s.incarnation.data(), inc.data(), inc.size()) != 0) {
        s.has_incarnation = true;
        std::memcpy(s.incarnation.data(), inc.data(), inc.size());
      }
    } else {
      s.has_incarnation = false;
    }
    progress& p = s.prog;
    p.checkpoint = static_cast<std::uint64_t>(q_stream_get.col_int(1));
    p.head = static_cast<std::uint64_t>(q_stream_get.col_int(2));
    seen_from_blob(q_stream_get.col_blob(3), p.seen);
    p.resync_session = static_cast<std::uint64_t>(q_stream_get.col_int(4));
    p.resync_parts = static_cast<std::uint64_t>(q_stream_get.col_int(5));
    p.resync_at_ms = q_stream_get.col_int(6);
    p.resync_done = static_cast<std::uint64_t>(q_stream_get.col_int(7));
    p.resync_done_upto = static_cast<std::uint64_t>(q_stream_get.col_int(8));
    ids_from_blob(q_stream_get.col_blob(9), p.resync_skip);
    p.resync_want = static_cast<std::uint64_t>(q_stream_get.col_int(10));
    return {};
  }

  // Inside a transaction. `existing_id` > 0 updates that dead letter instead (a failed retry).
  std::error_code put_dead_letter(std::string_view cqrs_id, std::string_view topic,
                                  std::string_view key, std::error_code reason,
                                  std::string_view detail, std::uint32_t attempts,
                                  const void* body, std::size_t size, std::int64_t existing_id) {
    if (existing_id > 0) {
      statement u;
      if (u.prepare(db,
                    "UPDATE edgecqrs_r_dead SET at_ms=?2, reason=?3, category=?4, detail=?5,"
                    " attempts=attempts+1 WHERE id=?1") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      u.bind(1, existing_id);
      u.bind(2, now());
      u.bind(3, reason.value());
      u.bind_text(4, reason.category().name());
      u.bind_text(5, detail);
      if (u.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      ++st.dead_letters;
      return {};
    }
    {
      reset_guard g(q_dead_put);
      q_dead_put.bind(1, now());
      q_dead_put.bind_text(2, cqrs_id);
      q_dead_put.bind_text(3, topic);
      q_dead_put.bind_blob(4, key.data(), key.size());
      q_dead_put.bind(5, reason.value());
      q_dead_put.bind_text(6, reason.category().name());
      q_dead_put.bind_text(7, detail);
      q_dead_put.bind(8, attempts);
      q_dead_put.bind_blob(9, body, size);
      if (q_dead_put.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    }
    ++st.dead_letters;
    // Bound by count, then by bytes: the oldest go first (docs/replication.md §7).
    {
      reset_guard g(q_dead_trim);
      q_dead_trim.bind(1, static_cast<std::int64_t>(opts.max_dead_letters));
      if (q_dead_trim.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      st.dead_letters_dropped += static_cast<std::uint64_t>(sqlite3_changes(db));
    }
    statement bytes;
    if (bytes.prepare(db, "SELECT coalesce(sum(length(body)),0), count(*) FROM edgecqrs_r_dead") !=
        SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    if (bytes.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
    std::int64_t total = bytes.col_int(0), count = bytes.col_int(1);
    bytes.reset();
    if (total > static_cast<std::int64_t>(opts.max_dead_letter_bytes) && count > 1) {
      statement oldest;
      if (oldest.prepare(db, "SELECT id, length(body) FROM edgecqrs_r_dead ORDER BY id") !=
          SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      std::int64_t cut = 0;
      while (total > static_cast<std::int64_t>(opts.max_dead_letter_bytes) && count > 1 &&
             oldest.step() == SQLITE_ROW) {
        cut = oldest.col_int(0);
        total -= oldest.col_int(1);
        --count;
      }
      oldest.reset();
      statement del;
      if (del.prepare(db, "DELETE FROM edgecqrs_r_dead WHERE id<=?1") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      del.bind(1, cut);
      if (del.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      st.dead_letters_dropped += static_cast<std::uint64_t>(sqlite3_changes(db));
    }
    return {};
  }

  // A whole message that cannot be applied, in its own transaction.
  std::error_code dead_letter_message(std::string_view cqrs_id, std::string_view topic,
                                      std::error_code reason, std::string_view detail,
                                      const std::uint8_t* data, std::size_t size,
                                      std::int64_t existing_id, stream* s, const message* m) {
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
    std::error_code ec;
    progress p;
    if (s && m) {
      // Its seqs count as handled (docs/replication.md §3), from the persisted state.
      ec = reload_stream(*s);
      p = s->prog;
      advance(p, *m, opts.max_seen_ranges);
      // An expired stream message is handled but its changes are missing: a replay would bring
      // the same expired bytes, so the stream wants a re-sync reaching past it (persisted, so a
      // restart or another replica object on this database asks too).
      if (reason == errc::expired && m->first_seq > 0 && !m->events.empty())
        p.resync_want = std::max(p.resync_want, m->first_seq + m->events.size() - 1);
    }
    if (!ec)
      ec = put_dead_letter(cqrs_id, topic, {}, reason,
                           detail.empty() ? std::string_view(reason.message()) : detail, 1, data,
                           size, existing_id);
    if (!ec && s && m) ec = save_stream(*s, p);
    if (auto e = commit_or_rollback(ec, topic)) return e;
    if (s && m) {
      s->prog = p;
      if (p.resync_want > 0) want_resync(*s, p.resync_want);
      update_gap_state(*s);
    }
    return reason;
  }

  // ---- schemas and plans ----

  std::error_code load_local_columns(const std::string& table, std::vector<local_column>& out) {
    out.clear();
    statement q;
    // table_xinfo is a table-valued pragma; the table name is bound, never spliced.
    if (q.prepare(db, "SELECT name, type, \"notnull\", dflt_value, pk, hidden"
                      " FROM pragma_table_xinfo(?1)") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    q.bind_text(1, table);
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) {
      if (q.col_int(5) != 0) continue;  // hidden / generated columns are not written
      local_column c;
      c.name = std::string(q.col_text(0));
      c.type = std::string(q.col_text(1));
      c.notnull = q.col_int(2) != 0;
      c.has_default = !q.col_is_null(3);
      c.pk = static_cast<int>(q.col_int(4));
      out.push_back(std::move(c));
    }
    if (rc != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    if (out.empty()) return make_error_code(errc::unknown_table);
    return {};
  }

  void build_plan(plan& pl) {
    stream& s = *pl.st;
    const schema& sch = pl.sch;
    const bool db_mode = !s.opts.local_table.empty();
    pl.local_name.assign(sch.columns.size(), std::string());
    auto find_local = [&](const std::string& n) -> const local_column* {
      for (const auto& c : s.local)
        if (c.name == n) return &c;
      return nullptr;
    };
    for (std::size_t i = 0; i < sch.columns.size(); ++i) {
      const std::string& rn = sch.columns[i].name;
      bool listed = false;
      std::string target;
      for (const auto& [from, to] : s.opts.mapping)
        if (from == rn) {
          listed = true;
          target = to;
        }
      if (listed) {
        pl.local_name[i] = target;  // validated at registration (or "" = dropped)
        continue;
      }
      if (!db_mode || find_local(rn)) {
        pl.local_name[i] = rn;
        continue;
      }
      if (s.opts.unknown_columns == unknown_column_policy::reject) {
        pl.problem = make_error_code(errc::schema_mismatch);
        pl.problem_detail = "stream '" + s.cqrs_id + "': remote column '" + rn +
                            "' maps to no column of local table '" + s.opts.local_table +
                            "' (unknown columns are rejected)";
        return;
      }
    }
    for (std::uint32_t k : sch.pk) {
      if (k >= sch.columns.size()) {
        pl.problem = make_error_code(errc::bad_schema);
        pl.problem_detail = "stream '" + s.cqrs_id + "': primary-key index out of range";
        return;
      }
      if (pl.local_name[k].empty()) {
        pl.problem = make_error_code(errc::schema_mismatch);
        pl.problem_detail = "stream '" + s.cqrs_id + "': key column '" + sch.columns[k].name +
                            "' is not mapped to a local column";
        return;
      }
    }
    if (!db_mode) return;
    // The mapped remote key must be the local primary key (the upsert's conflict target).
    std::vector<std::string> local_pk, mapped_pk;
    for (const auto& c : s.local)
      if (c.pk > 0) local_pk.push_back(c.name);
    for (std::uint32_t k : sch.pk) mapped_pk.push_back(pl.local_name[k]);
    std::sort(local_pk.begin(), local_pk.end());
    std::sort(mapped_pk.begin(), mapped_pk.end());
    if (local_pk != mapped_pk) {
      pl.problem = make_error_code(errc::schema_mismatch);
      pl.problem_detail = "stream '" + s.cqrs_id + "': the master's key does not map onto the"
                          " PRIMARY KEY of local table '" + s.opts.local_table + "'";
      return;
    }
    if (!s.opts.on_create) {
      for (const auto& c : s.local) {
        bool rowid_alias = c.pk == 1 && local_pk.size() == 1;
        if (!c.notnull || c.has_default || rowid_alias) continue;
        bool carried = false;
        for (const auto& ln : pl.local_name)
          if (ln == c.name) carried = true;
        if (!carried) {
          pl.problem = make_error_code(errc::missing_required_column);
          pl.problem_detail = "stream '" + s.cqrs_id + "': local column '" + c.name +
                              "' of table '" + s.opts.local_table +
                              "' is NOT NULL without a default, and the master's events do not"
                              " carry it (map a remote column to it or give it a default)";
          return;
        }
      }
    }
    std::string cols, qs, sets, where;
    for (std::uint32_t i = 0; i < sch.columns.size(); ++i) {
      if (pl.local_name[i].empty()) continue;
      // A local column mapped twice keeps the first remote column.
      bool dup = false;
      for (std::uint32_t j : pl.upsert_cols)
        if (pl.local_name[j] == pl.local_name[i]) dup = true;
      if (dup) continue;
      pl.upsert_cols.push_back(i);
      std::string q = quote_ident(pl.local_name[i]);
      if (!cols.empty()) {
        cols += ',';
        qs += ',';
      }
      cols += q;
      qs += '?';
      bool is_key = std::find(sch.pk.begin(), sch.pk.end(), i) != sch.pk.end();
      if (!is_key) {
        if (!sets.empty()) sets += ',';
        sets += q + "=excluded." + q;
      }
    }
    std::string conflict;
    for (std::uint32_t k : sch.pk) {
      if (!conflict.empty()) conflict += ',';
      conflict += quote_ident(pl.local_name[k]);
      if (!where.empty()) where += " AND ";
      where += quote_ident(pl.local_name[k]) + "=?";
    }
    const std::string t = quote_ident(s.opts.local_table);
    std::string up = "INSERT INTO " + t + "(" + cols + ") VALUES(" + qs + ") ON CONFLICT(" +
                     conflict + ") DO " + (sets.empty() ? "NOTHING" : "UPDATE SET " + sets);
    std::string del = "DELETE FROM " + t + " WHERE " + where;
    if (pl.upsert.prepare(db, up) != SQLITE_OK || pl.remove.prepare(db, del) != SQLITE_OK) {
      pl.problem = make_error_code(errc::schema_mismatch);
      pl.problem_detail = "stream '" + s.cqrs_id + "': " + sqlite3_errmsg(db);
    }
  }

  plan* find_plan(stream& s, std::uint32_t tag) {
    auto key = std::make_pair(s.sid, tag);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second.get();
    reset_guard g(q_schema_get);
    q_schema_get.bind(1, s.sid);
    q_schema_get.bind(2, tag);
    if (q_schema_get.step() != SQLITE_ROW) return nullptr;
    auto body = q_schema_get.col_blob(0);
    auto pl = std::make_unique<plan>();
    pl->st = &s;
    if (decode_schema(reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), pl->sch,
                      opts.limits))
      return nullptr;
    build_plan(*pl);
    if (pl->problem) last_error = pl->problem_detail;
    plan* raw = pl.get();
    plans[key] = std::move(pl);
    return raw;
  }

  // ---- applying one event ----

  struct apply_ctx {
    bool direct = false;
    std::uint64_t seq = 0;        // stream seq of the event (0: sync)
    std::uint64_t session = 0;    // re-sync session to mark rows with (0: none)
  };

  std::string_view make_key(const plan& pl, const event& ev) {
    keybuf.clear();
    if (ev.kind == event_kind::remove) {
      for (const auto& v : ev.values) replica_detail::append_key(keybuf, v);
    } else {
      for (std::uint32_t k : pl.sch.pk) replica_detail::append_key(keybuf, ev.values[k]);
    }
    return keybuf;
  }

  change make_change(const plan& pl, const event& ev, const apply_ctx& c) {
    change ch;
    ch.cqrs_id = pl.st->cqrs_id;
    ch.kind = ev.kind;
    ch.is_sync = ev.kind == event_kind::sync;
    ch.direct = c.direct;
    ch.row_version = ev.row_version;
    ch.updated_ms = ev.updated_ms;
    ch.correlation_id = ev.correlation_id;
    if (pl.st->opts.pass_meta) ch.meta = &ev.meta;
    ch.db = pl.st->opts.local_table.empty() ? nullptr : db;
    if (ev.kind == event_kind::remove) {
      for (std::size_t j = 0; j < pl.sch.pk.size(); ++j)
        ch.values.push_back({pl.local_name[pl.sch.pk[j]], &ev.values[j]});
    } else {
      for (std::size_t i = 0; i < ev.values.size(); ++i)
        if (!pl.local_name[i].empty()) ch.values.push_back({pl.local_name[i], &ev.values[i]});
    }
    for (const auto& pv : ev.previous)
      if (pv.column < pl.local_name.size() && !pl.local_name[pv.column].empty())
        ch.previous.push_back({pl.local_name[pv.column], &pv.old});
    return ch;
  }

  std::error_code mark_session(const stream& s, std::string_view key, std::uint64_t session) {
    reset_guard g(q_row_session);
    q_row_session.bind(1, s.sid);
    q_row_session.bind_blob(2, key.data(), key.size());
    q_row_session.bind(3, static_cast<std::int64_t>(session));
    q_row_session.bind(4, msg_now);
    return q_row_session.step() == SQLITE_DONE ? std::error_code{}
                                               : make_error_code(errc::sqlite_error);
  }

  // Applies one validated event inside the open transaction. On error the caller rolls back.
  std::error_code apply_event(plan& pl, const event& ev, const apply_ctx& c, outcome& out,
                              std::string& detail) {
    stream& s = *pl.st;
    out = outcome::ignored;
    if (ev.kind == event_kind::sync && !c.direct && s.opts.only_direct_syncs) return {};
    std::string_view key = make_key(pl, ev);
    const bool db_mode = !s.opts.local_table.empty();
    const bool is_delete = ev.kind == event_kind::remove;
    const bool fast = db_mode && (is_delete ? !s.opts.on_delete
                                            : !s.opts.on_create && !s.opts.on_update);
    if (fast) {
      // One conditional write decides; the local statement follows only when it won.
      int changed = 0;
      {
        reset_guard g(q_row_cas);
        q_row_cas.bind(1, s.sid);
        q_row_cas.bind_blob(2, key.data(), key.size());
        q_row_cas.bind(3, static_cast<std::int64_t>(ev.row_version));
        q_row_cas.bind(4, is_delete ? 1 : 0);
        q_row_cas.bind(5, static_cast<std::int64_t>(c.seq));
        q_row_cas.bind(6, static_cast<std::int64_t>(c.session));
        q_row_cas.bind(7, msg_now);
        q_row_cas.bind(8, ev.kind == event_kind::sync ? 1 : 0);
        if (q_row_cas.step() != SQLITE_DONE) return sql_error(db, detail);
        changed = sqlite3_changes(db);
      }
      if (changed) {
        statement& st_local = is_delete ? pl.remove : pl.upsert;
        reset_guard g(st_local);
        if (is_delete) {
          for (std::size_t j = 0; j < ev.values.size(); ++j)
            st_local.bind_value(static_cast<int>(j + 1), ev.values[j]);
        } else {
          int i = 1;
          for (std::uint32_t col : pl.upsert_cols) st_local.bind_value(i++, ev.values[col]);
        }
        if (st_local.step() != SQLITE_DONE) {
          detail = sqlite3_errmsg(db);
          return make_error_code(errc::apply_failed);
        }
        out = outcome::applied;
        return {};
      }
      // Skipped: tell stale from duplicate, and keep the row in a running re-sync session.
      reset_guard g(q_row_get);
      q_row_get.bind(1, s.sid);
      q_row_get.bind_blob(2, key.data(), key.size());
      if (q_row_get.step() != SQLITE_ROW) return sql_error(db, detail);
      std::uint64_t cur = static_cast<std::uint64_t>(q_row_get.col_int(0));
      out = ev.row_version == cur ? outcome::duplicate : outcome::stale;
      if (c.session) return mark_session(s, key, c.session);
      return {};
    }
    bool exists = false, deleted = false;
    std::uint64_t cur = 0;
    {
      reset_guard g(q_row_get);
      q_row_get.bind(1, s.sid);
      q_row_get.bind_blob(2, key.data(), key.size());
      int rc = q_row_get.step();
      if (rc == SQLITE_ROW) {
        exists = true;
        cur = static_cast<std::uint64_t>(q_row_get.col_int(0));
        deleted = q_row_get.col_int(1) != 0;
      } else if (rc != SQLITE_DONE) {
        return sql_error(db, detail);
      }
    }
    // docs/replication.md §2: stream events need a newer version; syncs may repair at an equal
    // version of a live row but never downgrade and never resurrect at the tombstone's version.
    bool newer = !exists || ev.row_version > cur ||
                 (ev.kind == event_kind::sync && !deleted && ev.row_version == cur && cur > 0);
    if (!newer) {
      out = ev.row_version == cur ? outcome::duplicate : outcome::stale;
      if (c.session) return mark_session(s, key, c.session);
      return {};
    }
    if (is_delete) {
      if (!(exists && deleted)) {
        if (s.opts.on_delete) {
          change ch = make_change(pl, ev, c);
          if (auto ec = s.opts.on_delete(ch)) {
            detail = "delete handler: " + ec.message();
            return make_error_code(errc::handler_failed);
          }
        } else if (db_mode) {
          reset_guard g(pl.remove);
          for (std::size_t j = 0; j < ev.values.size(); ++j)
            pl.remove.bind_value(static_cast<int>(j + 1), ev.values[j]);
          if (pl.remove.step() != SQLITE_DONE) {
            detail = sqlite3_errmsg(db);
            return make_error_code(errc::apply_failed);
          }
        }
      }
    } else {
      const bool create = !exists || deleted;
      const change_handler& h = create ? s.opts.on_create : s.opts.on_update;
      if (h) {
        change ch = make_change(pl, ev, c);
        if (auto ec = h(ch)) {
          detail = std::string(create ? "create" : "update") + " handler: " + ec.message();
          return make_error_code(errc::handler_failed);
        }
      } else if (db_mode) {
        reset_guard g(pl.upsert);
        int i = 1;
        for (std::uint32_t col : pl.upsert_cols) pl.upsert.bind_value(i++, ev.values[col]);
        if (pl.upsert.step() != SQLITE_DONE) {
          detail = sqlite3_errmsg(db);
          return make_error_code(errc::apply_failed);
        }
      }
    }
    {
      reset_guard g(q_row_put);
      q_row_put.bind(1, s.sid);
      q_row_put.bind_blob(2, key.data(), key.size());
      q_row_put.bind(3, static_cast<std::int64_t>(ev.row_version));
      q_row_put.bind(4, is_delete ? 1 : 0);
      q_row_put.bind(5, static_cast<std::int64_t>(c.seq));
      q_row_put.bind(6, static_cast<std::int64_t>(c.session));
      q_row_put.bind(7, msg_now);
      if (q_row_put.step() != SQLITE_DONE) return sql_error(db, detail);
    }
    out = outcome::applied;
    return {};
  }

  void count(outcome o, replica_stats& d) {
    switch (o) {
      case outcome::applied: ++d.events_applied; break;
      case outcome::stale: ++d.skipped_stale; break;
      case outcome::duplicate: ++d.duplicates; break;
      case outcome::ignored: ++d.ignored; break;
    }
  }

  // One event as a message of its own (kept for retries and dead letters).
  std::error_code encode_single(const message& m, std::size_t i, std::vector<std::uint8_t>& out) {
    message one;
    one.schema_tag = m.schema_tag;
    one.first_seq = m.seq_of(i);
    one.events.push_back(m.events[i]);
    one.target = m.target;
    one.reply_to = m.reply_to;
    std::size_t n = 0;
    if (auto ec = encode_message(one, nullptr, 0, n)) return ec;
    out.resize(n);
    if (auto ec = encode_message(one, out.data(), out.size(), n)) return ec;
    out.resize(n);
    return {};
  }

  std::error_code schedule_retry(stream& s, std::string_view topic, const message& m, std::size_t i,
                                 std::error_code reason, const std::string& detail) {
    std::vector<std::uint8_t> body;
    if (auto ec = encode_single(m, i, body)) return ec;
    std::string key(keybuf);
    statement cnt;
    if (cnt.prepare(db, "SELECT count(*) FROM edgecqrs_r_retries") != SQLITE_OK ||
        cnt.step() != SQLITE_ROW)
      return make_error_code(errc::sqlite_error);
    bool full = static_cast<std::size_t>(cnt.col_int(0)) >= opts.max_pending_retries;
    cnt.reset();
    if (opts.max_retries == 0 || full)
      return put_dead_letter(s.cqrs_id, topic, key, reason,
                             full ? detail + " (retry table full)" : detail, 1, body.data(),
                             body.size(), 0);
    reset_guard g(q_retry_put);
    q_retry_put.bind(1, s.sid);
    q_retry_put.bind_text(2, topic);
    q_retry_put.bind_blob(3, key.data(), key.size());
    q_retry_put.bind_blob(4, body.data(), body.size());
    q_retry_put.bind(5, steady() + opts.retry_initial_ms);
    q_retry_put.bind(6, reason.value());
    q_retry_put.bind_text(7, detail);
    q_retry_put.bind(8, now());
    if (q_retry_put.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    ++st.retries_scheduled;
    return {};
  }

  // ---- the message pipeline ----

  struct msg_opts {
    bool ignore_expiry = false;      // an operator retrying a dead letter
    std::int64_t dead_letter_id = 0; // update this dead letter instead of adding one
  };

  std::error_code handle_schema(stream& s, std::string_view topic, const std::uint8_t* data,
                                std::size_t size, const msg_opts& mo,
                                std::vector<std::int64_t>& to_retry) {
    schema sch;
    if (auto ec = decode_schema(data, size, sch, opts.limits))
      return dead_letter_message(s.cqrs_id, topic, ec, ec.message(), data, size,
                                 mo.dead_letter_id, nullptr, nullptr);
    if (sch.cqrs_id != s.cqrs_id || sch.pk.empty())
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::schema_mismatch),
                                 "schema message names another CQRS_ID or has no key", data,
                                 size, mo.dead_letter_id, nullptr, nullptr);
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
    // Decide from the persisted state: another replica object on this database may have seen
    // this schema (or a new incarnation) already.
    std::error_code ec = reload_stream(s);
    const bool first = !s.has_incarnation;
    const bool reset = s.has_incarnation && s.incarnation != sch.incarnation;
    progress p = s.prog;
    if (reset) {
      // Versions and seqs restart; completed-session counting goes on (pending requests of
      // other replica objects compare against it).
      progress fresh;
      fresh.resync_done = p.resync_done;
      p = fresh;
    }
    if (!ec) {
      reset_guard g(q_schema_put);
      q_schema_put.bind(1, s.sid);
      q_schema_put.bind(2, sch.schema_tag);
      q_schema_put.bind_blob(3, sch.incarnation.data(), sch.incarnation.size());
      q_schema_put.bind_blob(4, data, size);
      if (q_schema_put.step() != SQLITE_DONE) ec = make_error_code(errc::sqlite_error);
    }
    if (!ec) {
      // Bounded: the most recent schemas of a stream are kept (older tags then park their
      // messages and ask for the schema again).
      statement trim;
      if (trim.prepare(db, "DELETE FROM edgecqrs_r_schemas WHERE sid=?1 AND rowid NOT IN (SELECT"
                           " rowid FROM edgecqrs_r_schemas WHERE sid=?1 ORDER BY rowid DESC"
                           " LIMIT ?2)") != SQLITE_OK)
        ec = make_error_code(errc::sqlite_error);
      else {
        trim.bind(1, s.sid);
        trim.bind(2, static_cast<std::int64_t>(max_schemas_per_stream));
        if (trim.step() != SQLITE_DONE) ec = make_error_code(errc::sqlite_error);
      }
    }
    if (!ec && reset) {
      // A new master database: its versions and seqs start again, so ours are void. Keys stay
      // (version 0) so the re-sync can remove rows the new master does not have.
      statement r;
      if (r.prepare(db, "UPDATE edgecqrs_r_rows SET version=0, seq=0, session=0 WHERE sid=?1") !=
          SQLITE_OK)
        ec = make_error_code(errc::sqlite_error);
      else {
        r.bind(1, s.sid);
        if (r.step() != SQLITE_DONE) ec = make_error_code(errc::sqlite_error);
      }
    }
    const auto old_inc = s.incarnation;
    const bool old_has = s.has_incarnation;
    s.incarnation = sch.incarnation;
    s.has_incarnation = true;
    if (!ec) ec = save_stream(s, p);
    if (auto e = commit_or_rollback(ec, topic)) {
      s.incarnation = old_inc;
      s.has_incarnation = old_has;
      return e;
    }
    s.prog = p;
    for (auto it = plans.begin(); it != plans.end();)
      it = it->second->st == &s ? plans.erase(it) : std::next(it);
    s.schema_wanted = false;
    if (reset) {
      s.gap_open = false;
      s.resync_pending = false;
    }
    if (first || reset) want_resync(s);
    plan* pl = find_plan(s, sch.schema_tag);
    if (pl && pl->problem) last_error = pl->problem_detail;
    // Messages parked for want of this schema can be applied now.
    statement q;
    if (q.prepare(db, "SELECT id FROM edgecqrs_r_dead WHERE cqrs_id=?1 AND reason=?2 AND"
                      " category=?3 ORDER BY id") == SQLITE_OK) {
      q.bind_text(1, s.cqrs_id);
      q.bind(2, static_cast<int>(errc::unknown_schema));
      q.bind_text(3, edgecqrs_category().name());
      while (q.step() == SQLITE_ROW) to_retry.push_back(q.col_int(0));
    }
    return {};
  }

  // A message that could not be made durable (BEGIN, an apply step or COMMIT failed for a
  // storage reason): counted, described in last_error(); the caller rolled back.
  // Ends the open write transaction: COMMIT when `ec` is clear, else (or when COMMIT fails)
  // ROLLBACK, and then the message counts as not committed (gap repair fetches it again).
  std::error_code commit_or_rollback(std::error_code ec, std::string_view topic) {
    if (!ec && exec(db, "COMMIT") == SQLITE_OK) return {};
    const std::string why = sqlite3_errmsg(db);
    exec(db, "ROLLBACK");
    return not_committed(topic, why);
  }

  std::error_code not_committed(std::string_view topic, std::string why = {},
                                std::error_code ec = make_error_code(errc::sqlite_error)) {
    if (why.empty()) why = sqlite3_errmsg(db);
    ++st.commit_failures;
    last_error = "message on '" + std::string(topic) +
                 "' not committed (gap repair fetches it again): " + why;
    return ec;
  }

  void update_gap_state(stream& s) {
    bool gap = has_gap(s.prog);
    if (gap && !s.gap_open) {
      s.gap_open = true;
      s.gap_since_ms = steady();
      s.replay_backoff_ms = opts.request_backoff_initial_ms;
      s.next_replay_ms = s.gap_since_ms + opts.reorder_window_ms;
      ++st.gaps_detected;
    } else if (!gap && s.gap_open) {
      s.gap_open = false;
      ++st.gaps_repaired;
    }
  }

  std::error_code handle_message(std::string_view topic, const std::uint8_t* data,
                                 std::size_t size, const msg_opts& mo,
                                 std::vector<std::int64_t>& to_retry) {
    ++st.messages;
    msg_now = now();
    parsed_topic pt = parse_topic(opts.topic_prefix, topic);
    auto sit = by_id.find(std::string(pt.cqrs_id));
    if (pt.kind == topic_kind::other || sit == by_id.end()) {
      // Not a stream this replica knows: kept, since an operator may register it later.
      return dead_letter_message(pt.cqrs_id, topic, make_error_code(errc::unknown_stream),
                                 "no stream registered for topic", data, size, mo.dead_letter_id,
                                 nullptr, nullptr);
    }
    stream& s = *sit->second;
    if (pt.kind == topic_kind::schema) return handle_schema(s, topic, data, size, mo, to_retry);
    const bool direct = pt.kind == topic_kind::direct;
    if (direct && pt.replica != opts.name) {
      ++st.ignored;
      return make_error_code(errc::not_for_this_replica);
    }
    message m;
    if (auto ec = decode_message(data, size, m, opts.limits))
      return dead_letter_message(s.cqrs_id, topic, ec, ec.message(), data, size, mo.dead_letter_id,
                                 nullptr, nullptr);
    if (!m.target.empty() && m.target != opts.name) {
      ++st.ignored;
      return make_error_code(errc::not_for_this_replica);
    }
    plan* pl = find_plan(s, m.schema_tag);
    if (!pl) {
      want_schema(s);
      if (m.events.empty()) return make_error_code(errc::unknown_schema);  // a heartbeat
      // Parked as a dead letter; applied automatically when the schema arrives.
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::unknown_schema),
                                 "schema tag " + std::to_string(m.schema_tag) + " not known yet",
                                 data, size, mo.dead_letter_id, nullptr, nullptr);
    }
    if (!s.has_incarnation || pl->sch.incarnation != s.incarnation) {
      ++st.ignored;  // from a master database this replica no longer follows
      return make_error_code(errc::stale_version);
    }
    const std::size_t n = m.events.size();
    if (n == 0 && !(m.has_resync && direct)) {
      if (m.first_seq == 0 || m.first_seq - 1 <= s.prog.head) return {};
      if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
      std::error_code ec = reload_stream(s);
      progress p = s.prog;
      advance(p, m, opts.max_seen_ranges);
      if (!ec && p.head != s.prog.head) ec = save_stream(s, p);
      if (auto e = commit_or_rollback(ec, topic)) return e;
      s.prog = p;
      update_gap_state(s);
      return {};
    }
    // Whole-message checks first: a message is applied entirely or not at all.
    if (pl->problem && n > 0)
      return dead_letter_message(s.cqrs_id, topic, pl->problem, pl->problem_detail, data, size,
                                 mo.dead_letter_id, &s, &m);
    if (!mo.ignore_expiry && m.expires_ms != 0 && m.expires_ms <= now())
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::expired),
                                 "expired " + std::to_string(now() - m.expires_ms) +
                                     " ms before arrival",
                                 data, size, mo.dead_letter_id, &s, &m);
    // Sequences are stored as SQLite INTEGER (signed): the last event's seq must neither wrap
    // nor pass 2^63-1.
    if (m.first_seq != 0 && n != 0 &&
        (m.first_seq > static_cast<std::uint64_t>(INT64_MAX) ||
         n - 1 > static_cast<std::uint64_t>(INT64_MAX) - m.first_seq))
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::integer_out_of_range),
                                 "stream sequence out of range (wraps or exceeds 2^63-1)", data,
                                 size, mo.dead_letter_id, &s, &m);
    const std::size_t ncols = pl->sch.columns.size(), npk = pl->sch.pk.size();
    for (std::size_t i = 0; i < n; ++i) {
      const event& ev = m.events[i];
      std::size_t want = ev.kind == event_kind::remove ? npk : ncols;
      // Versions are stored as SQLite INTEGER (signed): above 2^63-1 one would read back as
      // negative and let an older version overwrite it.
      bool ok = ev.values.size() == want && ev.row_version > 0 &&
                ev.row_version <= static_cast<std::uint64_t>(INT64_MAX) &&
                (ev.kind == event_kind::sync) == (m.first_seq == 0);
      for (const auto& pv : ev.previous) ok = ok && pv.column < ncols;
      if (!ok)
        return dead_letter_message(
            s.cqrs_id, topic, make_error_code(errc::schema_mismatch),
            "event " + std::to_string(i) + " does not fit schema tag " +
                std::to_string(m.schema_tag) + " (value count, version or kind vs seq)",
            data, size, mo.dead_letter_id, &s, &m);
    }
    // The stream state and the re-sync session bookkeeping are computed inside the write
    // transaction from the persisted state (prepare(), after each BEGIN): several replica
    // objects or processes may apply to this database (docs/replication.md §4, "Several
    // replica objects on one database").
    progress p;
    std::uint64_t session = 0;
    bool finish_session = false, session_broken = false, competing = false;
    auto prepare = [&]() -> std::error_code {
      session = 0;
      finish_session = session_broken = competing = false;
      if (auto ec = reload_stream(s)) return ec;
      p = s.prog;
      if (!s.has_incarnation || pl->sch.incarnation != s.incarnation) {
        competing = true;  // another object switched the stream to a new master meanwhile
        return {};
      }
      advance(p, m, opts.max_seen_ranges);
      if (!(m.has_resync && direct)) return {};
      // Session ids are opaque (the master picks them at random). The database holds the one
      // running session; a run completes only when parts 0..last of that session arrived in
      // order (resync_parts = next part expected, broken_run once a part was skipped). A part
      // of another session starts a new run when none is running (or the running one made no
      // progress for the stall time); while one runs, the other session competes: its parts
      // are ignored (remembered in resync_skip, so its later parts are too). Its rows are
      // carried by the running session or come later by the stream, so nothing is lost, and
      // its marks never replace the running session's (which would let that session's sweep
      // remove them).
      const auto& r = m.resync;
      if (r.session != p.resync_session) {
        const bool running = p.resync_session != 0 && p.resync_parts < broken_run;
        const bool stalled = running && msg_now - p.resync_at_ms >= resync_initial_backoff();
        const bool skipped = std::find(p.resync_skip.begin(), p.resync_skip.end(), r.session) !=
                             p.resync_skip.end();
        if (skipped || (running && !stalled)) {
          if (!skipped) {
            p.resync_skip.push_back(r.session);
            if (p.resync_skip.size() > max_skipped_sessions)
              p.resync_skip.erase(p.resync_skip.begin());
          }
          competing = true;
          return {};
        }
        if (running) {
          // Stalled: the new session takes over; the old one is ignored from now on.
          p.resync_skip.push_back(p.resync_session);
          if (p.resync_skip.size() > max_skipped_sessions)
            p.resync_skip.erase(p.resync_skip.begin());
        }
        p.resync_session = r.session;
        p.resync_parts = 0;
      }
      session = r.session;
      p.resync_at_ms = msg_now;
      // Redelivered parts of a completed session (or parts another replica object on this
      // database already applied) only apply by the sync rule.
      if (p.resync_parts != finished_run) {
        if (r.part == p.resync_parts)
          ++p.resync_parts;
        else if (r.part > p.resync_parts)
          p.resync_parts = broken_run;
        if (r.last) {
          if (p.resync_parts == r.part + 1) {
            finish_session = true;
            p.resync_parts = finished_run;
          } else if (p.resync_parts == broken_run) {
            // A part was lost or reordered: ask again (once: the run is over, so another
            // replica object on this database that sees this last part does not ask too).
            session_broken = true;
            p.resync_parts = finished_run;
          }
        }
      }
      return {};
    };
    replica_stats delta;
    std::string detail;
    apply_ctx c;
    c.direct = direct;
    bool storage = false;
    auto run = [&](bool per_event) -> std::error_code {
      delta = replica_stats{};
      c.session = session;  // decided by prepare()
      for (std::size_t i = 0; i < n; ++i) {
        c.seq = m.seq_of(i);
        outcome o{};
        if (per_event && exec(db, "SAVEPOINT ev") != SQLITE_OK)
          return make_error_code(errc::sqlite_error);
        std::error_code ec = apply_event(*pl, m.events[i], c, o, detail);
        if (ec && ec != errc::handler_failed && storage_fault(sqlite3_errcode(db))) {
          storage = true;
          return ec;
        }
        if (ec && !per_event) return ec;
        if (ec) {
          // SQLITE_FULL, IOERR, NOMEM and BUSY may roll the whole transaction back on their
          // own; carrying on would write the rest in autocommit mode.
          if (sqlite3_get_autocommit(db)) return ec;
          exec(db, "ROLLBACK TO ev");
          if (session) {
            // Keep the row in the session so completing it does not remove it meanwhile.
            if (auto e2 = mark_session(s, keybuf, session)) return e2;
          }
          if (auto e2 = schedule_retry(s, topic, m, i, ec, detail)) return e2;
        } else {
          count(o, delta);
        }
        if (per_event && exec(db, "RELEASE ev") != SQLITE_OK)
          return make_error_code(errc::sqlite_error);
      }
      if (finish_session) {
        if (auto ec = finish_resync(s, p, m.resync, delta)) return ec;
      }
      if (auto ec = save_stream(s, p)) return ec;
      return {};
    };
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
    const replica_stats saved = st;
    std::error_code ec = prepare();
    if (!ec && competing) {
      // Nothing of the message applies; only the skip list may change.
      ec = save_stream(s, p);
      if (auto e = commit_or_rollback(ec, topic)) return e;
      s.prog = p;
      ++st.ignored;
      settle_resync(s);
      update_gap_state(s);
      return {};
    }
    if (!ec) ec = run(false);
    if (ec && !storage) {
      // Slow path: one savepoint per event, failures go to the retry table.
      exec(db, "ROLLBACK");
      st = saved;
      if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
      ec = prepare();
      if (!ec && competing) ec = make_error_code(errc::sqlite_error);  // changed under us
      if (!ec) ec = run(true);
    }
    if (!ec && exec(db, "COMMIT") != SQLITE_OK) ec = make_error_code(errc::sqlite_error);
    if (ec) {
      // Never acknowledged as applied: the checkpoint did not move, so the sequence has a hole
      // that gap repair fills (a storage fault, or a failure to record a retry).
      const std::string why = storage ? detail : std::string(sqlite3_errmsg(db));
      exec(db, "ROLLBACK");
      st = saved;
      return not_committed(topic, why, ec);
    }
    st.events_applied += delta.events_applied;
    st.skipped_stale += delta.skipped_stale;
    st.duplicates += delta.duplicates;
    st.ignored += delta.ignored;
    st.rows_removed_by_resync += delta.rows_removed_by_resync;
    s.prog = p;
    if (finish_session) ++st.resyncs_completed;
    settle_resync(s);
    if (session_broken) {
      s.resync_pending = false;
      want_resync(s, p.resync_want);
    }
    // Too many holes to track: a re-sync is cheaper than remembering them.
    if (s.prog.seen.size() >= opts.max_seen_ranges) want_resync(s);
    update_gap_state(s);
    return {};
  }

  // Inside the transaction: removes rows of the stream the session did not carry and no later
  // stream event touched, then raises the checkpoint.
  std::error_code finish_resync(stream& s, progress& p, const resync_marker& r,
                                replica_stats& delta) {
    statement q;
    if (q.prepare(db, "SELECT key, version FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=0 AND"
                      " session<>?2 AND seq<=?3") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    q.bind(1, s.sid);
    q.bind(2, static_cast<std::int64_t>(r.session));
    q.bind(3, static_cast<std::int64_t>(r.upto_seq));
    std::vector<std::pair<std::string, std::uint64_t>> gone;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW)
      gone.emplace_back(std::string(q.col_blob(0)), static_cast<std::uint64_t>(q.col_int(1)));
    if (rc != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    q.reset();
    if (!gone.empty()) {
      // Any plan of the current incarnation knows the key columns.
      plan* pl = nullptr;
      for (auto& [k, v] : plans)
        if (v->st == &s && v->sch.incarnation == s.incarnation && !v->problem) pl = v.get();
      if (!pl) return make_error_code(errc::unknown_schema);
      statement tomb;
      if (tomb.prepare(db, "UPDATE edgecqrs_r_rows SET deleted=1, at_ms=?3 WHERE sid=?1 AND"
                           " key=?2") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      for (const auto& [key, version] : gone) {
        event ev;
        ev.kind = event_kind::remove;
        ev.row_version = version;
        if (!replica_detail::decode_key(key, ev.values) || ev.values.size() != pl->sch.pk.size())
          return make_error_code(errc::bad_value);
        if (s.opts.on_delete) {
          apply_ctx c;
          c.direct = true;
          change ch = make_change(*pl, ev, c);
          if (auto ec = s.opts.on_delete(ch)) return make_error_code(errc::handler_failed);
        } else if (!s.opts.local_table.empty()) {
          reset_guard g(pl->remove);
          for (std::size_t j = 0; j < ev.values.size(); ++j)
            pl->remove.bind_value(static_cast<int>(j + 1), ev.values[j]);
          if (pl->remove.step() != SQLITE_DONE) return make_error_code(errc::apply_failed);
        }
        reset_guard g(tomb);
        tomb.bind(1, s.sid);
        tomb.bind_blob(2, key.data(), key.size());
        tomb.bind(3, now());
        if (tomb.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
        ++delta.rows_removed_by_resync;
      }
    }
    raise_checkpoint(p, r.upto_seq);
    ++p.resync_done;
    p.resync_done_upto = r.upto_seq;
    if (p.resync_want <= r.upto_seq) p.resync_want = 0;
    return {};
  }

  std::error_code retry_dead(std::int64_t id, std::vector<std::int64_t>& more) {
    statement q;
    if (q.prepare(db, "SELECT topic, body FROM edgecqrs_r_dead WHERE id=?1") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    q.bind(1, id);
    int rc = q.step();
    if (rc == SQLITE_DONE) return make_error_code(errc::invalid_argument);
    if (rc != SQLITE_ROW) return make_error_code(errc::sqlite_error);
    std::string topic(q.col_text(0));
    std::string body(q.col_blob(1));
    q.reset();
    msg_opts mo;
    mo.ignore_expiry = true;
    mo.dead_letter_id = id;
    --st.messages;  // a retry is not a new arrival
    std::error_code ec = handle_message(
        topic, reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), mo, more);
    if (ec) return ec;
    statement del;
    if (del.prepare(db, "DELETE FROM edgecqrs_r_dead WHERE id=?1") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    del.bind(1, id);
    if (del.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    return {};
  }

  // Retries dead letters queued by schema arrivals (bounded by the dead-letter table).
  void drain_retries(std::vector<std::int64_t>& ids) {
    while (!ids.empty()) {
      std::int64_t id = ids.back();
      ids.pop_back();
      std::vector<std::int64_t> more;
      retry_dead(id, more);
    }
  }

  // ---- retries of failed events ----

  std::error_code run_due_retries() {
    msg_now = now();
    statement q;
    if (q.prepare(db, "SELECT id, sid, topic, body, attempts, first_ms FROM edgecqrs_r_retries"
                      " WHERE next_ms<=?1 ORDER BY next_ms LIMIT ?2") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    q.bind(1, steady());
    q.bind(2, max_retries_per_poll);
    struct due {
      std::int64_t id, sid;
      std::string topic, body;
      std::uint32_t attempts;
    };
    std::vector<due> list;
    while (q.step() == SQLITE_ROW)
      list.push_back({q.col_int(0), q.col_int(1), std::string(q.col_text(2)),
                      std::string(q.col_blob(3)), static_cast<std::uint32_t>(q.col_int(4))});
    q.reset();
    for (auto& d : list) {
      stream* s = nullptr;
      for (auto& x : streams)
        if (x->sid == d.sid) s = x.get();
      message m;
      std::error_code ec;
      std::string detail;
      plan* pl = nullptr;
      bool obsolete = false;
      if (!s) {
        ec = make_error_code(errc::unknown_stream);
      } else if ((ec = decode_message(reinterpret_cast<const std::uint8_t*>(d.body.data()),
                                      d.body.size(), m, opts.limits))) {
      } else if (m.events.size() != 1 || !(pl = find_plan(*s, m.schema_tag)) || pl->problem) {
        ec = make_error_code(errc::unknown_schema);
      } else if (!s->has_incarnation || pl->sch.incarnation != s->incarnation) {
        obsolete = true;  // from a master database this replica no longer follows
      }
      if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return make_error_code(errc::sqlite_error);
      outcome o = outcome::ignored;
      if (!ec && !obsolete) {
        apply_ctx c;
        c.direct = parse_topic(opts.topic_prefix, d.topic).kind == topic_kind::direct;
        c.seq = m.first_seq;
        if (exec(db, "SAVEPOINT ev") != SQLITE_OK) {
          exec(db, "ROLLBACK");
          return make_error_code(errc::sqlite_error);
        }
        ec = apply_event(*pl, m.events[0], c, o, detail);
        if (ec && sqlite3_get_autocommit(db)) return ec;  // rolled back by SQLite itself
        if (ec && ec != errc::handler_failed && storage_fault(sqlite3_errcode(db))) {
          // Not the event's fault: the attempt is not counted and the retry stays due; the next
          // poll tries again. Counted and described (not_committed), but not a poll() error, so
          // a daemon loop keeps running while the disk is full.
          exec(db, "ROLLBACK");
          (void)not_committed(d.topic, detail);
          return {};
        }
        exec(db, ec ? "ROLLBACK TO ev" : "RELEASE ev");
        if (ec) exec(db, "RELEASE ev");
      }
      std::error_code ec2;
      statement u;
      if (ec && detail.empty()) detail = ec.message();  // bound SQLITE_STATIC below
      const std::uint32_t attempts = d.attempts + 1;
      if (!ec || attempts >= opts.max_retries) {
        if (ec) {
          make_key_from(m, pl);
          ec2 = put_dead_letter(s ? s->cqrs_id : std::string(), d.topic, pl ? keybuf : "", ec,
                                detail.empty() ? ec.message() : detail, attempts, d.body.data(),
                                d.body.size(), 0);
        }
        if (!ec2 && u.prepare(db, "DELETE FROM edgecqrs_r_retries WHERE id=?1") != SQLITE_OK)
          ec2 = make_error_code(errc::sqlite_error);
        if (!ec2) u.bind(1, d.id);
      } else {
        std::int64_t delay = opts.retry_initial_ms;
        for (std::uint32_t k = 0; k < attempts && delay < opts.retry_max_ms; ++k) delay *= 2;
        delay = std::min(delay, opts.retry_max_ms);
        if (u.prepare(db, "UPDATE edgecqrs_r_retries SET attempts=?2, next_ms=?3, reason=?4,"
                          " detail=?5 WHERE id=?1") != SQLITE_OK)
          ec2 = make_error_code(errc::sqlite_error);
        else {
          u.bind(1, d.id);
          u.bind(2, attempts);
          u.bind(3, steady() + delay);
          u.bind(4, ec.value());
          u.bind_text(5, detail);
        }
      }
      if (!ec2 && u && u.step() != SQLITE_DONE) ec2 = make_error_code(errc::sqlite_error);
      u.reset();
      if (!ec2 && exec(db, "COMMIT") != SQLITE_OK) ec2 = make_error_code(errc::sqlite_error);
      if (ec2) {
        exec(db, "ROLLBACK");
        return ec2;
      }
      if (!ec) {
        ++st.retries_succeeded;
        if (o == outcome::applied) ++st.events_applied;
        else if (o == outcome::stale) ++st.skipped_stale;
        else if (o == outcome::duplicate) ++st.duplicates;
      }
    }
    return {};
  }

  void make_key_from(const message& m, const plan* pl) {
    keybuf.clear();
    if (pl && m.events.size() == 1) make_key(*pl, m.events[0]);
  }

  std::error_code prune_tombstones() {
    for (auto& s : streams) {
      statement d;
      if (d.prepare(db, "DELETE FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=1 AND at_ms<?2"
                        " AND seq<=?3") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      d.bind(1, s->sid);
      d.bind(2, now() - opts.tombstone_retention_ms);
      d.bind(3, static_cast<std::int64_t>(s->prog.checkpoint));
      if (d.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      st.tombstones_pruned += static_cast<std::uint64_t>(sqlite3_changes(db));
    }
    return {};
  }

  std::error_code poll_locked() {
    const std::int64_t t = steady();
    for (auto& sp : streams) {
      stream& s = *sp;
      // Another replica object on this database may have moved the stream (applied the other
      // half of a shared subscription, completed a re-sync): timers work from the persisted
      // state. A read that fails (busy) keeps the last known state until the next poll.
      if (!reload_stream(s)) {
        settle_resync(s);
        update_gap_state(s);
      }
      // A wanted re-sync (expired stream messages) is asked for until a session reaches it,
      // also after a restart.
      if (s.prog.resync_want > 0) want_resync(s, s.prog.resync_want);
      if (s.schema_wanted && t >= s.next_schema_ms) {
        queue_control(s, control_op::schema, 0, 0);
        s.schema_backoff_ms = std::min(s.schema_backoff_ms * 2, opts.request_backoff_max_ms);
        s.next_schema_ms = t + s.schema_backoff_ms;
      }
      if (s.resync_pending && t >= s.next_resync_ms) {
        queue_control(s, control_op::resync, 0, 0);
        s.resync_backoff_ms = std::min(s.resync_backoff_ms * 2,
                                       std::max(opts.request_backoff_max_ms, s.resync_backoff_ms));
        s.next_resync_ms = t + s.resync_backoff_ms;
      }
      if (s.gap_open && !s.resync_pending && t >= s.next_replay_ms) {
        // Each hole below the highest known seq, oldest first.
        std::uint64_t from = s.prog.checkpoint + 1;
        int sent = 0;
        for (const auto& [lo, hi] : s.prog.seen) {
          if (sent >= max_replays_per_poll) break;
          if (lo > from) {
            queue_control(s, control_op::replay, from, lo - 1);
            ++sent;
          }
          from = hi + 1;
        }
        if (sent < max_replays_per_poll && s.prog.head >= from)
          queue_control(s, control_op::replay, from, s.prog.head);
        s.replay_backoff_ms = std::min(std::max<std::int64_t>(s.replay_backoff_ms, 1) * 2,
                                       opts.request_backoff_max_ms);
        s.next_replay_ms = t + s.replay_backoff_ms;
      }
    }
    if (auto ec = run_due_retries()) return ec;
    if (t >= next_prune_ms) {
      next_prune_ms = t + prune_interval_ms;
      if (auto ec = prune_tombstones()) return ec;
    }
    return {};
  }

  // Publishes queued control requests; called without the lock held.
  void flush_controls(std::unique_lock<std::mutex>& lk) {
    auto out = std::move(controls);
    controls.clear();
    transport* t = tp;
    lk.unlock();
    if (!t) return;
    publish_options po;
    for (auto& [topic, bytes] : out) t->publish(topic, bytes.data(), bytes.size(), po, nullptr);
  }

  std::vector<std::string> topics_of(const stream& s) const {
    std::string ev = event_topic(opts.topic_prefix, s.cqrs_id);
    if (!opts.shared_group.empty()) ev = "$share/" + opts.shared_group + "/" + ev;
    return {ev, direct_topic(opts.topic_prefix, opts.name, s.cqrs_id),
            schema_topic(opts.topic_prefix, s.cqrs_id)};
  }
};

replica::replica(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
replica::~replica() { detach(); }

std::error_code replica::open(sqlite3* db, replica_options opts, std::unique_ptr<replica>& out) {
  if (!db) return make_error_code(errc::invalid_argument);
  if (auto ec = validate_replica_name(opts.name)) return ec;
  if (auto ec = validate_topic_prefix(opts.topic_prefix)) return ec;
  if (!opts.shared_group.empty())
    if (auto ec = validate_cqrs_id(opts.shared_group)) return make_error_code(errc::invalid_argument);
  if (opts.max_seen_ranges == 0 || opts.max_dead_letters == 0 || opts.reorder_window_ms < 0 ||
      opts.request_backoff_initial_ms <= 0 || opts.retry_initial_ms <= 0 ||
      opts.retry_max_ms < opts.retry_initial_ms)
    return make_error_code(errc::invalid_argument);
  auto p = std::make_unique<impl>();
  p->db = db;
  p->time = opts.time ? opts.time : &system_clock();
  p->opts = std::move(opts);
  if (auto ec = p->init()) return ec;
  out.reset(new replica(std::move(p)));
  return {};
}

std::error_code replica::open(const std::string& path, replica_options opts,
                              std::unique_ptr<replica>& out) {
  sqlite3* db = nullptr;
  // NOMUTEX: the replica's own mutex already serializes every use of its connection.
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    sqlite3_close_v2(db);
    return make_error_code(errc::sqlite_error);
  }
  sqlite3_busy_timeout(db, 5000);
  // WAL + NORMAL: a commit is durable against a process crash; the last commits may be lost on
  // power failure, which gap repair then refetches from the master.
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, "PRAGMA synchronous=NORMAL");
  std::error_code ec = open(db, std::move(opts), out);
  if (ec) {
    sqlite3_close_v2(db);
    return ec;
  }
  out->impl_->owns_db = true;
  return {};
}

std::error_code replica::register_table(std::string_view cqrs_id, replica_table_options topts) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  impl& I = *impl_;
  if (auto ec = validate_cqrs_id(cqrs_id)) return ec;
  if (I.by_id.count(std::string(cqrs_id))) return make_error_code(errc::duplicate_cqrs_id);
  const bool db_mode = !topts.local_table.empty();
  if (!db_mode && !topts.on_create && !topts.on_update && !topts.on_delete)
    return make_error_code(errc::invalid_argument);
  auto s = std::make_unique<stream>();
  s->cqrs_id = std::string(cqrs_id);
  if (db_mode) {
    if (auto ec = I.load_local_columns(topts.local_table, s->local)) return ec;
    for (const auto& [from, to] : topts.mapping) {
      if (from.empty()) return make_error_code(errc::invalid_argument);
      if (to.empty()) continue;
      bool found = false;
      for (const auto& c : s->local) found = found || c.name == to;
      if (!found) {
        I.last_error = "mapping target '" + to + "' is not a column of '" + topts.local_table + "'";
        return make_error_code(errc::unknown_column);
      }
    }
  }
  s->opts = std::move(topts);
  statement q;
  if (q.prepare(I.db, "INSERT INTO edgecqrs_r_streams(cqrs_id) VALUES(?1) ON CONFLICT(cqrs_id)"
                      " DO NOTHING") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind_text(1, cqrs_id);
  if (q.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  q.reset();
  if (q.prepare(I.db, "SELECT sid FROM edgecqrs_r_streams WHERE cqrs_id=?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind_text(1, cqrs_id);
  if (q.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
  s->sid = q.col_int(0);
  q.reset();
  if (auto ec = I.reload_stream(*s)) return ec;
  stream* raw = s.get();
  I.by_id[raw->cqrs_id] = raw;
  I.streams.push_back(std::move(s));
  I.update_gap_state(*raw);
  if (I.tp) {
    transport* t = I.tp;
    auto topics = I.topics_of(*raw);
    lk.unlock();
    for (const auto& topic : topics) {
      auto ec = t->subscribe(topic, [this](const incoming_message& m) {
        on_message(m.topic, m.data, m.size);
      });
      if (ec) return ec;
    }
  }
  return {};
}

std::error_code replica::attach(transport& t) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  impl_->tp = &t;
  std::vector<std::string> topics;
  for (const auto& s : impl_->streams)
    for (auto& topic : impl_->topics_of(*s)) topics.push_back(std::move(topic));
  lk.unlock();
  for (const auto& topic : topics) {
    auto ec = t.subscribe(topic, [this](const incoming_message& m) {
      on_message(m.topic, m.data, m.size);
    });
    if (ec) return ec;
  }
  return {};
}

void replica::detach() {
  std::unique_lock<std::mutex> lk(impl_->mu);
  transport* t = impl_->tp;
  impl_->tp = nullptr;
  impl_->controls.clear();
  std::vector<std::string> topics;
  for (const auto& s : impl_->streams)
    for (auto& topic : impl_->topics_of(*s)) topics.push_back(std::move(topic));
  lk.unlock();
  if (t)
    for (const auto& topic : topics) t->unsubscribe(topic);
}

std::error_code replica::on_message(std::string_view topic, const std::uint8_t* data,
                                    std::size_t size) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  std::vector<std::int64_t> more;
  std::error_code ec = impl_->handle_message(topic, data, size, {}, more);
  impl_->drain_retries(more);
  impl_->flush_controls(lk);
  return ec;
}

std::error_code replica::poll() {
  std::unique_lock<std::mutex> lk(impl_->mu);
  std::error_code ec = impl_->poll_locked();
  impl_->flush_controls(lk);
  return ec;
}

std::error_code replica::request_resync(std::string_view cqrs_id) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  auto it = impl_->by_id.find(std::string(cqrs_id));
  if (it == impl_->by_id.end()) return make_error_code(errc::unknown_stream);
  stream& s = *it->second;
  impl_->reload_stream(s);  // best effort: the request stands either way
  s.resync_pending = false;
  // Satisfied only by a session that read the master after what this replica knows of.
  impl_->want_resync(s, std::max(s.prog.head, s.prog.resync_want));
  impl_->flush_controls(lk);
  return {};
}

replica_stats replica::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->st;
}

std::error_code replica::status(std::string_view cqrs_id, stream_status& out) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  auto it = impl_->by_id.find(std::string(cqrs_id));
  if (it == impl_->by_id.end()) return make_error_code(errc::unknown_stream);
  const stream& s = *it->second;
  out = stream_status{};
  out.cqrs_id = s.cqrs_id;
  out.checkpoint = s.prog.checkpoint;
  out.head = s.prog.head;
  out.seen_ranges = s.prog.seen.size();
  out.has_incarnation = s.has_incarnation;
  out.resync_session = s.prog.resync_session;
  out.resync_pending = s.resync_pending;
  return {};
}

std::error_code replica::list_dead_letters(std::vector<dead_letter>& out, std::size_t offset,
                                           std::size_t limit) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  out.clear();
  statement q;
  if (q.prepare(impl_->db, "SELECT id, at_ms, cqrs_id, topic, key, reason, category, detail,"
                           " attempts, body FROM edgecqrs_r_dead ORDER BY id LIMIT ?1 OFFSET ?2") !=
      SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  // On 32-bit targets size_t is narrower than int64: widen before clamping.
  const std::uint64_t lim = limit;
  q.bind(1, static_cast<std::int64_t>(std::min<std::uint64_t>(lim, INT64_MAX)));
  q.bind(2, static_cast<std::int64_t>(offset));
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    dead_letter d;
    d.id = q.col_int(0);
    d.at_ms = q.col_int(1);
    d.cqrs_id = std::string(q.col_text(2));
    d.topic = std::string(q.col_text(3));
    replica_detail::decode_key(q.col_blob(4), d.key);
    // Only our own category is stored by this library; others are reported generically.
    if (q.col_text(6) == edgecqrs_category().name())
      d.reason = std::error_code(static_cast<int>(q.col_int(5)), edgecqrs_category());
    else
      d.reason = make_error_code(errc::sqlite_error);
    d.detail = std::string(q.col_text(7));
    d.attempts = static_cast<std::uint32_t>(q.col_int(8));
    d.raw = std::string(q.col_blob(9));
    out.push_back(std::move(d));
  }
  return rc == SQLITE_DONE ? std::error_code{} : make_error_code(errc::sqlite_error);
}

std::error_code replica::retry_dead_letter(std::int64_t id) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  std::vector<std::int64_t> more;
  std::error_code ec = impl_->retry_dead(id, more);
  impl_->drain_retries(more);
  impl_->flush_controls(lk);
  return ec;
}

std::error_code replica::retry_all_dead_letters(std::size_t& still_failing) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  still_failing = 0;
  std::vector<std::int64_t> ids;
  {
    statement q;
    if (q.prepare(impl_->db, "SELECT id FROM edgecqrs_r_dead ORDER BY id") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    while (q.step() == SQLITE_ROW) ids.push_back(q.col_int(0));
  }
  for (std::int64_t id : ids) {
    std::vector<std::int64_t> more;
    if (impl_->retry_dead(id, more)) ++still_failing;
    impl_->drain_retries(more);
  }
  impl_->flush_controls(lk);
  return {};
}

std::error_code replica::purge_dead_letter(std::int64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "DELETE FROM edgecqrs_r_dead WHERE id=?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, id);
  if (q.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  return sqlite3_changes(impl_->db) ? std::error_code{} : make_error_code(errc::invalid_argument);
}

std::error_code replica::purge_dead_letters(std::int64_t older_than_ms) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "DELETE FROM edgecqrs_r_dead WHERE at_ms<?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, older_than_ms);
  return q.step() == SQLITE_DONE ? std::error_code{} : make_error_code(errc::sqlite_error);
}

std::error_code replica::dead_letter_count(std::size_t& out) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "SELECT count(*) FROM edgecqrs_r_dead") != SQLITE_OK ||
      q.step() != SQLITE_ROW)
    return make_error_code(errc::sqlite_error);
  out = static_cast<std::size_t>(q.col_int(0));
  return {};
}

std::error_code replica::pending_retries(std::size_t& out) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "SELECT count(*) FROM edgecqrs_r_retries") != SQLITE_OK ||
      q.step() != SQLITE_ROW)
    return make_error_code(errc::sqlite_error);
  out = static_cast<std::size_t>(q.col_int(0));
  return {};
}

std::string replica::last_error() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->last_error;
}

}  // namespace edgecqrs

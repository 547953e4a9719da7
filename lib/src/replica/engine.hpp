// The replica engine (private to lib/src/replica/): one replica::impl whose jobs live in these
// files, in the order a message flows through them:
//   pipeline.cpp      topic -> decode -> whole-message checks -> one transaction per message
//   apply.cpp         one event: version check, mapped upsert/delete or handlers, tombstones
//   streams.cpp       stream progress: seen ranges, checkpoint, gaps; persisted per stream
//   resync.cpp        replay/re-sync/schema requests and their timers; re-sync sessions complete
//   schemas.cpp       schema messages and plans (how remote columns land in the local table)
//   retries.cpp       failed events retried with backoff, then dead-lettered
//   dead_letters.cpp  dead-letter storage, and the public dead-letter API
//   replica.cpp       the public replica API: open (tables, statements), register, attach, poll
// key_codec.hpp encodes row keys. The folder compiles as one unit by default
// (EDGECQRS_UNITY_ENGINES) and file by file under ASan+UBSan, so what several files use is
// declared here in edgecqrs::replica_detail, and no two files define the same internal name.
//
// The replica: decode -> validate against the master's schema -> apply in one transaction per
// message -> commit, with per-row versions, tombstones, stream checkpoints and gap repair,
// retries and dead letters. The protocol is docs/replication.md.
#pragma once

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "edgecqrs/errors.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/replica.hpp"
#include "replica/key_codec.hpp"
#include "sqlite_util.hpp"

namespace edgecqrs {

namespace replica_detail {

using detail::exec;
using detail::quote_ident;
using reset_guard = detail::statement_reset;
using detail::statement;

constexpr std::size_t max_pending_controls = 64;
constexpr int max_replays_per_poll = 8;
constexpr int max_retries_per_poll = 64;
constexpr std::int64_t prune_interval_ms = 60000;
constexpr std::size_t max_schemas_per_stream = 32;
constexpr std::uint64_t broken_run = std::uint64_t{1} << 62;
constexpr std::uint64_t finished_run = broken_run + 1;
constexpr std::size_t max_skipped_sessions = 8;
constexpr std::size_t max_asked_sessions = 8;

// A re-sync request this replica (or another object on its database) sent: the master answers
// with session id = nonce (docs/replication.md §4).
struct asked_session {
  std::uint64_t nonce = 0;
  std::uint64_t index = 0;  // 1-based count of requests of the stream
  std::uint64_t floor = 0;  // max(checkpoint, last completed upto_seq) when asked
  std::int64_t at_ms = 0;   // wall time of the request
  bool done = false;        // answered by a completed session (this one or a newer one)
  // Asked by the operator for an authoritative repair (request_resync(id, true)): only the
  // session answering this request applies the master's rows whatever the replica holds.
  bool authoritative = false;
};

// Versions and seqs a master can produce (one per committed change / event): at or above 2^53
// a message is hostile or corrupt (docs/replication.md §8).
constexpr std::uint64_t max_wire_counter = (std::uint64_t{1} << 53) - 1;

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
  // ignored, the wanted re-sync (0: none; else the lowest request index whose session satisfies
  // it: a session asked for after the cause read the master after it), and the requests sent
  // (the last few; only their sessions are accepted) with their count.
  std::int64_t resync_at_ms = 0;
  std::uint64_t resync_done = 0;
  std::uint64_t resync_done_upto = 0;
  std::vector<std::uint64_t> resync_skip;
  std::uint64_t resync_want = 0;
  std::vector<asked_session> resync_asked;
  std::uint64_t resync_asks = 0;
  bool resync_auth = false;  // the want is authoritative: its requests are marked so
};

// Raises the stream's re-sync want (persisted with the stream): `fresh` when the cause needs a
// session asked for after it (expired data, new incarnation, operator), else any session asked
// for while it stands (coalesced).
inline void raise_want(progress& p, bool fresh) {
  if (fresh || p.resync_want == 0) p.resync_want = p.resync_asks + 1;
}

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
  bool resync_pending = false;  // prog.resync_want != 0 as last seen
  std::int64_t next_resync_ms = 0;
  std::int64_t resync_backoff_ms = 0;
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
  std::vector<std::string> local_name;     // per remote column; empty: not mapped
  statement upsert;                        // DB mode
  statement remove;                        // DB mode
  std::vector<std::uint32_t> upsert_cols;  // remote indices bound by `upsert`, in order
  std::vector<std::uint8_t> key_types;     // per key column: key_type bits it accepts
};

// apply.cpp: key values checked against the declared types (docs/replication.md §8). A key
// value's class, as bits: the declared affinity of a key column accepts a set of them.
enum key_type : std::uint8_t {
  key_int = 1,
  key_real_frac = 2,      // a real SQLite keeps as real in any column (not integral, or inf)
  key_real_integral = 4,  // 5.0: INTEGER/NUMERIC affinity would make it the integer 5
  key_text = 8,           // text that does not look like a number: no affinity converts it
  key_blob = 16,
  key_text_numeric = 32,  // text such as "6" or " 1e3": INTEGER/NUMERIC/REAL affinity converts it
};
std::uint8_t key_types_of(std::string_view decl_type, bool rowid_alias);
// Empty when every key value of `ev` fits; otherwise what is wrong, for the dead letter.
std::string key_problem(const plan& pl, const event& ev);

// A storage fault (disk full, I/O error, lock not obtained within the busy timeout, out of
// memory, read-only file) is no fault of the event being applied: the whole message is left
// uncommitted instead of being retried per event or dead-lettered, and gap repair fetches it
// again once the database accepts writes (tests/reliability/README.md, "Storage faults").
inline bool storage_fault(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return true;
    default:
      return false;
  }
}

enum class topic_kind { event, direct, schema, other };

struct parsed_topic {
  topic_kind kind = topic_kind::other;
  std::string_view cqrs_id;
  std::string_view replica;
};

// pipeline.cpp
parsed_topic parse_topic(std::string_view prefix, std::string_view t);

enum class outcome { applied, stale, duplicate, ignored };

// streams.cpp
// What a message tells about the stream: a heartbeat announces the head, events mark their seqs.
void advance(progress& p, const message& m, std::size_t max_ranges);
void raise_checkpoint(progress& p, std::uint64_t to);

}  // namespace replica_detail

// The files of this folder use the names above unqualified (as when they were one file).
using namespace replica_detail;

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
  std::size_t tombstones_added = 0;  // since the last prune (a burst prunes early)

  statement q_row_get, q_row_put, q_row_cas, q_row_session, q_stream_put, q_stream_get,
      q_schema_get, q_schema_put, q_retry_put, q_dead_put, q_dead_trim;
  std::string keybuf;
  std::vector<std::uint8_t> encbuf;

  std::int64_t now() { return time->now_ms(); }
  std::int64_t msg_now = 0;  // wall time of the message being applied (read once per message)
  std::int64_t steady() { return time->steady_ms(); }
  std::int64_t resync_initial_backoff() const {
    return std::max<std::int64_t>(opts.reorder_window_ms * 5, 10000);
  }

  struct apply_ctx {
    bool direct = false;
    std::uint64_t seq = 0;      // stream seq of the event (0: sync)
    std::uint64_t session = 0;  // re-sync session to mark rows with (0: none)
    bool authoritative = false;  // an authoritative session: the master's row wins
    replica_stats* repaired = nullptr;  // counts what an authoritative session overrode
  };

  struct msg_opts {
    bool ignore_expiry = false;       // an operator retrying a dead letter
    std::int64_t dead_letter_id = 0;  // update this dead letter instead of adding one
  };

  // ---- the message pipeline (pipeline.cpp) ----

  std::error_code commit_or_rollback(std::error_code ec, std::string_view topic);
  std::error_code not_committed(std::string_view topic, std::string why = {},
                                std::error_code ec = make_error_code(errc::sqlite_error));
  std::error_code handle_message(std::string_view topic, const std::uint8_t* data, std::size_t size,
                                 const msg_opts& mo, std::vector<std::int64_t>& to_retry);

  // ---- applying one event (apply.cpp) ----

  std::string_view make_key(const plan& pl, const event& ev);
  change make_change(const plan& pl, const event& ev, const apply_ctx& c);
  std::error_code mark_session(const stream& s, std::string_view key, std::uint64_t session);
  std::error_code apply_event(plan& pl, const event& ev, const apply_ctx& c, outcome& out,
                              std::string& detail);
  void count(outcome o, replica_stats& d);
  std::error_code prune_tombstones();

  // ---- stream progress (streams.cpp) ----

  std::error_code save_stream(const stream& s, const progress& p);
  std::error_code reload_stream(stream& s);
  void update_gap_state(stream& s);

  // ---- control requests and re-sync sessions (resync.cpp) ----

  void queue_control(const stream& s, control_op op, std::uint64_t from, std::uint64_t to);
  void want_schema(stream& s);
  std::error_code want_resync(stream& s, bool fresh, bool authoritative = false);
  void settle_resync(stream& s);
  void ask_resync(stream& s);
  bool plausible_seq(const stream& s, const message& m) const;
  std::error_code finish_resync(stream& s, progress& p, const resync_marker& r,
                                const asked_session& a, replica_stats& delta);
  std::error_code poll_locked();
  void flush_controls(std::unique_lock<std::mutex>& lk);

  // ---- schemas and plans (schemas.cpp) ----

  std::error_code load_local_columns(const std::string& table, std::vector<local_column>& out);
  void build_plan(plan& pl);
  plan* find_plan(stream& s, std::uint32_t tag);
  std::error_code handle_schema(stream& s, std::string_view topic, const std::uint8_t* data,
                                std::size_t size, const msg_opts& mo,
                                std::vector<std::int64_t>& to_retry);

  // ---- retries of failed events (retries.cpp) ----

  std::error_code encode_single(const message& m, std::size_t i, std::vector<std::uint8_t>& out);
  std::error_code schedule_retry(stream& s, std::string_view topic, const message& m, std::size_t i,
                                 std::error_code reason, const std::string& detail);
  std::error_code run_due_retries();
  void make_key_from(const message& m, const plan* pl);

  // ---- dead letters (dead_letters.cpp) ----

  std::error_code put_dead_letter(std::string_view cqrs_id, std::string_view topic,
                                  std::string_view key, std::error_code reason,
                                  std::string_view detail, std::uint32_t attempts, const void* body,
                                  std::size_t size, std::int64_t existing_id);
  std::error_code dead_letter_message(std::string_view cqrs_id, std::string_view topic,
                                      std::error_code reason, std::string_view detail,
                                      const std::uint8_t* data, std::size_t size,
                                      std::int64_t existing_id, stream* s, const message* m);
  std::error_code retry_dead(std::int64_t id, std::vector<std::int64_t>& more);
  void drain_retries(std::vector<std::int64_t>& ids);

  // ---- opening (replica.cpp) ----

  ~impl();
  std::error_code init();
  std::vector<std::string> topics_of(const stream& s) const;
};

}  // namespace edgecqrs

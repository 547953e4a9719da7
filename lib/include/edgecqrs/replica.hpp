// The replica: applies event messages from a master into a local SQLite database, idempotently
// (per-row versions and tombstones), repairs stream gaps by asking the master (replay / re-sync),
// retries failures with backoff and keeps what it cannot apply as dead letters.
// Protocol: docs/replication.md. Wire format: docs/wire-format.md. Topics: docs/topics.md.
//
// Errors: std::error_code (edgecqrs::errc, 300-399 for the replica); nothing throws.
// Thread-safety: every public member function takes an internal mutex, so the transport's
// message callback and the application's poll() may run on different threads. Handlers run under
// that mutex: they must not call back into the replica.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/export.hpp"
#include "edgecqrs/names.hpp"
#include "edgecqrs/transport.hpp"
#include "edgecqrs/value.hpp"

struct sqlite3;

namespace edgecqrs {

// What to do with a remote column that maps to no local column.
enum class unknown_column_policy : std::uint8_t {
  ignore,   // drop its values (a master that adds a column keeps working)
  reject,   // the schema is refused: its events are dead-lettered with errc::schema_mismatch
};

// One local column and its value, as handed to handlers. Views are valid during the call only.
struct column_value {
  std::string_view column;   // local column name
  const value* v = nullptr;
};

// One change, as handed to a custom handler.
struct change {
  std::string_view cqrs_id;
  event_kind kind = event_kind::save;   // save, remove or sync
  bool is_sync = false;                 // kind == sync (manual sync, direct sync, re-sync)
  bool direct = false;                  // arrived on this replica's direct topic
  std::uint64_t row_version = 0;
  std::int64_t updated_ms = 0;
  std::string_view correlation_id;
  // Mapped local columns: all mapped columns for save/sync, the key columns for delete.
  std::vector<column_value> values;
  // Old values of tracked columns that changed (mapped; unmapped ones are left out).
  std::vector<column_value> previous;
  // Application metadata; nullptr unless replica_table_options::pass_meta.
  const std::vector<std::pair<std::string, value>>* meta = nullptr;
  // The replica's connection, inside the apply transaction (a savepoint is open around the
  // handler on the retry path); nullptr in no-DB mode. Do not COMMIT or ROLLBACK on it.
  sqlite3* db = nullptr;
};

// A handler returns an empty error_code on success. Any error rolls the event back; the event is
// then retried with backoff and dead-lettered after replica_options::max_retries.
using change_handler = std::function<std::error_code(const change&)>;

struct replica_table_options {
  // Local table to write. Empty: no-DB mode (only handlers run; versions are still tracked).
  std::string local_table;
  // remote column -> local column. Remote columns not listed map to the local column of the same
  // name when it exists. Map a remote column to "" to drop it.
  std::vector<std::pair<std::string, std::string>> mapping;
  unknown_column_policy unknown_columns = unknown_column_policy::ignore;
  // Ignore sync events that arrive on the broadcast topic (only syncs addressed to this replica
  // by name are applied). Re-sync answers always arrive direct.
  bool only_direct_syncs = false;
  // Hand the event's meta map to handlers.
  bool pass_meta = false;
  // Custom handlers. When set, they replace the library's SQL for that operation. A save/sync of
  // a key the replica does not have (or has a tombstone for) is a create, otherwise an update.
  change_handler on_create;
  change_handler on_update;
  change_handler on_delete;
};

struct replica_options {
  std::string name;                                 // replica name (docs/topics.md names)
  std::string topic_prefix = std::string(default_topic_prefix);
  decode_limits limits;                             // outside input limits
  clock* time = nullptr;                            // not owned; nullptr: system_clock()
  std::string shared_group;                         // non-empty: subscribe events via $share/<g>/
  // Gap repair (docs/replication.md §3).
  std::int64_t reorder_window_ms = 2000;
  std::int64_t request_backoff_initial_ms = 1000;
  std::int64_t request_backoff_max_ms = 60000;
  std::size_t max_seen_ranges = 256;                // applied ranges kept above the checkpoint
  // Retries of failed events (state in SQLite, survives restarts).
  std::uint32_t max_retries = 8;
  std::int64_t retry_initial_ms = 1000;
  std::int64_t retry_max_ms = 300000;
  std::size_t max_pending_retries = 10000;          // beyond: dead-lettered at once
  // Dead letters: bounded; when full the oldest are dropped (counted in stats).
  std::size_t max_dead_letters = 10000;
  std::size_t max_dead_letter_bytes = 16u << 20;
  // Tombstones are pruned once older than this and below the stream checkpoint.
  std::int64_t tombstone_retention_ms = 7LL * 24 * 3600 * 1000;
  // A stream message (or heartbeat) whose seq lies more than this beyond the highest seq the
  // replica knows of the stream (head or checkpoint) is implausible: dead-lettered with
  // errc::integer_out_of_range, changing no stream state. A re-sync session whose upto_seq lies
  // that far beyond it fails (docs/replication.md §3, §4). Seqs, re-sync upto_seqs and versions
  // at or above 2^53 are always rejected (§8). Keep it above the number of events a master can
  // produce while a replica is away; a replica that really missed more gets back by
  // request_resync(). 0 is invalid (open() fails with invalid_argument).
  std::uint64_t max_seq_ahead = std::uint64_t{1} << 32;
  // Tombstones kept per stream: beyond, the oldest are pruned (counted in
  // replica_stats::tombstones_dropped) even before the retention time or the checkpoint passed
  // them (docs/replication.md §2 says what that risks). 0 is invalid.
  std::size_t max_tombstones = 100000;
  // Bytes of a message kept in one dead letter: a longer message keeps this prefix, and
  // dead_letter::original_size / truncated say so (a truncated letter cannot be retried).
  // 0 is invalid. The default is the decoder's default message limit, so every message that could
  // decode is kept whole.
  std::size_t max_dead_letter_body = 256u << 10;
};

// Counters since the replica object was opened (not persisted).
struct replica_stats {
  std::uint64_t messages = 0;            // messages handled by on_message
  std::uint64_t events_applied = 0;      // events that changed state (SQL or handler)
  std::uint64_t skipped_stale = 0;       // older version than the replica's
  std::uint64_t duplicates = 0;          // equal version (redelivery)
  std::uint64_t ignored = 0;             // not for this replica, old incarnation, only-direct
  std::uint64_t gaps_detected = 0;       // a stream went from gap-free to having a gap
  std::uint64_t gaps_repaired = 0;       // ... and back
  std::uint64_t replay_requests = 0;
  std::uint64_t resync_requests = 0;
  std::uint64_t schema_requests = 0;
  std::uint64_t resyncs_completed = 0;
  std::uint64_t rows_removed_by_resync = 0;
  std::uint64_t retries_scheduled = 0;
  std::uint64_t retries_succeeded = 0;
  std::uint64_t dead_letters = 0;        // written to the dead-letter table
  std::uint64_t dead_letters_dropped = 0;  // oldest dropped to honour the bound
  std::uint64_t tombstones_pruned = 0;
  std::uint64_t commit_failures = 0;     // the message was not made durable (gap repair refetches)
  std::uint64_t resync_parts_rejected = 0;  // re-sync parts of sessions this replica did not ask
                                            // for (or older than a completed one): not applied
  std::uint64_t tombstones_dropped = 0;  // pruned early to honour max_tombstones
  // Authoritative re-syncs (request_resync(id, true)): rows whose higher version the master's
  // row replaced, and tombstones the master's row cleared (rows removed: rows_removed_by_resync).
  std::uint64_t rows_overwritten_by_resync = 0;
  std::uint64_t tombstones_cleared_by_resync = 0;
};

struct dead_letter {
  std::int64_t id = 0;
  std::int64_t at_ms = 0;
  std::string cqrs_id;          // from the topic (may be empty for an unparsable topic)
  std::string topic;
  std::vector<value> key;       // primary-key values of the failed event (empty: whole message)
  std::error_code reason;
  std::string detail;           // readable reason
  std::uint32_t attempts = 0;
  std::string raw;              // the message bytes (one event for a failed event)
  std::uint64_t original_size = 0;  // size of the message; raw keeps a prefix when larger
  bool truncated = false;           // raw is a prefix (max_dead_letter_body)
};

struct stream_status {
  std::string cqrs_id;
  std::uint64_t checkpoint = 0;  // every seq <= checkpoint applied
  std::uint64_t head = 0;        // highest seq known to exist
  std::size_t seen_ranges = 0;   // applied ranges above the checkpoint
  bool has_incarnation = false;
  std::uint64_t resync_session = 0;
  bool resync_pending = false;
};

class replica {
 public:
  // Attaches to `db`, which the caller keeps open for the replica's lifetime and does not use
  // concurrently. Creates the replica's bookkeeping tables (edgecqrs_r_*) if needed.
  // Errors: invalid_replica_name, invalid_topic_prefix, invalid_argument, sqlite_error.
  EDGECQRS_API static std::error_code open(sqlite3* db, replica_options opts,
                                           std::unique_ptr<replica>& out);
  // Opens (creating) the database file at `path`; the replica owns the connection (WAL mode).
  EDGECQRS_API static std::error_code open(const std::string& path, replica_options opts,
                                           std::unique_ptr<replica>& out);
  // Unsubscribes from the attached transport (see attach) and closes an owned connection.
  EDGECQRS_API ~replica();
  replica(const replica&) = delete;
  replica& operator=(const replica&) = delete;

  // Registers a stream. Validates the CQRS_ID, the local table and every mapped local column
  // against the real table. Errors: invalid_cqrs_id, duplicate_cqrs_id, unknown_table,
  // unknown_column, invalid_argument (no table and no handler), sqlite_error.
  EDGECQRS_API std::error_code register_table(std::string_view cqrs_id, replica_table_options opts);

  // Subscribes the event, direct and schema topics of every registered stream (and of streams
  // registered later) on `t`, and uses `t` for control requests. `t` must outlive the replica or
  // a call to detach(). Errors: subscribe_failed and the transport's own.
  EDGECQRS_API std::error_code attach(transport& t);
  EDGECQRS_API void detach();

  // Handles one incoming message: decodes, validates and applies it and commits before returning
  // (so the transport may acknowledge it). Returns what happened to it: empty when applied (or
  // harmlessly skipped); a reason when it was dead-lettered, ignored or could not be committed.
  EDGECQRS_API std::error_code on_message(std::string_view topic, const std::uint8_t* data,
                                          std::size_t size);

  // Timers: gap replay / re-sync / schema requests, due retries, tombstone pruning. Call it from
  // the application loop (every 100 ms or so). Errors: sqlite_error.
  EDGECQRS_API std::error_code poll();

  // Asks the master for a full re-sync of a stream (also done automatically, docs/replication.md):
  // the want is stored with the stream and asked for until a session requested after this call
  // completes, also after a restart. Errors: unknown_stream, sqlite_error (the want could not be
  // stored; nothing was asked).
  EDGECQRS_API std::error_code request_resync(std::string_view cqrs_id);
  // The same, and when `authoritative` an operator's repair: only the session answering a
  // request sent for this want (its nonce is stored with the stream, so it survives a restart;
  // a forged or replayed session never is) applies the master's rows over tombstones and higher
  // replica versions (taking the master's versions), removes every row it did not carry that no
  // stream event touched since the request, skips the floor check (a master restored from a
  // backup went back), and sets the checkpoint and head to its upto_seq. Counted in
  // replica_stats (rows_overwritten_by_resync, tombstones_cleared_by_resync,
  // rows_removed_by_resync). Errors: as above.
  EDGECQRS_API std::error_code request_resync(std::string_view cqrs_id, bool authoritative);

  EDGECQRS_API replica_stats stats() const;
  EDGECQRS_API std::error_code status(std::string_view cqrs_id, stream_status& out) const;

  // Dead letters, oldest first. retry re-runs a dead letter through on_message's pipeline and
  // removes it when it applies (it stays, with the new reason, when it fails again).
  EDGECQRS_API std::error_code list_dead_letters(std::vector<dead_letter>& out,
                                                 std::size_t offset = 0,
                                                 std::size_t limit = 100) const;
  EDGECQRS_API std::error_code retry_dead_letter(std::int64_t id);
  EDGECQRS_API std::error_code retry_all_dead_letters(std::size_t& still_failing);
  EDGECQRS_API std::error_code purge_dead_letter(std::int64_t id);
  EDGECQRS_API std::error_code purge_dead_letters(std::int64_t older_than_ms = INT64_MAX);
  EDGECQRS_API std::error_code dead_letter_count(std::size_t& out) const;

  // Pending retries (failed events waiting for their next attempt).
  EDGECQRS_API std::error_code pending_retries(std::size_t& out) const;

  // The last schema problem (missing required column, rejected unknown column) or the last
  // message that could not be committed (storage fault: disk full, database locked), readable.
  EDGECQRS_API std::string last_error() const;

  struct impl;

 private:
  explicit replica(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace edgecqrs

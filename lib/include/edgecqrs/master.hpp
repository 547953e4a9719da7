// The master side: captures committed changes of registered SQLite tables into a durable outbox
// (same transaction) and publishes them through a transport (docs/capture.md,
// docs/replication.md, docs/wire-format.md).
//
// Errors: every fallible call returns std::error_code (edgecqrs::errc 200-299 mostly; SQLite
// failures are errc::sqlite_error with the SQLite message in last_error_message()). Never throws.
//
// Thread-safety: begin()..commit() and poll() serialize on an internal lock held for the whole
// transaction, so the application may write through the transaction API from one thread while a
// background publisher (start()) or another thread calls poll(); do not run other explicit
// transactions on the connection then. Transport callbacks (publish completions, control
// requests) may arrive on any thread: they only queue under a small lock and never touch SQLite.
// stats(), head_seq() and schema_of() may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "edgecqrs/clock.hpp"
#include "edgecqrs/event.hpp"
#include "edgecqrs/export.hpp"
#include "edgecqrs/transport.hpp"
#include "edgecqrs/value.hpp"

struct sqlite3;

namespace edgecqrs {

// Limits and timings, with defaults fit for a 64 MB device. New fields are only appended.
struct master_config {
  std::string topic_prefix = std::string("edgecqrs");
  // Outbox limit on records not yet acknowledged. Policy when full: the commit that would exceed
  // it fails with errc::outbox_full and is rolled back (nothing is ever dropped).
  std::size_t outbox_max_records = 100000;
  std::size_t outbox_max_bytes = 32 * 1024 * 1024;
  // Acknowledged stream records kept for replay requests; the oldest are pruned first.
  std::size_t replay_keep_records = 10000;
  std::size_t replay_keep_bytes = 4 * 1024 * 1024;
  // One outbox record holds at most this many events / bytes (a large transaction becomes
  // several records, all written in the same transaction). A row whose own event exceeds
  // max_record_bytes is refused at commit (errc::too_large, rolled back; last_error_message()
  // names table, key and size). Replicas' decode_limits must be at least max_string_bytes >=
  // max_record_bytes, max_items >= max(max_record_bytes, 65536) and max_message_bytes >=
  // max(max_message_bytes, max_record_bytes) + 64 (docs/capture.md).
  std::size_t max_record_events = 1024;
  std::size_t max_record_bytes = 64 * 1024;
  // One published message joins consecutive records up to these bounds (under the decoder's
  // defaults of 4096 events and 256 KiB), and up to 65472 bytes of records (the default item
  // limit: an item is at least one byte).
  std::size_t max_message_events = 2048;
  std::size_t max_message_bytes = 128 * 1024;
  // Unacknowledged messages kept outstanding; clamped to transport.max_in_flight() and to 90
  // (Paho C++ 1.2 refuses more than 100 buffered messages).
  std::size_t window = 32;
  // Backoff after a failed publish: initial, doubling up to max.
  std::int64_t backoff_initial_ms = 100;
  std::int64_t backoff_max_ms = 30000;
  // A heartbeat (empty message, seq = head + 1) per stream after this long without publishing;
  // 0 disables heartbeats.
  std::int64_t heartbeat_interval_ms = 5000;
  // Rows changed in one transaction (the dirty set); beyond it the commit fails with
  // errc::outbox_full.
  std::size_t max_rows_per_transaction = 200000;
  // Control requests queued between transport callback and poll(); more are dropped and counted
  // (replicas repeat their requests with backoff).
  std::size_t max_pending_control = 64;
  // Message TTL (like django-cqrs CQRS_MESSAGE_TTL); 0: events never expire. A stream message
  // expires this long after the commit of its oldest transaction: ext.expires = commit time +
  // TTL, and with MQTT 5 the broker drops it too (message expiry interval = the time left,
  // rounded up to whole seconds, at least 1). A replica dead-letters a message that arrives
  // expired (reason "expired"). Heartbeats, schema messages and direct messages (manual sync,
  // replay and re-sync answers: what repairs a replica after an expiry) never expire.
  std::int64_t message_ttl_ms = 0;
  // Control answers (replay and re-sync answers to replicas' requests, docs/replication.md §4)
  // have their own share of the outbox: records not yet acknowledged, beyond the application's
  // outbox_max_* (application commits never fail because of them). An answer that would exceed
  // it is not written (stats().control_refused; the replica asks again); an answer started while
  // no other is pending may exceed it (a re-sync carries the whole table). 0: no control answer.
  std::size_t control_max_records = 10000;
  std::size_t control_max_bytes = 8 * 1024 * 1024;
  // Rate limit per requester (replica name; a token bucket): `control_burst` requests at once,
  // then one per `control_interval_ms`; more are dropped (stats().control_rate_limited; replicas
  // repeat with backoff). control_interval_ms = 0 disables the limit (at most a day and a
  // burst of 10^6 are used). Up to 64 requesters are tracked; when all are busy a new one waits
  // until one of them is idle.
  std::int64_t control_interval_ms = 500;
  std::size_t control_burst = 16;
};

// Row values handed to filters and serializer callbacks, in the order of the stream's columns.
struct row_ref {
  const column_def* columns = nullptr;
  const value_view* values = nullptr;
  std::size_t size = 0;
  // The value of a column by name (a null view when the name is unknown).
  EDGECQRS_API value_view get(std::string_view column) const;
};

// A table's registration. Only `table` and `cqrs_id` are required.
struct table_options {
  std::string table;                 // SQLite table in the "main" database
  std::string cqrs_id;               // stream name (docs/topics.md rules)
  std::vector<std::string> columns;  // columns sent, must include the primary key; empty: all
  bool produce = true;               // false: registered (sync, dump) but changes not captured
  // Per-row filter on the final row values (like django-cqrs is_sync_instance): false sends no
  // save. Deletes are always sent (a tombstone for a key a replica lacks is harmless).
  std::function<bool(const row_ref&)> filter;
  // Columns whose previous values travel with save events when they changed (needs the
  // pre-update hook; ignored otherwise, see docs/capture.md).
  std::vector<std::string> tracked;
  // Custom serialization, one of:
  //  - serializer_sql: a SELECT bound by the primary-key values (?1..?n, primary-key order)
  //    returning one row; its result columns are the stream's columns (they must include the
  //    primary-key columns by name). It may join other tables.
  //  - serializer: rewrites the values (stream column order) in place before encoding; an error
  //    fails the commit with errc::serialization_failed.
  std::string serializer_sql;
  std::function<std::error_code(const row_ref& in, std::vector<value>& out)> serializer;
};

// A bound parameter of a manual-sync WHERE clause.
using sql_param = value;

struct master_stats {
  std::uint64_t transactions = 0;       // committed through the API with events
  std::uint64_t events = 0;             // events written to the outbox
  std::uint64_t records_pending = 0;    // outbox records not yet acknowledged
  std::uint64_t bytes_pending = 0;
  std::uint64_t messages_published = 0; // acknowledged messages
  std::uint64_t publish_failures = 0;
  std::uint64_t in_flight = 0;
  std::uint64_t heartbeats = 0;
  std::uint64_t control_handled = 0;
  std::uint64_t control_dropped = 0;
  std::uint64_t unmanaged_writes_refused = 0;
  std::uint64_t outbox_full_refusals = 0;  // application commits refused (outbox_max_*)
  // Control requests (control_handled counts them all): answered (replay or re-sync records
  // written), coalesced (the same answer is already in flight for this requester and stream),
  // rate-limited (control_interval_ms / control_burst), refused (control_max_*).
  std::uint64_t control_answered = 0;
  std::uint64_t control_coalesced = 0;
  std::uint64_t control_rate_limited = 0;
  std::uint64_t control_refused = 0;
};

class master {
 public:
  // Attaches to an open connection (not owned; it must outlive the master and stay in the same
  // database). Creates the edgecqrs_* tables and the incarnation on first use. `tx` (not owned,
  // may be null: nothing is published until set_transport) and `clk` must outlive the master.
  // Durability follows the connection's PRAGMA synchronous: FULL (or EXTRA) for a commit that
  // survives a power cut; with NORMAL a cut may undo the last commits, but never one that was
  // published (the master syncs the outbox before publishing, docs/capture.md).
  EDGECQRS_API static std::error_code attach(sqlite3* db, const master_config& cfg, transport* tx,
                                             std::unique_ptr<master>& out,
                                             clock& clk = system_clock());
  // Opens (creating) a database file, WAL mode, synchronous=FULL (commits survive power loss),
  // then attaches; the master owns the connection.
  EDGECQRS_API static std::error_code open(const std::string& path, const master_config& cfg,
                                           transport* tx, std::unique_ptr<master>& out,
                                           clock& clk = system_clock());
  EDGECQRS_API ~master();  // stops the background thread, removes hooks, closes an owned connection
  master(const master&) = delete;
  master& operator=(const master&) = delete;

  EDGECQRS_API sqlite3* db() const;

  // Registers a table (errors: invalid_cqrs_id, duplicate_cqrs_id, already_registered,
  // unknown_table, unknown_column, missing_primary_key, unsupported_table, sqlite_error).
  // Queues the retained schema message. Not allowed inside a transaction.
  EDGECQRS_API std::error_code register_table(const table_options& opts);
  // The stream's schema (columns, pk, tag, incarnation); false when unknown.
  EDGECQRS_API bool schema_of(std::string_view cqrs_id, schema& out) const;

  // ---- transactions: the only way to write registered tables ----
  // BEGIN IMMEDIATE. errc::nested_transaction when one is open.
  EDGECQRS_API std::error_code begin();
  // Encodes the captured changes into the outbox, then COMMIT. On any error the transaction is
  // rolled back and nothing is published (errors: outbox_full, serialization_failed,
  // sqlite_error, not_in_transaction).
  EDGECQRS_API std::error_code commit();
  EDGECQRS_API std::error_code rollback();
  // begin(); body(db); commit() (rollback when body returns an error, which is returned).
  EDGECQRS_API std::error_code transaction(const std::function<std::error_code(sqlite3*)>& body);
  // A COMMIT that bypasses commit() (plain SQL, autocommit statements) of a transaction that
  // changed a registered table is refused: the statement fails with SQLITE_CONSTRAINT_COMMITHOOK
  // and the changes are rolled back. Counted in stats().unmanaged_writes_refused.

  // ---- manual sync and dump ----
  // Queues sync events (seq 0) for the rows of the stream's table matching `where_sql` (an SQL
  // expression on the table's columns, "" for all) with bound parameters ?1..?n; to every
  // replica, or to one (`replica` non-empty: its direct topic). Durable (outbox). `synced`
  // receives the row count. Must not be called inside a transaction.
  EDGECQRS_API std::error_code sync(std::string_view cqrs_id, std::string_view where_sql,
                                    const std::vector<sql_param>& params, std::string_view replica,
                                    std::size_t* synced = nullptr);
  // Writes the stream's table (after filter and field selection) as a CBOR sequence file
  // (RFC 8742): ["edgecqrs-dump", 1, schema-message] then sync messages. errc::io_error when
  // the file cannot be written.
  EDGECQRS_API std::error_code dump(std::string_view cqrs_id, const std::string& path,
                                    std::size_t* rows = nullptr);
  // The same, for the rows matching `where_sql` (as in sync(), bound parameters ?1..?n).
  EDGECQRS_API std::error_code dump(std::string_view cqrs_id, const std::string& path,
                                    std::string_view where_sql,
                                    const std::vector<sql_param>& params,
                                    std::size_t* rows = nullptr);

  // ---- publishing ----
  EDGECQRS_API void set_transport(transport* tx);
  // Publisher step for firmware loops: handles acknowledgements and control requests, prunes,
  // publishes pending records within the window, heartbeats. Returns the first error met
  // (publishing errors are retried with backoff, not returned). Call outside a transaction.
  EDGECQRS_API std::error_code poll();
  // Runs poll() on a background thread every `interval_ms` (and soon after each commit).
  // errc::invalid_argument when already started.
  EDGECQRS_API std::error_code start(std::int64_t interval_ms = 10);
  EDGECQRS_API void stop();

  EDGECQRS_API master_stats stats() const;
  // Head (last committed seq) of a stream; 0 when unknown or empty.
  EDGECQRS_API std::uint64_t head_seq(std::string_view cqrs_id) const;
  // The last SQLite error message recorded by a failed call ("" when none).
  EDGECQRS_API std::string last_error_message() const;
  // Whether this build captures with SQLite's pre-update hook (docs/capture.md).
  EDGECQRS_API static bool has_preupdate_hook() noexcept;

  struct impl;

 private:
  explicit master(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace edgecqrs

// The master engine (private to lib/src/master): the `engine` struct that master::impl is, and
// the small helpers its files share. One job per file, in data-flow order:
//   capture.cpp       SQLite hooks -> dirty set (the changed keys of one transaction)
//   outbox.cpp        dirty set -> encoded events in edgecqrs_outbox, before COMMIT
//   publisher.cpp     outbox -> transport (durable first, windowed), acks, pruning, heartbeats
//   control.cpp       replicas' replay and re-sync requests -> direct outbox records
//   sync.cpp          current rows -> sync events (master::sync, re-sync answers), dump files
//   registration.cpp  setup, register_table, retained schema records, control subscription
//   master.cpp        the public master API over all of the above
// Compiled as one unit by default (EDGECQRS_UNITY_ENGINES): a name private to one file lives in
// an anonymous namespace in that file only, so no two files define the same name.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/names.hpp"
#include "master/fast_encode.hpp"
#include "sqlite_util.hpp"

namespace edgecqrs::master_detail {

using detail::bind_view;
using detail::column_view;
using detail::quote_ident;
using detail::reset_guard;
using stmt = detail::statement;

constexpr int kind_stream = 0;  // stream events, joinable, kept for replay after the ack
constexpr int kind_direct = 1;  // sync / replay / re-sync answers (own ext), deleted after ack
constexpr int kind_schema = 2;  // whole schema message, retained
// The SQL function the guard triggers of registered tables call (registration.cpp): only the
// library's connections define it, so its name is the error other connections get.
constexpr char guard_function[] = "edgecqrs_replicated_table_write_through_master_api";
constexpr int kind_control = 3;  // replay / re-sync answers to control requests (as kind_direct,
                                 // within the control share of the outbox)

// `v` in decimal, as std::to_string gives it (one small function instead of its instances).
inline std::string decimal(std::size_t v) {
  char buf[24];
  char* p = buf + sizeof buf;
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  return std::string(p, static_cast<std::size_t>(buf + sizeof buf - p));
}

// Appends an encoded item produced by `enc(buf, cap, written)`, growing the buffer as needed.
// A growable byte buffer whose resize() leaves new bytes uninitialised (std::vector zero-fills
// them, and its resize is out of line): append_encoded and the event encoder grow it by a bound
// then trim it, once per event.
class byte_buffer {
 public:
  std::uint8_t* data() { return p_.get(); }
  const std::uint8_t* data() const { return p_.get(); }
  std::size_t size() const { return n_; }
  std::size_t capacity() const { return cap_; }
  bool empty() const { return n_ == 0; }
  const std::uint8_t* begin() const { return p_.get(); }
  const std::uint8_t* end() const { return p_.get() + n_; }
  void clear() { n_ = 0; }
  void reserve(std::size_t c) {
    if (c <= cap_) return;
    std::unique_ptr<std::uint8_t[]> q(new std::uint8_t[c]);
    if (n_) std::memcpy(q.get(), p_.get(), n_);
    p_ = std::move(q);
    cap_ = c;
  }
  void resize(std::size_t n) {
    if (n > cap_) reserve(std::max(n, cap_ * 2));
    n_ = n;
  }

 private:
  std::unique_ptr<std::uint8_t[]> p_;
  std::size_t n_ = 0, cap_ = 0;
};

// A non-owning reference to a callable, for internal callbacks that are only called during the
// call that receives them (no std::function copy, manager or type information).
template <class Sig>
class fn_ref;
template <class R, class... A>
class fn_ref<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same<std::decay_t<F>, fn_ref>::value>>
  fn_ref(F&& f)  // NOLINT(google-explicit-constructor): used like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(&f))), call_([](void* o, A... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...);
        }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// The encoder is called through a fn_ref: one copy of this loop per buffer type, not one per
// call site.
template <class Buf>
std::error_code append_encoded(
    Buf& out, fn_ref<std::error_code(std::uint8_t*, std::size_t, std::size_t&)> enc) {
  std::size_t len = out.size();
  // Most items are small: try a modest window first (resize zero-fills it).
  std::size_t room = 512;
  for (int attempt = 0; attempt < 16; ++attempt) {
    if (out.capacity() < len + room) out.reserve(std::max(out.capacity() * 2, len + room));
    out.resize(len + room);
    std::size_t written = 0;
    std::error_code ec = enc(out.data() + len, room, written);
    if (!ec) {
      out.resize(len + written);
      return {};
    }
    if (ec != errc::buffer_too_small) {
      out.resize(len);
      return ec;
    }
    room *= 4;
  }
  out.resize(len);
  return make_error_code(errc::buffer_too_small);
}

struct engine {
  struct table_state {
    std::size_t index = 0;
    std::string table;
    std::string cqrs_id;
    std::int64_t stream_id = 0;
    schema sch;
    bool produce = true;
    bool rowid_alias = false;                 // single INTEGER PRIMARY KEY column
    bool cache_final = false;                 // final values may come from the pre-update hook
    std::vector<std::uint8_t> real_affinity;  // per table column: 1 REAL
    std::vector<int> sel_table_cols;          // table column index per stream column (no SQL)
    std::vector<int> pk_table_cols;           // table column index per pk column
    std::vector<int> pk_sel_pos;              // per pk column: its index in sel_table_cols or -1
    std::vector<std::pair<std::uint32_t, int>> tracked;  // (stream column, table column)
    std::vector<int> compare_table_cols;  // table columns compared to detect no-op changes
    std::function<bool(const row_ref&)> filter;
    std::function<std::error_code(const row_ref&, std::vector<value>&)> serializer;
    std::string serializer_sql;
    std::string where_pk;     // "\"a\"=?1 AND \"b\"=?2"
    std::string select_cols;  // stream columns as a select list (no SQL)
    stmt read_final;          // SELECT stream cols + compare cols WHERE pk
    stmt read_custom;         // serializer_sql
    std::uint64_t next_seq = 1;
    std::uint64_t saved_next_seq = 1;
    std::atomic<std::uint64_t> head{0};  // last committed seq, for other threads
    std::int64_t last_publish_ms = 0;
    std::string event_topic, schema_topic, control_topic;
  };

  // Values captured during a transaction live in a per-transaction arena (`cells`, whose
  // TEXT/BLOB cells point by offset into `cell_bytes`): no allocation per row or per value once
  // the arena has grown, cleared (not freed) between transactions.
  struct dirty_row {
    table_state* t = nullptr;
    std::size_t key_off = 0;  // encoded pk values: bytes in cell_bytes
    std::uint32_t key_len = 0;
    std::uint32_t pk_at = 0;  // npk cells: the pk values
    bool existed_before = false;
    bool have_old = false;
    std::uint32_t old_at = 0;  // compare_table_cols cells before the first change
    // Final state as last seen by the pre-update hook: 0 unknown (read the row at commit),
    // 1 present with the stream columns' cells at `fin_at`, 2 deleted.
    int final_state = 0;
    std::uint32_t fin_at = 0;
  };

  struct inflight_msg {
    std::uint64_t no = 0;  // message number (completion key)
    std::vector<std::int64_t> ids;
    std::vector<int> kinds;
    std::vector<std::uint64_t> bytes;
    std::int64_t stream = 0;
    bool heartbeat = false;
  };

  struct completion {
    std::uint64_t msg_no;
    std::error_code ec;
  };

  // Shared with transport callbacks, which may outlive the master.
  struct sink {
    std::mutex mu;
    bool alive = true;
    std::vector<completion> done;
    std::vector<std::pair<std::size_t, control_request>> control;  // (table index, request)
    std::size_t max_control = 64;
    std::uint64_t control_dropped = 0;
    std::condition_variable* wake = nullptr;
  };

  sqlite3* db = nullptr;
  bool owns_db = false;
  master_config cfg;
  transport* tx = nullptr;
  clock* clk = nullptr;
  std::array<std::uint8_t, 16> incarnation{};
  std::vector<std::unique_ptr<table_state>> tables;
  // Registered tables by CQRS_ID / stream id: a scan of `tables` (a few entries, cold paths).
  // `tables` grows under stats_mu too, for schema_of and head_seq.
  table_state* find_id(std::string_view cqrs_id) const {
    for (auto& t : tables)
      if (t->cqrs_id == cqrs_id) return t.get();
    return nullptr;
  }
  // By the table's canonical name (as the hooks report it): a scan, cheaper than hashing a
  // string for the few tables a device registers.
  table_state* find_table(const char* name) const {
    for (auto& t : tables)
      if (std::strcmp(t->table.c_str(), name) == 0) return t.get();
    return nullptr;
  }
  table_state* find_stream(std::int64_t stream) const {
    for (auto& t : tables)
      if (t->stream_id == stream) return t.get();
    return nullptr;
  }

  // capture state (touched by SQLite hooks on the writing thread)
  std::vector<dirty_row> dirty;
  // Open addressing over indices into `dirty` (no allocation per row): slot = index + 1, 0 empty.
  std::vector<std::uint32_t> dirty_slots = std::vector<std::uint32_t>(1024);
  std::vector<std::uint64_t> dirty_hashes;  // parallel to `dirty`
  std::vector<value_view> vals_scratch;
  std::vector<std::vector<std::size_t>> per_table_scratch;
  std::vector<std::uint32_t> prev_cols_scratch;
  std::vector<value_view> prev_vals_scratch;
  std::vector<value_view> cells;               // capture arena (see dirty_row)
  std::vector<std::uint8_t> cell_bytes;        // TEXT/BLOB bytes of `cells`
  std::vector<value_view> hook_new, hook_old;  // pre-update hook scratch
  bool db_utf8 = true;                         // TEXT is stored as UTF-8 (read without conversion)
  // Appends a copy of `v` to the arena; returns its cell index.
  std::uint32_t put_cell(const value_view& v) {
    value_view c = v;
    if (v.type == value_type::text || v.type == value_type::blob) {
      std::size_t off = cell_bytes.size();
      if (v.size) {
        cell_bytes.resize(off + v.size);
        std::memcpy(cell_bytes.data() + off, v.data, v.size);
      }
      c.data = reinterpret_cast<const void*>(static_cast<std::uintptr_t>(off));
    }
    cells.push_back(c);
    return static_cast<std::uint32_t>(cells.size() - 1);
  }
  std::string key_scratch;
  std::string_view key_of(const dirty_row& d) const {
    return {reinterpret_cast<const char*>(cell_bytes.data()) + d.key_off, d.key_len};
  }
  // The value of cell `k` (TEXT/BLOB bytes valid until the arena grows or is cleared).
  value_view cell(std::size_t k) const {
    value_view c = cells[k];
    if (c.type == value_type::text || c.type == value_type::blob)
      c.data = cell_bytes.data() + reinterpret_cast<std::uintptr_t>(c.data);
    return c;
  }
  std::size_t n_dirty = 0;      // entries of `dirty` in use
  bool internal_write = false;  // the library's own statements: not captured, not refused
  bool committing = false;
  bool dirty_overflow = false;
  std::atomic<std::uint64_t> unmanaged_refused{0};

  std::mutex txn_mu;  // held from begin() to commit()/rollback(), and by poll()
  std::unique_lock<std::mutex> txn_lock{txn_mu, std::defer_lock};
  std::atomic<bool> in_txn{false};
  std::thread::id txn_owner;

  stmt st_version, st_version_upd, st_outbox_insert, st_pending, st_ack,
      st_version_get, st_outbox_top, st_sync_level;
  byte_buffer evbuf;
  std::vector<std::uint8_t> grpbuf, msgbuf;
  stmt st_begin, st_commit;  // master::begin / commit: prepared once, not parsed per transaction
  std::error_code step_ctl(stmt& s, const char* what) {
    int rc = sqlite3_step(s.get());
    std::error_code ec;
    if (rc != SQLITE_DONE) ec = sql_fail(what);  // before the reset, which may change the message
    sqlite3_reset(s.get());
    return ec;
  }

  // Keys that may have a version entry (a Bloom filter over stream id + key, 1 Mbit, three
  // probes). A miss proves a new row has no tombstone, which saves a B-tree probe per insert.
  std::vector<std::uint64_t> bloom = std::vector<std::uint64_t>(1u << 14);
  static std::uint64_t key_hash(std::int64_t stream, std::string_view key) {
    std::uint64_t h = 1469598103934665603ULL ^ static_cast<std::uint64_t>(stream);
    for (unsigned char c : key) h = (h ^ c) * 1099511628211ULL;
    return h ^ (h >> 29);
  }
  void bloom_add(std::int64_t stream, std::string_view key) {
    std::uint64_t h = key_hash(stream, key);
    for (int i = 0; i < 3; ++i, h = h * 0x9e3779b97f4a7c15ULL + 1) {
      std::size_t bit = (h >> 20) & ((bloom.size() * 64) - 1);
      bloom[bit / 64] |= 1ULL << (bit % 64);
    }
  }
  bool bloom_may_have(std::int64_t stream, std::string_view key) const {
    std::uint64_t h = key_hash(stream, key);
    for (int i = 0; i < 3; ++i, h = h * 0x9e3779b97f4a7c15ULL + 1) {
      std::size_t bit = (h >> 20) & ((bloom.size() * 64) - 1);
      if (!(bloom[bit / 64] & (1ULL << (bit % 64)))) return false;
    }
    return true;
  }

  // outbox accounting (changed only under txn_mu)
  std::uint64_t pending_records = 0, pending_bytes = 0, kept_records = 0, kept_bytes = 0;
  // pending_records as last re-read because the outbox had nothing left to send (count_outbox).
  std::uint64_t recounted_pending = UINT64_MAX;
  // The part of pending_* that is control answers (kind_control), with its own limit.
  std::uint64_t ctl_records = 0, ctl_bytes = 0;
  // control.cpp: per-requester token buckets (credit in ms, at most burst * interval; replica
  // "": free) and the answers in flight (outbox ids [first_id, last_id]; replay: seqs [from, to];
  // re-sync: to = upto_seq; stream 0: free), one per op, requester and stream (schema: one per
  // stream, replica ""). Fixed arrays: no allocation beyond the names.
  struct ctl_bucket {
    std::string replica;
    std::int64_t credit_ms = 0, last_ms = 0;
  };
  std::array<ctl_bucket, 64> ctl_buckets;
  struct ctl_answer {
    std::int64_t stream = 0;
    std::string replica;
    control_op op = control_op::replay;
    std::uint64_t from = 0, to = 0;
    std::int64_t first_id = 0, last_id = 0;
  };
  std::array<ctl_answer, 64> ctl_answers;
  bool control_rate_ok(const std::string& replica);
  ctl_answer* control_in_flight(const table_state& t, const std::string& replica, control_op op);
  std::error_code answer_replay(table_state& t, const control_request& c, std::uint64_t from,
                                std::uint64_t to, bool& need_resync);
  void note_answer(const table_state& t, const std::string& replica, control_op op,
                   std::uint64_t from, std::uint64_t to, std::int64_t first_id);
  __attribute__((noinline)) void ctl_count(std::uint64_t master_stats::*field) {
    std::lock_guard<std::mutex> lk(stats_mu);
    ++(st.*field);
  }
  std::int64_t outbox_top();
  bool acked_other = true;  // acknowledged non-stream rows may await deletion
  // publisher
  std::int64_t cursor = 0;
  std::vector<inflight_msg> inflight;  // unordered; at most the window (<= 90)
  // Whether outbox row `id` is part of a message in flight (each message's ids ascend).
  bool id_in_flight(std::int64_t id) const {
    for (const inflight_msg& m : inflight)
      if (!m.ids.empty() && id >= m.ids.front() && id <= m.ids.back() &&
          std::binary_search(m.ids.begin(), m.ids.end(), id))
        return true;
    return false;
  }
  std::uint64_t next_msg_no = 1;
  std::int64_t backoff_until = 0;
  int consecutive_failures = 0;
  // Counts a failed publish; returns the delay before the next attempt (doubling per
  // consecutive failure, capped).
  std::int64_t failure_backoff();
  std::int64_t durable_upto = 0;  // outbox ids at or below it are known to be on disk
  std::shared_ptr<sink> snk = std::make_shared<sink>();
  // Completion callback of a publish (one type for messages and heartbeats): queues the
  // result in the sink; `wake` also wakes the background thread.
  struct publish_done {
    std::weak_ptr<sink> w;
    std::uint64_t no;
    bool wake;
    void operator()(std::error_code e) const {
      auto sp = w.lock();
      if (!sp) return;
      std::lock_guard<std::mutex> lk(sp->mu);
      if (!sp->alive) return;
      sp->done.push_back({no, e});
      if (wake && sp->wake) sp->wake->notify_one();
    }
  };

  mutable std::mutex stats_mu;
  master_stats st;
  std::string last_error;

  std::thread bg;
  std::mutex bg_mu;
  std::condition_variable bg_cv;
  bool bg_stop = false;
  bool bg_wake = false;

  ~engine() {
    {
      std::lock_guard<std::mutex> lk(snk->mu);
      snk->alive = false;
      snk->wake = nullptr;
    }
  }

  // ---------- errors ----------
  // Sets last_error to `fmt` with each '%' replaced by the next of `args`, and returns `e` (out
  // of line: the many error paths share one copy of the string building).
  __attribute__((noinline, cold)) std::error_code fail(
      errc e, const char* fmt, std::initializer_list<std::string_view> args = {});
  // Prepares a statement of a cold path (one out-of-line copy of statement::prepare for them).
  __attribute__((noinline)) int prepare(stmt& s, const char* sql) { return s.prepare(db, sql); }
  __attribute__((noinline, cold)) std::error_code sql_fail(const char* what);
  std::error_code exec(const char* sql);

  // ---------- setup ----------
  std::error_code init();

  std::error_code load_incarnation();
  // Reads the outbox accounting (pending, kept) from the database: at setup, and when another
  // connection (the CLI, a second master) acknowledged or removed records.
  std::error_code count_outbox();

  void install_hooks();
  void update_stats();

  // ---------- capture ----------
  std::string encode_key(const value_view* pk, std::size_t n);
  // Appends the key of pk values `pk` to `key`.
  void encode_key_into(const value_view* pk, std::size_t n, std::string& key);

  // A value seen by the pre-update hook, as a read would return it: SQLite stores
  // integer-valued REALs of REAL-affinity columns as integers and converts them on read only.
  // TEXT is read with sqlite3_value_blob when the database is UTF-8: the same bytes, without
  // the NUL-terminated copy (a malloc and a free per value) that sqlite3_value_text makes of a
  // record's unterminated text.
  value_view hook_view(const table_state& t, int col, sqlite3_value* v) const;

  // Records a change of one key; first-change information wins within the transaction.
  // Returns the row's entry (nullptr when the dirty set is full); `fresh` when just created.
  dirty_row* touch(table_state* t, const value_view* pk, bool existed_before, bool& fresh);

  void clear_dirty();

  // The final values come from the hook when safe, which saves re-reading each row at commit.
  // Not when ROLLBACK TO undid changes without telling the hooks, for tables serialized by SQL
  // or with generated columns, or beyond a memory budget.
  static constexpr std::size_t max_cached_bytes = 8u << 20;
  void set_final_absent(dirty_row& d) { d.final_state = d.t->cache_final ? 2 : 0; }
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  // `fin`: the stream columns' new values read by the hook (nullptr: not read, re-read at commit).
  void set_final_present(dirty_row& d, const value_view* fin);
#endif
  bool rollback_to_seen = false;
  std::size_t cached_bytes = 0;
  std::array<std::string, 4> clean_sql;  // statement texts on_trace found without "rollback"
  std::size_t clean_next = 0;
  std::size_t clean_hit = 0;       // the entry found (or stored) last
  std::size_t stmt_hook_rows = 0;  // captured row changes since the last statement ended
  static int on_trace(unsigned type, void* ctx, void*, void* x);

#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  static void on_preupdate(void* ctx, sqlite3* db, int op, const char* zdb, const char* ztab,
                           sqlite3_int64, sqlite3_int64);
#else
  static void on_update(void* ctx, int op, const char* zdb, const char* ztab, sqlite3_int64 rowid);
  // The update hook reports an UPDATE that changes the rowid under the new rowid only; a TEMP
  // trigger per table reports the old one through this function.
  static void fn_key_gone(sqlite3_context* ctx, int, sqlite3_value** argv);
#endif

  static int on_commit(void* ctx);
  static void on_rollback(void* ctx);
  // Defeats the truncate optimisation (which skips the hooks) on registered tables: SQLite then
  // deletes row by row.
  static int on_authorize(void* ctx, int action, const char* a1, const char*, const char* zdb,
                          const char*);

  // ---------- registration ----------
  std::error_code register_table(const table_options& o);
  // Persists the stream's definition (edgecqrs_registration) and its guard triggers; inside the
  // registration transaction.
  std::error_code record_definition(const table_state& t, const table_options& o);
  // SQL function the guard triggers call: 1 on the library's connections.
  static void fn_guard(sqlite3_context* ctx, int, sqlite3_value**);

  // ---------- commit ----------
  // `tag`: the schema tag the body was encoded with (0: the stream's current one); kept with the
  // record and published with it, so a schema change never re-tags older records.
  std::error_code write_record(table_state& t, int kind, std::uint64_t first_seq,
                               std::size_t n_events, std::string_view target,
                               const std::vector<std::uint8_t>* ext, const std::uint8_t* body,
                               std::size_t body_size, std::uint64_t& new_records,
                               std::uint64_t& new_bytes, std::uint32_t tag = 0);

  // Read then write (not an UPSERT with RETURNING: SQLite allocates and frees a large buffer
  // per RETURNING step, which dominated the capture profile). A row without an entry is at
  // version 1 (rows inserted once and never changed, the common case, cost no version write);
  // a row that was never there (existed_before false) and has no entry becomes version 1.
  std::uint64_t bump_version(table_state& t, std::string_view key, std::int64_t now,
                             bool existed_before, std::error_code& ec);

  // Runs the table's serializer on row `rr` (whose values are `vals`): `vals` then view the
  // serialized values, kept in `owned`.
  __attribute__((noinline)) std::error_code serialize(const table_state& t, const row_ref& rr,
                                                      std::vector<value_view>& vals,
                                                      std::vector<value>& owned);
  // Encodes the final state of one dirty row into evbuf; `emitted` false when nothing is sent.
  std::error_code encode_dirty(dirty_row& d, std::int64_t now, bool& emitted);
  // Refuses the commit of a row whose event (`size` bytes) exceeds max_record_bytes.
  __attribute__((noinline, cold)) std::error_code too_large(const dirty_row& d, std::size_t size);
  std::error_code flush(std::uint64_t& new_records, std::uint64_t& new_bytes,
                        std::uint64_t& n_events);
  // Writes the first `len` bytes of evbuf (`n` events; all when `len` is SIZE_MAX) as one stream
  // record; the rest stays in evbuf.
  std::error_code emit_stream_chunk(table_state& t, std::int64_t t0, std::size_t n,
                                    std::uint64_t& new_records, std::uint64_t& new_bytes,
                                    std::size_t len = SIZE_MAX);

  // ---------- sync rows (manual sync, re-sync, dump) ----------
  // Reads rows of `t` matching where_sql and hands groups of sync events to `emit`.
  std::error_code read_rows(table_state& t, std::string_view where_sql,
                            const std::vector<sql_param>& params,
                            fn_ref<std::error_code(std::int64_t t0, std::size_t n,
                                                   const std::uint8_t* grp, std::size_t size)>
                                emit,
                            std::size_t& rows);

  // ---------- publisher ----------
  std::error_code poll_locked();
  std::error_code handle_completions();
  std::error_code prune();
  std::error_code publish_pending();
  std::error_code make_outbox_durable();
  void heartbeats();
  std::error_code handle_control(std::size_t table, const control_request& c);
  // Stores the current schema (edgecqrs_schema) and enqueues it (retained), after the older
  // schemas that records still carry (not retained): replicas can decode every record.
  std::error_code enqueue_schema(table_state& t, std::uint64_t& nr, std::uint64_t& nb);
  std::error_code sync_locked(table_state& t, std::string_view where_sql,
                              const std::vector<sql_param>& params, std::string_view replica,
                              bool resync, std::size_t* synced, std::uint64_t session = 0);
  std::error_code internal_txn(fn_ref<std::error_code(std::uint64_t&, std::uint64_t&)> body);
  std::error_code subscribe_control(table_state& t);
  // The hooks name the table with SQLite's own (stable) string: remember the last one.
  const char* last_name = nullptr;
  table_state* last_table = nullptr;
  table_state* lookup_table(const char* ztab);
  bool sink_has_work() {
    std::lock_guard<std::mutex> lk(snk->mu);
    return !snk->done.empty() || !snk->control.empty();
  }
  void wake_bg() {
    std::lock_guard<std::mutex> lk(bg_mu);
    bg_wake = true;
    bg_cv.notify_one();
  }
};

}  // namespace edgecqrs::master_detail

namespace edgecqrs {
struct master::impl : master_detail::engine {};
}  // namespace edgecqrs

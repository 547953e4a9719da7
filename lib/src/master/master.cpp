// The public master API: open/attach, register_table, begin/commit/rollback, sync, poll,
// start/stop, stats. A thin layer over engine.hpp (capture -> outbox -> publisher; control, sync).
#include "edgecqrs/master.hpp"

#include <cstdio>

#include "master/engine.hpp"

namespace edgecqrs::master_detail {

// ============================================================================ sync rows

std::error_code engine::read_rows(
    table_state& t, std::string_view where_sql, const std::vector<sql_param>& params,
    fn_ref<std::error_code(std::int64_t, std::size_t, const std::uint8_t*, std::size_t)> emit,
    std::size_t& rows) {
  rows = 0;
  // Keys of the matching rows first, then each row through the same path as capture.
  std::string pk_cols;
  for (std::size_t i = 0; i < t.sch.pk.size(); ++i) {
    if (i) pk_cols += ",";
    pk_cols += quote_ident(t.sch.columns[t.sch.pk[i]].name);
  }
  if (!t.serializer_sql.empty()) {
    // Stream column names of the pk equal table column names (checked at registration).
  }
  std::string sql = "SELECT ";
  sql += pk_cols;
  sql += " FROM ";
  sql += quote_ident(t.table);
  if (!where_sql.empty()) {
    sql += " WHERE (";
    sql += where_sql;
    sql += ")";
  }
  sql += " ORDER BY ";
  sql += pk_cols;
  stmt q;
  if (q.prepare(db, sql)) {
    return fail(errc::invalid_argument, "sync WHERE: %", {sqlite3_errmsg(db)});
  }
  if (sqlite3_bind_parameter_count(q.get()) != static_cast<int>(params.size())) {
    return fail(errc::invalid_argument, "sync WHERE takes % parameters, % given",
                {decimal(static_cast<std::size_t>(sqlite3_bind_parameter_count(q.get()))),
                 decimal(params.size())});
  }
  for (std::size_t i = 0; i < params.size(); ++i)
    bind_view(q.get(), static_cast<int>(i + 1), params[i].view());
  std::int64_t t0 = clk->now_ms();
  std::size_t npk = t.sch.pk.size(), ncol = t.sch.columns.size();
  std::vector<value_view> vals(ncol);
  std::vector<value> owned;
  evbuf.clear();
  std::size_t n = 0;
  auto flush_chunk = [&]() -> std::error_code {
    grpbuf.clear();
    if (auto ec = append_encoded(grpbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
          return encode_group_head(t0, n, b, c, w);
        }))
      return ec;
    grpbuf.insert(grpbuf.end(), evbuf.begin(), evbuf.end());
    std::error_code ec = emit(t0, n, grpbuf.data(), grpbuf.size());
    evbuf.clear();
    n = 0;
    return ec;
  };
  int rc;
  // The key values are read in place: q does not step until the row is done.
  std::vector<value_view> pkv(npk);
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    for (std::size_t i = 0; i < npk; ++i) pkv[i] = column_view(q.get(), static_cast<int>(i));
    std::string key = encode_key(pkv.data(), npk);
    sqlite3_stmt* src;
    sqlite3_stmt* rf = t.serializer_sql.empty() ? t.read_final.get() : t.read_custom.get();
    src = rf;
    reset_guard g{rf};
    sqlite3_reset(rf);
    for (std::size_t i = 0; i < npk; ++i) bind_view(rf, static_cast<int>(i + 1), pkv[i]);
    int r = sqlite3_step(rf);
    if (r == SQLITE_DONE) continue;
    if (r != SQLITE_ROW) return sql_fail("sync read");
    for (std::size_t i = 0; i < ncol; ++i) vals[i] = column_view(src, static_cast<int>(i));
    row_ref rr{t.sch.columns.data(), vals.data(), ncol};
    if (t.filter && !t.filter(rr)) continue;
    if (t.serializer)
      if (auto e = serialize(t, rr, vals, owned)) return e;
    // Version and update time of the row; a row never captured (older than its registration)
    // is version 1.
    std::uint64_t ver = 1;
    std::int64_t updated = t0;
    {
      sqlite3_stmt* vs = st_version_get.get();
      reset_guard gv{vs};
      sqlite3_bind_int64(vs, 1, t.stream_id);
      sqlite3_bind_blob(vs, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
      int vr = sqlite3_step(vs);
      if (vr == SQLITE_ROW) {
        ver = static_cast<std::uint64_t>(sqlite3_column_int64(vs, 0));
        updated = sqlite3_column_int64(vs, 1);
      } else if (vr != SQLITE_DONE) {
        return sql_fail("version read");
      }
    }
    event_view ev;
    ev.kind = event_kind::sync;
    ev.row_version = ver;
    ev.dt_ms = updated - t0;
    ev.values = vals.data();
    ev.n_values = ncol;
    if (auto ec = append_encoded(evbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
          return encode_event(ev, b, c, w);
        }))
      return ec;
    ++n;
    ++rows;
    if (n >= cfg.max_record_events || evbuf.size() >= cfg.max_record_bytes)
      if (auto ec = flush_chunk()) return ec;
  }
  if (rc != SQLITE_DONE) return sql_fail("sync scan");
  if (n)
    if (auto ec = flush_chunk()) return ec;
  return {};
}

std::error_code engine::sync_locked(table_state& t, std::string_view where_sql,
                                    const std::vector<sql_param>& params, std::string_view replica,
                                    bool resync, std::size_t* synced) {
  std::size_t rows = 0;
  std::error_code ec = internal_txn([&](std::uint64_t& nr, std::uint64_t& nb) -> std::error_code {
    message ext_msg;
    ext_msg.target = std::string(replica);
    if (resync) {
      ext_msg.reply_to = std::string(replica);
      ext_msg.has_resync = true;
      std::uint64_t session = 0;
      sqlite3_randomness(sizeof session, &session);
      ext_msg.resync.session = session >> 1;  // stays within 63 bits for SQLite-friendly logs
      ext_msg.resync.upto_seq = t.next_seq - 1;
    }
    std::vector<std::uint8_t> ext;
    std::int64_t last_id = 0;
    auto encode_ext = [&]() -> std::error_code {
      ext.clear();
      if (!message_has_ext(ext_msg)) return {};
      return append_encoded(ext, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
        return encode_message_ext(ext_msg, b, c, w);
      });
    };
    std::error_code e = read_rows(
        t, where_sql, params,
        [&](std::int64_t, std::size_t n, const std::uint8_t* grp, std::size_t size) {
          if (auto e2 = encode_ext()) return e2;
          if (auto e2 = write_record(t, kind_direct, 0, n, replica, &ext, grp, size, nr, nb))
            return e2;
          last_id = sqlite3_last_insert_rowid(db);
          if (resync) ++ext_msg.resync.part;
          return std::error_code{};
        },
        rows);
    if (e) return e;
    if (resync) {
      // The last part carries last = true; an empty table gets one empty part.
      ext_msg.resync.last = true;
      if (last_id) --ext_msg.resync.part;
      if (auto e2 = encode_ext()) return e2;
      if (last_id) {
        stmt up;
        if (prepare(up, "UPDATE edgecqrs_outbox SET ext=?2 WHERE id=?1")) return sql_fail("resync");
        sqlite3_bind_int64(up.get(), 1, last_id);
        sqlite3_bind_blob(up.get(), 2, ext.data(), static_cast<int>(ext.size()), SQLITE_STATIC);
        if (sqlite3_step(up.get()) != SQLITE_DONE) return sql_fail("resync");
      } else {
        if (auto e2 = write_record(t, kind_direct, 0, 0, replica, &ext, nullptr, 0, nr, nb))
          return e2;
      }
    }
    return std::error_code{};
  });
  if (!ec && synced) *synced = rows;
  return ec;
}

std::error_code engine::handle_control(std::size_t table, const control_request& c) {
  if (table >= tables.size()) return {};
  table_state& t = *tables[table];
  if (validate_replica_name(c.replica)) return {};
  {
    std::lock_guard<std::mutex> lk(stats_mu);
    ++st.control_handled;
  }
  if (c.op == control_op::schema)
    return internal_txn(
        [&](std::uint64_t& nr, std::uint64_t& nb) { return enqueue_schema(t, nr, nb); });
  if (c.op == control_op::replay) {
    std::uint64_t head = t.next_seq - 1;
    std::uint64_t from = c.from_seq, to = std::min(c.to_seq, head);
    if (from == 0 || from > to) return {};
    // Every seq of [from, to] must be in a kept (or still pending) stream record.
    stmt q;
    if (prepare(q,
                "SELECT id, first_seq, n_events, body FROM edgecqrs_outbox WHERE kind=0 AND "
                "stream=?1 AND first_seq<=?3 AND first_seq+n_events-1>=?2 ORDER BY first_seq"))
      return sql_fail("replay");
    sqlite3_bind_int64(q.get(), 1, t.stream_id);
    sqlite3_bind_int64(q.get(), 2, static_cast<sqlite3_int64>(from));
    sqlite3_bind_int64(q.get(), 3, static_cast<sqlite3_int64>(to));
    struct rec {
      std::uint64_t first, n;
      std::vector<std::uint8_t> body;
    };
    std::vector<rec> recs;
    std::uint64_t next = from;
    bool covered = true;
    std::size_t bytes = 0;
    while (sqlite3_step(q.get()) == SQLITE_ROW) {
      rec r;
      r.first = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 1));
      r.n = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 2));
      if (r.first > next) {
        covered = false;
        break;
      }
      auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(q.get(), 3));
      r.body.assign(p, p + sqlite3_column_bytes(q.get(), 3));
      bytes += r.body.size();
      next = r.first + r.n;
      recs.push_back(std::move(r));
      if (bytes > cfg.max_message_bytes * 16) break;  // bounded: the replica asks again
    }
    if (recs.empty() || recs.front().first > from) covered = false;
    if (covered) {
      message ext_msg;
      ext_msg.target = c.replica;
      ext_msg.reply_to = c.replica;
      std::vector<std::uint8_t> ext;
      if (auto ec = append_encoded(ext, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
            return encode_message_ext(ext_msg, b, cap, w);
          }))
        return ec;
      return internal_txn([&](std::uint64_t& nr, std::uint64_t& nb) -> std::error_code {
        for (auto& r : recs)
          if (auto ec = write_record(t, kind_direct, r.first, r.n, c.replica, &ext, r.body.data(),
                                     r.body.size(), nr, nb))
            return ec;
        return std::error_code{};
      });
    }
    // The range is gone: answer with a full re-sync.
  }
  return sync_locked(t, "", {}, c.replica, true, nullptr);
}

}  // namespace edgecqrs::master_detail

namespace edgecqrs {

using master_detail::append_encoded;

value_view row_ref::get(std::string_view column) const {
  for (std::size_t i = 0; i < size; ++i)
    if (columns[i].name == column) return values[i];
  return value_view::null();
}

// ============================================================================ master

master::master(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

master::~master() {
  stop();
  if (!impl_) return;
  sqlite3* db = impl_->db;
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  sqlite3_preupdate_hook(db, nullptr, nullptr);
#else
  sqlite3_update_hook(db, nullptr, nullptr);
#endif
  sqlite3_commit_hook(db, nullptr, nullptr);
  sqlite3_rollback_hook(db, nullptr, nullptr);
  sqlite3_set_authorizer(db, nullptr, nullptr);
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  sqlite3_trace_v2(db, 0, nullptr, nullptr);
#endif
  if (impl_->tx)
    for (auto& t : impl_->tables) impl_->tx->unsubscribe(t->control_topic);
  bool owns = impl_->owns_db;
  impl_.reset();
  if (owns) sqlite3_close_v2(db);
}

std::error_code master::attach(sqlite3* db, const master_config& cfg, transport* tx,
                               std::unique_ptr<master>& out, clock& clk) {
  if (!db) return make_error_code(errc::invalid_argument);
  if (auto ec = validate_topic_prefix(cfg.topic_prefix)) return ec;
  if (!sqlite3_get_autocommit(db)) return make_error_code(errc::nested_transaction);
  auto p = std::make_unique<impl>();
  p->db = db;
  p->cfg = cfg;
  p->tx = tx;
  p->clk = &clk;
  if (auto ec = p->init()) return ec;
  out.reset(new master(std::move(p)));
  return {};
}

std::error_code master::open(const std::string& path, const master_config& cfg, transport* tx,
                             std::unique_ptr<master>& out, clock& clk) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    sqlite3_close_v2(db);
    return make_error_code(errc::sqlite_error);
  }
  sqlite3_busy_timeout(db, 5000);
  // FULL: a commit that returned survives a power cut (NORMAL would sync only at checkpoints).
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON",
               nullptr, nullptr, nullptr);
  std::error_code ec = attach(db, cfg, tx, out, clk);
  if (ec) {
    sqlite3_close_v2(db);
    return ec;
  }
  out->impl_->owns_db = true;
  return {};
}

sqlite3* master::db() const { return impl_->db; }

std::error_code master::register_table(const table_options& opts) {
  if (impl_->in_txn) return make_error_code(errc::nested_transaction);
  std::lock_guard<std::mutex> lk(impl_->txn_mu);
  return impl_->register_table(opts);
}

bool master::schema_of(std::string_view cqrs_id, schema& out) const {
  std::lock_guard<std::mutex> lk(impl_->stats_mu);
  const auto* t = impl_->find_id(cqrs_id);
  if (!t) return false;
  out = t->sch;
  return true;
}

std::error_code master::begin() {
  impl& m = *impl_;
  if (m.in_txn && m.txn_owner == std::this_thread::get_id())
    return make_error_code(errc::nested_transaction);
  std::unique_lock<std::mutex> lk(m.txn_mu);
  if (!sqlite3_get_autocommit(m.db)) return make_error_code(errc::nested_transaction);
  m.clear_dirty();
  if (auto ec = m.step_ctl(m.st_begin, "BEGIN IMMEDIATE")) return ec;
  m.txn_lock = std::move(lk);
  m.txn_owner = std::this_thread::get_id();
  m.in_txn = true;
  return {};
}

std::error_code master::commit() {
  impl& m = *impl_;
  if (!m.in_txn || m.txn_owner != std::this_thread::get_id())
    return make_error_code(errc::not_in_transaction);
  auto finish = [&] {
    m.in_txn = false;
    m.txn_lock.unlock();
  };
  if (sqlite3_get_autocommit(m.db)) {
    // The body committed or rolled back by itself (plain SQL): our transaction is gone.
    m.clear_dirty();
    finish();
    return m.fail(errc::not_in_transaction, "the transaction was ended outside master::commit()");
  }
  std::uint64_t nr = 0, nb = 0, ne = 0;
  m.internal_write = true;
  std::error_code ec = m.flush(nr, nb, ne);
  m.internal_write = false;
  if (!ec) {
    m.committing = true;
    ec = m.step_ctl(m.st_commit, "COMMIT");
    m.committing = false;
  }
  if (ec) {
    m.internal_write = true;
    if (!sqlite3_get_autocommit(m.db)) m.exec("ROLLBACK");
    m.internal_write = false;
    for (auto& t : m.tables) t->next_seq = t->saved_next_seq;
  } else {
    m.pending_records += nr;
    m.pending_bytes += nb;
    for (auto& t : m.tables) t->head = t->next_seq - 1;
    std::lock_guard<std::mutex> lk(m.stats_mu);
    if (ne) ++m.st.transactions;
    m.st.events += ne;
  }
  m.clear_dirty();
  m.update_stats();
  finish();
  if (!ec && nr) m.wake_bg();
  return ec;
}

std::error_code master::rollback() {
  impl& m = *impl_;
  if (!m.in_txn || m.txn_owner != std::this_thread::get_id())
    return make_error_code(errc::not_in_transaction);
  std::error_code ec;
  if (!sqlite3_get_autocommit(m.db)) ec = m.exec("ROLLBACK");
  m.clear_dirty();
  m.in_txn = false;
  m.txn_lock.unlock();
  return ec;
}

std::error_code master::transaction(const std::function<std::error_code(sqlite3*)>& body) {
  if (auto ec = begin()) return ec;
  std::error_code ec = body(impl_->db);
  if (ec) {
    rollback();
    return ec;
  }
  return commit();
}

std::error_code master::sync(std::string_view cqrs_id, std::string_view where_sql,
                             const std::vector<sql_param>& params, std::string_view replica,
                             std::size_t* synced) {
  impl& m = *impl_;
  if (m.in_txn && m.txn_owner == std::this_thread::get_id())
    return make_error_code(errc::nested_transaction);
  if (!replica.empty())
    if (auto ec = validate_replica_name(replica)) return ec;
  std::lock_guard<std::mutex> lk(m.txn_mu);
  auto* tp = m.find_id(cqrs_id);
  if (!tp) return make_error_code(errc::unknown_stream);
  return m.sync_locked(*tp, where_sql, params, replica, false, synced);
}

std::error_code master::dump(std::string_view cqrs_id, const std::string& path, std::size_t* rows) {
  return dump(cqrs_id, path, "", {}, rows);
}

std::error_code master::dump(std::string_view cqrs_id, const std::string& path,
                             std::string_view where_sql, const std::vector<sql_param>& params,
                             std::size_t* rows) {
  impl& m = *impl_;
  if (m.in_txn && m.txn_owner == std::this_thread::get_id())
    return make_error_code(errc::nested_transaction);
  std::lock_guard<std::mutex> lk(m.txn_mu);
  auto* tp = m.find_id(cqrs_id);
  if (!tp) return make_error_code(errc::unknown_stream);
  auto& t = *tp;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error_code(errc::io_error);
  std::vector<std::uint8_t> out;
  // Header: ["edgecqrs-dump", 1, schema-message]
  // array(3), text(13) "edgecqrs-dump", 1
  static const std::uint8_t kHead[] = {0x83, 0x6d, 'e', 'd', 'g', 'e', 'c', 'q',
                                       'r',  's',  '-', 'd', 'u', 'm', 'p', 0x01};
  out.assign(kHead, kHead + sizeof kHead);
  std::error_code ec = append_encoded(out, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
    return encode_schema(t.sch, b, c, w);
  });
  bool io_ok = !ec && std::fwrite(out.data(), 1, out.size(), f) == out.size();
  std::size_t n_rows = 0;
  if (!ec && io_ok) {
    // One read transaction: a consistent snapshot of the table.
    m.internal_write = true;
    ec = m.exec("BEGIN");
    if (!ec) {
      ec = m.read_rows(
          t, where_sql, params,
          [&](std::int64_t, std::size_t, const std::uint8_t* grp, std::size_t size) {
            out.clear();
            if (auto e = append_encoded(out, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
                  return encode_message_head(t.sch.schema_tag, 0, 1, false, b, c, w);
                }))
              return e;
            out.insert(out.end(), grp, grp + size);
            if (std::fwrite(out.data(), 1, out.size(), f) != out.size()) {
              io_ok = false;
              return make_error_code(errc::io_error);
            }
            return std::error_code{};
          },
          n_rows);
      m.exec("COMMIT");
    }
    m.internal_write = false;
  }
  if (std::fclose(f) != 0) io_ok = false;
  if (!ec && !io_ok) ec = make_error_code(errc::io_error);
  if (!ec && rows) *rows = n_rows;
  return ec;
}

void master::set_transport(transport* tx) {
  impl& m = *impl_;
  std::lock_guard<std::mutex> lk(m.txn_mu);
  m.tx = tx;
  m.inflight.clear();
  m.cursor = 0;
  if (tx)
    for (auto& t : m.tables) m.subscribe_control(*t);
}

std::error_code master::poll() {
  impl& m = *impl_;
  if (m.in_txn && m.txn_owner == std::this_thread::get_id())
    return make_error_code(errc::nested_transaction);
  std::lock_guard<std::mutex> lk(m.txn_mu);
  return m.poll_locked();
}

std::error_code master::start(std::int64_t interval_ms) {
  impl& m = *impl_;
  if (m.bg.joinable()) return make_error_code(errc::invalid_argument);
  {
    std::lock_guard<std::mutex> lk(m.snk->mu);
    m.snk->wake = &m.bg_cv;
  }
  m.bg_stop = false;
  m.bg = std::thread([&m, interval_ms] {
    std::unique_lock<std::mutex> lk(m.bg_mu);
    while (!m.bg_stop) {
      m.bg_cv.wait_for(lk, std::chrono::milliseconds(std::max<std::int64_t>(1, interval_ms)),
                       [&] { return m.bg_stop || m.bg_wake || m.sink_has_work(); });
      m.bg_wake = false;
      if (m.bg_stop) break;
      lk.unlock();
      {
        std::lock_guard<std::mutex> tl(m.txn_mu);
        m.poll_locked();
      }
      lk.lock();
    }
  });
  return {};
}

void master::stop() {
  if (!impl_ || !impl_->bg.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(impl_->bg_mu);
    impl_->bg_stop = true;
    impl_->bg_cv.notify_one();
  }
  impl_->bg.join();
  std::lock_guard<std::mutex> lk(impl_->snk->mu);
  impl_->snk->wake = nullptr;
}

master_stats master::stats() const {
  std::lock_guard<std::mutex> lk(impl_->stats_mu);
  master_stats s = impl_->st;
  s.unmanaged_writes_refused = impl_->unmanaged_refused.load();
  return s;
}

std::uint64_t master::head_seq(std::string_view cqrs_id) const {
  std::lock_guard<std::mutex> lk(impl_->stats_mu);
  const auto* t = impl_->find_id(cqrs_id);
  return t ? t->head.load() : 0;
}

std::string master::last_error_message() const { return impl_->last_error; }

bool master::has_preupdate_hook() noexcept {
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  return true;
#else
  return false;
#endif
}
}  // namespace edgecqrs

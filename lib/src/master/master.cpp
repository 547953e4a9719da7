// The public master API: open/attach, register_table, begin/commit/rollback, sync, poll,
// start/stop, stats. A thin layer over engine.hpp (capture -> outbox -> publisher; control, sync).
#include "edgecqrs/master.hpp"

#include <cstdio>

#include "master/engine.hpp"

namespace edgecqrs {

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
  // Without the master, writes to registered tables through this connection are refused too.
  sqlite3_create_function_v2(db, master_detail::guard_function, 0,
                             SQLITE_UTF8, nullptr, nullptr, nullptr, nullptr, nullptr);
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

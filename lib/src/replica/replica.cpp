// The public replica API: open (tables, statements), register streams, attach a transport;
// on_message feeds pipeline.cpp, poll() runs resync.cpp and retries.cpp; stats and status.
#include "replica/engine.hpp"

namespace edgecqrs {

namespace {

const char* const schema_sql =
    "CREATE TABLE IF NOT EXISTS edgecqrs_r_streams("
    " sid INTEGER PRIMARY KEY, cqrs_id TEXT UNIQUE NOT NULL, incarnation BLOB,"
    " checkpoint INTEGER NOT NULL DEFAULT 0, head INTEGER NOT NULL DEFAULT 0, seen BLOB,"
    " resync_session INTEGER NOT NULL DEFAULT 0, resync_parts INTEGER NOT NULL DEFAULT 0,"
    " resync_at_ms INTEGER NOT NULL DEFAULT 0, resync_done INTEGER NOT NULL DEFAULT 0,"
    " resync_done_upto INTEGER NOT NULL DEFAULT 0, resync_skip BLOB,"
    " resync_want INTEGER NOT NULL DEFAULT 0, resync_asked BLOB,"
    " resync_asks INTEGER NOT NULL DEFAULT 0);"
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
    " attempts INTEGER NOT NULL, body BLOB NOT NULL, size INTEGER NOT NULL DEFAULT 0);";

}  // namespace

replica::impl::~impl() {
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

std::error_code replica::impl::init() {
  if (exec(db, schema_sql) != SQLITE_OK) return make_error_code(errc::sqlite_error);
  // Databases created before re-sync ownership (or before re-sync requests carried a nonce)
  // lack their columns. A want stored then (an upto_seq) is satisfied by any session now.
  struct {
    const char* column;
    const char* sql;
  } const steps[] = {
      {"resync_want",
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_at_ms INTEGER NOT NULL DEFAULT 0;"
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_done INTEGER NOT NULL DEFAULT 0;"
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_done_upto INTEGER NOT NULL DEFAULT 0;"
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_skip BLOB;"
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_want INTEGER NOT NULL DEFAULT 0;"},
      {"resync_asks",
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_asked BLOB;"
       "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_asks INTEGER NOT NULL DEFAULT 0;"
       "UPDATE edgecqrs_r_streams SET resync_want=1 WHERE resync_want>0;"},
      {"resync_auth", "ALTER TABLE edgecqrs_r_streams ADD COLUMN resync_auth INTEGER NOT NULL"
                      " DEFAULT 0;"},
  };
  for (const auto& step : steps) {
    auto has_column = [&]() {
      statement has;
      if (has.prepare(db,
                      "SELECT count(*) FROM pragma_table_info('edgecqrs_r_streams')"
                      " WHERE name=?1") != SQLITE_OK)
        return false;
      has.bind_text(1, step.column);
      return has.step() == SQLITE_ROW && has.col_int(0) != 0;
    };
    if (has_column()) continue;
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK || exec(db, step.sql) != SQLITE_OK ||
        exec(db, "COMMIT") != SQLITE_OK) {
      exec(db, "ROLLBACK");
      // Another replica object may have migrated it meanwhile.
      if (!has_column()) return make_error_code(errc::sqlite_error);
    }
  }
  // Dead letters from before per-letter truncation lack the original size (0: body is whole).
  {
    statement has;
    if (has.prepare(
            db, "SELECT count(*) FROM pragma_table_info('edgecqrs_r_dead') WHERE name='size'") !=
            SQLITE_OK ||
        has.step() != SQLITE_ROW)
      return make_error_code(errc::sqlite_error);
    const bool missing = has.col_int(0) == 0;
    has.reset();
    if (missing &&
        exec(db, "ALTER TABLE edgecqrs_r_dead ADD COLUMN size INTEGER NOT NULL DEFAULT 0") !=
            SQLITE_OK) {
      // Another replica object may have migrated it meanwhile.
      statement again;
      if (again.prepare(db,
                        "SELECT count(*) FROM pragma_table_info('edgecqrs_r_dead')"
                        " WHERE name='size'") != SQLITE_OK ||
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
       " version=excluded.version, deleted=excluded.deleted,"
       " seq=CASE WHEN ?8 THEN excluded.seq ELSE max(seq, excluded.seq) END,"
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
       " resync_done_upto=?10, resync_skip=?11, resync_want=?12, resync_asked=?13,"
       " resync_asks=?14, resync_auth=?15 WHERE sid=?1"},
      {&q_stream_get,
       "SELECT incarnation, checkpoint, head, seen, resync_session, resync_parts, resync_at_ms,"
       " resync_done, resync_done_upto, resync_skip, resync_want, resync_asked, resync_asks,"
       " resync_auth FROM edgecqrs_r_streams WHERE sid=?1"},
      {&q_schema_get, "SELECT body FROM edgecqrs_r_schemas WHERE sid=?1 AND tag=?2"},
      {&q_schema_put,
       "INSERT OR REPLACE INTO edgecqrs_r_schemas(sid,tag,incarnation,body) VALUES(?1,?2,?3,?4)"},
      {&q_retry_put,
       "INSERT INTO edgecqrs_r_retries(sid,topic,key,body,attempts,next_ms,reason,detail,"
       "first_ms) VALUES(?1,?2,?3,?4,0,?5,?6,?7,?8)"},
      {&q_dead_put,
       "INSERT INTO edgecqrs_r_dead(at_ms,cqrs_id,topic,key,reason,category,detail,attempts,body,"
       "size)"
       " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"},
      {&q_dead_trim,
       "DELETE FROM edgecqrs_r_dead WHERE id IN (SELECT id FROM edgecqrs_r_dead ORDER BY id"
       " LIMIT max(0, (SELECT count(*) FROM edgecqrs_r_dead) - ?1))"},
  };
  for (const auto& e : list)
    if (e.s->prepare(db, e.sql) != SQLITE_OK) return make_error_code(errc::sqlite_error);
  return {};
}

std::vector<std::string> replica::impl::topics_of(const stream& s) const {
  std::string ev = event_topic(opts.topic_prefix, s.cqrs_id);
  if (!opts.shared_group.empty()) ev = "$share/" + opts.shared_group + "/" + ev;
  return {ev, direct_topic(opts.topic_prefix, opts.name, s.cqrs_id),
          schema_topic(opts.topic_prefix, s.cqrs_id)};
}

replica::replica(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

replica::~replica() { detach(); }

std::error_code replica::open(sqlite3* db, replica_options opts, std::unique_ptr<replica>& out) {
  if (!db) return make_error_code(errc::invalid_argument);
  if (auto ec = validate_replica_name(opts.name)) return ec;
  if (auto ec = validate_topic_prefix(opts.topic_prefix)) return ec;
  if (!opts.shared_group.empty())
    if (auto ec = validate_cqrs_id(opts.shared_group))
      return make_error_code(errc::invalid_argument);
  if (opts.max_seen_ranges == 0 || opts.max_dead_letters == 0 || opts.reorder_window_ms < 0 ||
      opts.request_backoff_initial_ms <= 0 || opts.retry_initial_ms <= 0 ||
      opts.retry_max_ms < opts.retry_initial_ms || opts.max_seq_ahead == 0 ||
      opts.max_tombstones == 0 || opts.max_dead_letter_body == 0)
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
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
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
  if (q.prepare(I.db,
                "INSERT INTO edgecqrs_r_streams(cqrs_id) VALUES(?1) ON CONFLICT(cqrs_id)"
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
      auto ec = t->subscribe(
          topic, [this](const incoming_message& m) { on_message(m.topic, m.data, m.size); });
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
    auto ec = t.subscribe(
        topic, [this](const incoming_message& m) { on_message(m.topic, m.data, m.size); });
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
  return request_resync(cqrs_id, false);
}

std::error_code replica::request_resync(std::string_view cqrs_id, bool authoritative) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  auto it = impl_->by_id.find(std::string(cqrs_id));
  if (it == impl_->by_id.end()) return make_error_code(errc::unknown_stream);
  stream& s = *it->second;
  // Satisfied only by a session asked for from now on (it reads the master after this call).
  s.next_resync_ms = 0;
  std::error_code ec = impl_->want_resync(s, true, authoritative);
  impl_->flush_controls(lk);
  return ec;
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
  out.resync_pending = s.prog.resync_want != 0;
  return {};
}

std::string replica::last_error() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->last_error;
}

}  // namespace edgecqrs

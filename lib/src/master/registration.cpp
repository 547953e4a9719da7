// Registration: engine setup (schema, statements, incarnation), register_table, the retained
// schema record and the control subscription. Prepares capture.cpp; feeds outbox.cpp, control.cpp.
#include "master/engine.hpp"

namespace edgecqrs::master_detail {
namespace {

const char* const schema_sql = R"(
CREATE TABLE IF NOT EXISTS edgecqrs_meta(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edgecqrs_stream(cqrs_id TEXT NOT NULL UNIQUE, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS edgecqrs_version(stream INTEGER NOT NULL, key BLOB NOT NULL,
  version INTEGER NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY(stream, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edgecqrs_outbox(id INTEGER PRIMARY KEY, stream INTEGER NOT NULL,
  kind INTEGER NOT NULL, first_seq INTEGER NOT NULL, n_events INTEGER NOT NULL,
  target TEXT NOT NULL DEFAULT '', ext BLOB, body BLOB NOT NULL, acked INTEGER NOT NULL DEFAULT 0,
  tag INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS edgecqrs_schema(stream INTEGER NOT NULL, tag INTEGER NOT NULL,
  body BLOB NOT NULL, PRIMARY KEY(stream, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edgecqrs_registration(cqrs_id TEXT PRIMARY KEY, tbl TEXT NOT NULL,
  columns TEXT NOT NULL, serializer_sql TEXT NOT NULL, tracked TEXT NOT NULL,
  produce INTEGER NOT NULL, filter INTEGER NOT NULL, serializer INTEGER NOT NULL,
  schema_tag INTEGER NOT NULL) WITHOUT ROWID;
)";

// Guard triggers (docs/capture.md): a write to a registered table from a connection the
// library does not own fails. The WHEN clause calls a function only the library's connections
// have: elsewhere the write statement fails to prepare with "no such function: <this name>";
// a connection defining a function of that name returning anything but 1 gets the RAISE.
const char* const guard_ops[3] = {"insert", "update", "delete"};

// Appends `name` as a quoted identifier to a comma-joined list ("a","b": edgecqrs_registration).
void add_ident(std::string& list, const std::string& name) {
  if (!list.empty()) list += ',';
  list += quote_ident(name);
}

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

}  // namespace

std::error_code engine::fail(errc e, const char* fmt,
                             std::initializer_list<std::string_view> args) {
  std::string msg;
  const std::string_view* a = args.begin();
  for (const char* p = fmt; *p; ++p) {
    if (*p == '%' && a != args.end())
      msg.append(a->data(), a->size()), ++a;
    else
      msg += *p;
  }
  last_error = std::move(msg);
  return make_error_code(e);
}

std::error_code engine::sql_fail(const char* what) {
  return fail(errc::sqlite_error, "%: %", {what, sqlite3_errmsg(db)});
}

std::error_code engine::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::error_code ec =
        fail(errc::sqlite_error, "%: %", {std::string_view(sql).substr(0, 40), err ? err : "?"});
    sqlite3_free(err);
    return ec;
  }
  return {};
}

std::error_code engine::init() {
  internal_write = true;
  std::error_code ec = exec(schema_sql);
  if (!ec) {
    // Outboxes of older versions lack `tag`: 0 there means "the stream's tag when first
    // registered by this version" (set in register_table; docs/replication.md).
    stmt q;
    if (prepare(q, "SELECT 1 FROM pragma_table_info('edgecqrs_outbox') WHERE name='tag'"))
      ec = sql_fail("outbox columns");
    else if (sqlite3_step(q.get()) != SQLITE_ROW)
      ec = exec("ALTER TABLE edgecqrs_outbox ADD COLUMN tag INTEGER NOT NULL DEFAULT 0");
  }
  if (!ec) ec = load_incarnation();
  internal_write = false;
  if (ec) return ec;
  static const struct {
    stmt engine::*st;
    const char* sql;
  } kStatements[] = {
      {&engine::st_version,
       "INSERT INTO edgecqrs_version(stream,key,version,updated_ms) VALUES(?1,?2,?3,?4)"},
      {&engine::st_version_upd,
       "UPDATE edgecqrs_version SET version=?3, updated_ms=?4 WHERE stream=?1 AND key=?2"},
      {&engine::st_version_get,
       "SELECT version, updated_ms FROM edgecqrs_version WHERE stream=?1 AND key=?2"},
      {&engine::st_outbox_insert,
       "INSERT INTO edgecqrs_outbox(stream,kind,first_seq,n_events,target,ext,body,tag) "
       "VALUES(?1,?2,?3,?4,?5,?6,?7,?8)"},
      {&engine::st_pending,
       "SELECT id,stream,kind,first_seq,n_events,target,ext,body,tag FROM edgecqrs_outbox WHERE "
       "id>?1 AND acked=0 ORDER BY id LIMIT ?2"},
      {&engine::st_ack, "UPDATE edgecqrs_outbox SET acked=1 WHERE id=?1 AND acked=0"},
      {&engine::st_outbox_top, "SELECT max(id) FROM edgecqrs_outbox"},
      {&engine::st_sync_level, "PRAGMA synchronous"},
      {&engine::st_begin, "BEGIN IMMEDIATE"},
      {&engine::st_commit, "COMMIT"},
  };
  for (const auto& k : kStatements)
    if ((this->*k.st).prepare(db, k.sql)) return sql_fail("prepare");
  if (auto cec = count_outbox()) return cec;
  {
    stmt vq;
    if (prepare(vq, "SELECT stream, key FROM edgecqrs_version")) return sql_fail("versions");
    while (sqlite3_step(vq.get()) == SQLITE_ROW) {
      const char* k = static_cast<const char*>(sqlite3_column_blob(vq.get(), 1));
      std::size_t n = static_cast<std::size_t>(sqlite3_column_bytes(vq.get(), 1));
      bloom_add(sqlite3_column_int64(vq.get(), 0), std::string_view(k, n));
    }
  }
  {
    stmt eq;
    if (prepare(eq, "PRAGMA encoding") == SQLITE_OK && sqlite3_step(eq.get()) == SQLITE_ROW) {
      const unsigned char* e = sqlite3_column_text(eq.get(), 0);
      db_utf8 = e && std::strcmp(reinterpret_cast<const char*>(e), "UTF-8") == 0;
    } else {
      db_utf8 = false;
    }
  }
  snk->max_control = cfg.max_pending_control;
  install_hooks();
  update_stats();
  return {};
}

std::error_code engine::count_outbox() {
  stmt q;
  if (prepare(q,
              "SELECT acked, count(*), total(length(body)), kind=3 FROM edgecqrs_outbox "
              "WHERE acked=0 OR kind=0 GROUP BY acked, kind=3"))
    return sql_fail("outbox count");
  // Pending records (control answers, kind 3, also on their own) and kept stream records.
  pending_records = pending_bytes = kept_records = kept_bytes = ctl_records = ctl_bytes = 0;
  while (sqlite3_step(q.get()) == SQLITE_ROW) {
    auto n = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 1));
    auto b = static_cast<std::uint64_t>(sqlite3_column_double(q.get(), 2));
    if (sqlite3_column_int(q.get(), 0)) {
      kept_records = n;
      kept_bytes = b;
    } else {
      pending_records += n;
      pending_bytes += b;
      if (sqlite3_column_int(q.get(), 3)) {
        ctl_records = n;
        ctl_bytes = b;
      }
    }
  }
  return {};
}

std::error_code engine::load_incarnation() {
  stmt q;
  if (prepare(q, "SELECT value FROM edgecqrs_meta WHERE key='incarnation'"))
    return sql_fail("incarnation");
  if (sqlite3_step(q.get()) == SQLITE_ROW && sqlite3_column_bytes(q.get(), 0) == 16) {
    std::memcpy(incarnation.data(), sqlite3_column_blob(q.get(), 0), 16);
    return {};
  }
  sqlite3_randomness(16, incarnation.data());
  stmt ins;
  if (prepare(ins, "INSERT OR REPLACE INTO edgecqrs_meta(key,value) VALUES('incarnation',?1)"))
    return sql_fail("incarnation");
  sqlite3_bind_blob(ins.get(), 1, incarnation.data(), 16, SQLITE_STATIC);
  if (sqlite3_step(ins.get()) != SQLITE_DONE) return sql_fail("incarnation");
  return {};
}

// ============================================================================ registration

std::error_code engine::register_table(const table_options& o) {
  if (auto ec = validate_cqrs_id(o.cqrs_id)) {
    fail(errc::invalid_argument, "invalid CQRS_ID '%'", {o.cqrs_id});
    return ec;
  }
  if (find_id(o.cqrs_id))
    return fail(errc::duplicate_cqrs_id, "CQRS_ID '%' is already registered", {o.cqrs_id});
  // The canonical name as stored in the schema (the hooks report that spelling).
  std::string canon;
  bool without_rowid = false;
  {
    stmt q;
    if (prepare(q,
                "SELECT name, type, wr FROM pragma_table_list WHERE schema='main' AND "
                "name=?1 COLLATE NOCASE"))
      return sql_fail("table_list");
    sqlite3_bind_text(q.get(), 1, o.table.data(), static_cast<int>(o.table.size()), SQLITE_STATIC);
    if (sqlite3_step(q.get()) != SQLITE_ROW) {
      return fail(errc::unknown_table, "no such table: '%'", {o.table});
    }
    canon = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
    const char* type = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 1));
    without_rowid = sqlite3_column_int(q.get(), 2) != 0;
    if (std::strcmp(type, "table") != 0) {
      return fail(errc::unsupported_table, "'%' is a %, only ordinary tables can be captured",
                  {canon, type});
    }
#ifndef EDGECQRS_HAVE_PREUPDATE_HOOK
    if (without_rowid) {
      return fail(errc::unsupported_table,
                  "'%' is WITHOUT ROWID: capture needs the pre-update hook, which this build lacks",
                  {canon});
    }
#endif
    if (canon.rfind("edgecqrs_", 0) == 0 || canon.rfind("sqlite_", 0) == 0) {
      return fail(errc::unsupported_table, "'%' is an internal table", {canon});
    }
  }
  if (find_table(canon.c_str())) {
    return fail(errc::already_registered, "table '%' is already registered", {canon});
  }
  auto t = std::make_unique<table_state>();
  t->index = tables.size();
  t->table = canon;
  t->cqrs_id = o.cqrs_id;
  t->produce = o.produce;
  t->filter = o.filter;
  t->serializer = o.serializer;
  t->serializer_sql = o.serializer_sql;

  // Table columns and primary key.
  std::vector<column_def> tcols;
  bool generated = false;                     // any generated column
  std::vector<std::pair<int, int>> pk_order;  // (pk position, table column)
  {
    stmt q;
    // table_xinfo: column indices as the pre-update hook counts them (generated included).
    if (prepare(q, "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid"))
      return sql_fail("table_info");
    sqlite3_bind_text(q.get(), 1, canon.c_str(), -1, SQLITE_STATIC);
    while (sqlite3_step(q.get()) == SQLITE_ROW) {
      column_def c;
      c.name = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
      const unsigned char* ty = sqlite3_column_text(q.get(), 1);
      c.decl_type = ty ? reinterpret_cast<const char*>(ty) : "";
      int pk = sqlite3_column_int(q.get(), 2);
      int hidden = sqlite3_column_int(q.get(), 3);
      generated = generated || hidden == 2 || hidden == 3;
      if (pk > 0) pk_order.emplace_back(pk, static_cast<int>(tcols.size()));
      tcols.push_back(std::move(c));
    }
  }
  if (pk_order.empty()) {
    return fail(errc::missing_primary_key, "table '%' has no PRIMARY KEY", {canon});
  }
  // Column affinity rules of SQLite (datatype3.html §3.1): only REAL matters here.
  for (auto& c : tcols) {
    std::string ty;
    for (char ch : c.decl_type) ty += static_cast<char>(ch >= 'a' && ch <= 'z' ? ch - 32 : ch);
    auto has = [&](const char* w) { return ty.find(w) != std::string::npos; };
    bool real = !has("INT") && !has("CHAR") && !has("CLOB") && !has("TEXT") && !has("BLOB") &&
                !ty.empty() && (has("REAL") || has("FLOA") || has("DOUB"));
    t->real_affinity.push_back(real);
  }
  // Sorted by pk position (insertion sort: a handful of entries).
  for (std::size_t i = 1; i < pk_order.size(); ++i)
    for (std::size_t j = i; j > 0 && pk_order[j] < pk_order[j - 1]; --j)
      std::swap(pk_order[j], pk_order[j - 1]);
  for (auto& p : pk_order) t->pk_table_cols.push_back(p.second);
  t->rowid_alias = pk_order.size() == 1 && ieq(tcols[pk_order[0].second].decl_type, "INTEGER");
  // WITHOUT ROWID tables report no rowid alias even for INTEGER keys (`wr` of the table's
  // pragma_table_list row, read above).
  if (without_rowid) t->rowid_alias = false;
#ifndef EDGECQRS_HAVE_PREUPDATE_HOOK
  if (!t->rowid_alias) {
    return fail(errc::unsupported_table,
                "table '%': without the pre-update hook only tables keyed by an INTEGER PRIMARY "
                "KEY (rowid) can be captured",
                {canon});
  }
#endif
  auto table_col = [&](const std::string& name) -> int {
    for (std::size_t i = 0; i < tcols.size(); ++i)
      if (ieq(tcols[i].name, name)) return static_cast<int>(i);
    return -1;
  };
  std::string where;
  for (std::size_t i = 0; i < t->pk_table_cols.size(); ++i) {
    if (i) where += " AND ";
    where += quote_ident(tcols[t->pk_table_cols[i]].name);
    where += "=?";
    where += decimal(i + 1);
  }
  t->where_pk = where;

  // Stream columns.
  if (!o.serializer_sql.empty()) {
    if (!o.columns.empty()) {
      return fail(errc::invalid_argument, "columns and serializer_sql are exclusive");
    }
    if (t->read_custom.prepare(db, o.serializer_sql)) return sql_fail("serializer_sql");
    int n = sqlite3_column_count(t->read_custom.get());
    if (sqlite3_bind_parameter_count(t->read_custom.get()) !=
        static_cast<int>(t->pk_table_cols.size())) {
      return fail(errc::invalid_argument,
                  "serializer_sql must take exactly one parameter per primary-key column");
    }
    for (int i = 0; i < n; ++i) {
      column_def c;
      c.name = sqlite3_column_name(t->read_custom.get(), i);
      const char* ty = sqlite3_column_decltype(t->read_custom.get(), i);
      c.decl_type = ty ? ty : "";
      t->sch.columns.push_back(std::move(c));
    }
  } else {
    // The listed columns, or every table column.
    bool all = o.columns.empty();
    std::size_t n_names = all ? tcols.size() : o.columns.size();
    for (std::size_t k = 0; k < n_names; ++k) {
      const std::string& n = all ? tcols[k].name : o.columns[k];
      int c = table_col(n);
      if (c < 0) {
        return fail(errc::unknown_column, "table '%' has no column '%'", {canon, n});
      }
      for (int prev : t->sel_table_cols)
        if (prev == c) {
          return fail(errc::invalid_argument, "column '%' listed twice", {n});
        }
      t->sel_table_cols.push_back(c);
      t->sch.columns.push_back(tcols[static_cast<std::size_t>(c)]);
    }
  }
  for (int pkc : t->pk_table_cols) {
    int at = -1;
    for (std::size_t i = 0; i < t->sel_table_cols.size(); ++i)
      if (t->sel_table_cols[i] == pkc) at = static_cast<int>(i);
    t->pk_sel_pos.push_back(at);
  }
  for (int pkc : t->pk_table_cols) {
    bool found = false;
    for (std::size_t i = 0; i < t->sch.columns.size(); ++i) {
      if (ieq(t->sch.columns[i].name, tcols[static_cast<std::size_t>(pkc)].name)) {
        t->sch.pk.push_back(static_cast<std::uint32_t>(i));
        found = true;
        break;
      }
    }
    if (!found) {
      return fail(errc::missing_primary_key, "columns of '%' must include primary-key column '%'",
                  {o.cqrs_id, tcols[static_cast<std::size_t>(pkc)].name});
    }
  }
  for (auto& n : o.tracked) {
    int c = table_col(n);
    if (c < 0) {
      return fail(errc::unknown_column, "table '%' has no tracked column '%'", {canon, n});
    }
    std::uint32_t sc = UINT32_MAX;
    for (std::size_t i = 0; i < t->sch.columns.size(); ++i)
      if (ieq(t->sch.columns[i].name, n)) sc = static_cast<std::uint32_t>(i);
    if (sc == UINT32_MAX) {
      return fail(errc::unknown_column, "tracked column '%' is not among the columns sent", {n});
    }
    t->tracked.emplace_back(sc, c);
  }
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  // Old values of every stream column (table columns) detect no-op changes (SET x = x, changes
  // undone by ROLLBACK TO) and give tracked previous values. Generated columns are computed
  // after the hook: a table with any re-reads final values and skips old-value comparisons.
  if (!generated) {
    if (o.serializer_sql.empty())
      t->compare_table_cols = t->sel_table_cols;
    else
      for (auto& tr : t->tracked) t->compare_table_cols.push_back(tr.second);
  }
  t->cache_final = o.serializer_sql.empty() && !generated;
#endif
  // Final-state read: stream columns (or the compare columns when serialized by SQL).
  {
    std::string cols;
    const std::vector<int>& list =
        o.serializer_sql.empty() ? t->sel_table_cols : t->compare_table_cols;
    for (int c : list) {
      if (!cols.empty()) cols += ",";
      cols += quote_ident(tcols[static_cast<std::size_t>(c)].name);
    }
    if (cols.empty()) cols = "1";
    t->select_cols = cols;
    std::string sql = "SELECT ";
    sql += cols;
    sql += " FROM ";
    sql += quote_ident(canon);
    sql += " WHERE ";
    sql += where;
    if (t->read_final.prepare(db, sql)) return sql_fail("read_final");
  }

  t->sch.cqrs_id = o.cqrs_id;
  t->sch.incarnation = incarnation;
  t->sch.schema_tag = compute_schema_tag(t->sch);
  t->event_topic = event_topic(cfg.topic_prefix, o.cqrs_id);
  t->schema_topic = schema_topic(cfg.topic_prefix, o.cqrs_id);
  t->control_topic = control_topic(cfg.topic_prefix, o.cqrs_id);

  // Stream row (sequence) and the retained schema message, in one transaction.
  table_state* tp = t.get();
  std::error_code ec = internal_txn([&](std::uint64_t& nr, std::uint64_t& nb) -> std::error_code {
    stmt ins, sel;
    if (prepare(ins, "INSERT OR IGNORE INTO edgecqrs_stream(cqrs_id,next_seq) VALUES(?1,1)") ||
        prepare(sel, "SELECT rowid, next_seq FROM edgecqrs_stream WHERE cqrs_id=?1"))
      return sql_fail("stream");
    sqlite3_bind_text(ins.get(), 1, o.cqrs_id.c_str(), -1, SQLITE_STATIC);
    if (sqlite3_step(ins.get()) != SQLITE_DONE) return sql_fail("stream");
    sqlite3_bind_text(sel.get(), 1, o.cqrs_id.c_str(), -1, SQLITE_STATIC);
    if (sqlite3_step(sel.get()) != SQLITE_ROW) return sql_fail("stream");
    tp->stream_id = sqlite3_column_int64(sel.get(), 0);
    tp->next_seq = static_cast<std::uint64_t>(sqlite3_column_int64(sel.get(), 1));
    stmt up;  // records written before the outbox had tags: encoded with this schema
    if (prepare(up, "UPDATE edgecqrs_outbox SET tag=?2 WHERE stream=?1 AND tag=0"))
      return sql_fail("stream");
    sqlite3_bind_int64(up.get(), 1, tp->stream_id);
    sqlite3_bind_int64(up.get(), 2, tp->sch.schema_tag);
    if (sqlite3_step(up.get()) != SQLITE_DONE) return sql_fail("stream");
    stmt mx;
    if (prepare(mx,
                "SELECT max(first_seq + n_events) FROM edgecqrs_outbox WHERE kind=0 AND "
                "stream=?1"))
      return sql_fail("stream");
    sqlite3_bind_int64(mx.get(), 1, tp->stream_id);
    if (sqlite3_step(mx.get()) == SQLITE_ROW && sqlite3_column_type(mx.get(), 0) != SQLITE_NULL)
      tp->next_seq =
          std::max(tp->next_seq, static_cast<std::uint64_t>(sqlite3_column_int64(mx.get(), 0)));
    if (auto e = record_definition(*tp, o)) return e;
    return enqueue_schema(*tp, nr, nb);
  });
  if (ec) return ec;
#ifndef EDGECQRS_HAVE_PREUPDATE_HOOK
  {
    std::string trig = "CREATE TEMP TRIGGER IF NOT EXISTS " +
                       quote_ident("edgecqrs_key_gone_" + decimal(tp->index)) +
                       " AFTER UPDATE ON main." + quote_ident(canon) +
                       " WHEN old.rowid IS NOT new.rowid BEGIN SELECT edgecqrs_key_gone(" +
                       decimal(tp->index) + ", old.rowid); END";
    internal_write = true;
    std::error_code te = exec(trig.c_str());
    internal_write = false;
    if (te) return te;
  }
#endif
  {
    std::lock_guard<std::mutex> lk(stats_mu);
    tables.push_back(std::move(t));
  }
  tp->head = tp->next_seq - 1;
  if (tx) subscribe_control(*tp);
  return {};
}

std::error_code engine::record_definition(const table_state& t, const table_options& o) {
  // The definition the CLI reproduces (tools/edgecqrs: sync, dump, diff-*).
  std::string cols, tracked;
  if (o.serializer_sql.empty())
    for (const auto& c : t.sch.columns) add_ident(cols, c.name);
  for (const auto& n : o.tracked) add_ident(tracked, n);
  stmt def;
  if (prepare(def,
              "INSERT OR REPLACE INTO edgecqrs_registration(cqrs_id,tbl,columns,serializer_sql,"
              "tracked,produce,filter,serializer,schema_tag) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)"))
    return sql_fail("registration");
  const std::string* text[5] = {&t.cqrs_id, &t.table, &cols, &o.serializer_sql, &tracked};
  for (int i = 0; i < 5; ++i) sqlite3_bind_text(def.get(), i + 1, text[i]->c_str(), -1, nullptr);
  sqlite3_bind_int(def.get(), 6, o.produce);
  sqlite3_bind_int(def.get(), 7, o.filter != nullptr);
  sqlite3_bind_int(def.get(), 8, o.serializer != nullptr);
  sqlite3_bind_int64(def.get(), 9, t.sch.schema_tag);
  if (sqlite3_step(def.get()) != SQLITE_DONE) return sql_fail("registration");
  // Guard triggers: created when missing (they stay across restarts; their name holds the
  // table's, so a version changing their text must rename them), dropped when the table's
  // changes are not captured (produce off).
  for (const char* op : guard_ops) {
    char* q = t.produce ? sqlite3_mprintf(
                              "CREATE TRIGGER IF NOT EXISTS \"edgecqrs_guard_%s_%w\" BEFORE %s ON "
                              "\"%w\" WHEN %s() IS NOT 1 BEGIN SELECT RAISE(ABORT, 'edgecqrs: "
                              "table %q is replicated: write it through the edgecqrs master API'); "
                              "END",
                              op, t.table.c_str(), op, t.table.c_str(), guard_function,
                              t.table.c_str())
                        : sqlite3_mprintf("DROP TRIGGER IF EXISTS \"edgecqrs_guard_%s_%w\"", op,
                                          t.table.c_str());
    if (!q) return fail(errc::sqlite_error, "out of memory");
    std::error_code e = exec(q);
    sqlite3_free(q);
    if (e) return e;
  }
  return {};
}

std::error_code engine::subscribe_control(table_state& t) {
  std::weak_ptr<sink> w = snk;
  std::size_t id = t.index;  // tables are never removed
  return tx->subscribe(t.control_topic, [w, id](const incoming_message& m) {
    auto s = w.lock();
    if (!s) return;
    control_request c;
    if (decode_control(m.data, m.size, c)) return;  // malformed requests are ignored
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->alive) return;
    if (s->control.size() >= s->max_control) {
      ++s->control_dropped;
      return;
    }
    s->control.emplace_back(id, std::move(c));
    if (s->wake) s->wake->notify_one();
  });
}

std::error_code engine::enqueue_schema(table_state& t, std::uint64_t& nr, std::uint64_t& nb) {
  std::vector<std::uint8_t> buf;
  std::error_code ec = append_encoded(buf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
    return encode_schema(t.sch, b, c, w);
  });
  if (ec) return ec;
  // Kept while records encoded with it exist (replays of older seqs included).
  stmt put, del, old;
  if (prepare(put, "INSERT OR REPLACE INTO edgecqrs_schema(stream,tag,body) VALUES(?1,?2,?3)") ||
      prepare(del,
              "DELETE FROM edgecqrs_schema WHERE stream=?1 AND tag<>?2 AND NOT EXISTS(SELECT 1 "
              "FROM edgecqrs_outbox o WHERE o.stream=?1 AND o.tag=edgecqrs_schema.tag AND "
              "o.kind<>2)") ||
      prepare(old, "SELECT tag, body FROM edgecqrs_schema WHERE stream=?1 AND tag<>?2"))
    return sql_fail("schema");
  for (stmt* s : {&put, &del, &old}) {
    sqlite3_bind_int64(s->get(), 1, t.stream_id);
    sqlite3_bind_int64(s->get(), 2, t.sch.schema_tag);
  }
  sqlite3_bind_blob(put.get(), 3, buf.data(), static_cast<int>(buf.size()), SQLITE_STATIC);
  if (sqlite3_step(put.get()) != SQLITE_DONE || sqlite3_step(del.get()) != SQLITE_DONE)
    return sql_fail("schema");
  // Older schemas first (not retained: the publisher retains the current tag only).
  while (sqlite3_step(old.get()) == SQLITE_ROW) {
    auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(old.get(), 1));
    if ((ec = write_record(t, kind_schema, 0, 0, {}, nullptr, p,
                           static_cast<std::size_t>(sqlite3_column_bytes(old.get(), 1)), nr, nb,
                           static_cast<std::uint32_t>(sqlite3_column_int64(old.get(), 0)))))
      return ec;
  }
  return write_record(t, kind_schema, 0, 0, {}, nullptr, buf.data(), buf.size(), nr, nb);
}
}  // namespace edgecqrs::master_detail

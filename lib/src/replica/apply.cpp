// Apply: one event in the message's transaction: version check, mapped upsert/delete or handlers,
// row versions and tombstones. Fed by pipeline.cpp and retries.cpp; plans come from schemas.cpp.
#include <cmath>

#include "replica/engine.hpp"

namespace edgecqrs {

namespace {

std::error_code sql_error(sqlite3* db, std::string& detail) {
  detail = sqlite3_errmsg(db);
  return make_error_code(errc::sqlite_error);
}

bool has(std::string_view decl, const char* what) {
  const std::size_t n = std::strlen(what);
  for (std::size_t i = 0; i + n <= decl.size(); ++i) {
    std::size_t k = 0;
    while (k < n && (decl[i + k] | 0x20) == (what[k] | 0x20)) ++k;
    if (k == n) return true;
  }
  return false;
}

}  // namespace

namespace replica_detail {

// SQLite's affinity rules (datatype3.html §3.1) decide what a column makes of a value; a key
// value that the column would convert (5.0 or "6" into INTEGER, 6 into TEXT) or cannot hold
// (NULL, NaN) would land on another row than its key says, past that row's version.
// Text and blobs that no affinity converts stay as they are in every column: keys declared UUID,
// DATE or INT (NUMERIC/INTEGER affinity) often hold such text on the master.
std::uint8_t key_types_of(std::string_view decl, bool rowid_alias) {
  if (has(decl, "INT"))
    return rowid_alias ? key_int : key_int | key_real_frac | key_text | key_blob;
  if (has(decl, "CHAR") || has(decl, "CLOB") || has(decl, "TEXT"))
    return key_text | key_text_numeric | key_blob;
  if (decl.empty() || has(decl, "BLOB"))
    return key_int | key_real_frac | key_real_integral | key_text | key_text_numeric | key_blob;
  if (has(decl, "REAL") || has(decl, "FLOA") || has(decl, "DOUB"))
    return key_real_frac | key_real_integral | key_text | key_blob;
  return key_int | key_real_frac | key_text | key_blob;  // NUMERIC
}

// Whether numeric affinity would convert `s` (SQLite converts text that is a well-formed integer
// or real literal, with optional surrounding spaces; datatype3.html §3).
bool looks_numeric(std::string_view s) {
  std::size_t i = 0, n = s.size();
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; };
  while (i < n && space(s[i])) ++i;
  while (n > i && space(s[n - 1])) --n;
  if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
  std::size_t digits = 0;
  while (i < n && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (i < n && s[i] == '.') {
    ++i;
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t e = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i, ++e;
    if (e == 0) return false;
  }
  return i == n;
}

std::string key_problem(const plan& pl, const event& ev) {
  for (std::size_t j = 0; j < pl.sch.pk.size() && j < pl.key_types.size(); ++j) {
    const std::uint32_t col = pl.sch.pk[j];
    const value& v = ev.kind == event_kind::remove ? ev.values[j] : ev.values[col];
    std::uint8_t t = 0;
    const char* what = "NULL";
    switch (v.type()) {
      case value_type::null:
        break;
      case value_type::integer:
        t = key_int;
        what = "an integer";
        break;
      case value_type::real: {
        const double d = v.as_real();
        what = "NaN";
        if (d == d) {
          const bool integral = std::trunc(d) == d && std::fabs(d) < 9223372036854775808.0;
          t = integral ? key_real_integral : key_real_frac;
          what = integral ? "an integral real" : "a real";
        }
        break;
      }
      case value_type::text:
        t = looks_numeric(v.bytes()) ? key_text_numeric : key_text;
        what = t == key_text ? "text" : "numeric text";
        break;
      case value_type::blob:
        t = key_blob;
        what = "a blob";
        break;
    }
    if (!(t & pl.key_types[j]))
      return "key column '" + pl.sch.columns[col].name + "' (declared '" +
             pl.sch.columns[col].decl_type + "') cannot be " + what;
  }
  return {};
}

}  // namespace replica_detail

std::string_view replica::impl::make_key(const plan& pl, const event& ev) {
  keybuf.clear();
  if (ev.kind == event_kind::remove) {
    for (const auto& v : ev.values) replica_detail::append_key(keybuf, v);
  } else {
    for (std::uint32_t k : pl.sch.pk) replica_detail::append_key(keybuf, ev.values[k]);
  }
  return keybuf;
}

change replica::impl::make_change(const plan& pl, const event& ev, const apply_ctx& c) {
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

std::error_code replica::impl::mark_session(const stream& s, std::string_view key,
                                            std::uint64_t session) {
  reset_guard g(q_row_session);
  q_row_session.bind(1, s.sid);
  q_row_session.bind_blob(2, key.data(), key.size());
  q_row_session.bind(3, static_cast<std::int64_t>(session));
  q_row_session.bind(4, msg_now);
  return q_row_session.step() == SQLITE_DONE ? std::error_code{}
                                             : make_error_code(errc::sqlite_error);
}

// Applies one validated event inside the open transaction. On error the caller rolls back.
std::error_code replica::impl::apply_event(plan& pl, const event& ev, const apply_ctx& c,
                                           outcome& out, std::string& detail) {
  stream& s = *pl.st;
  out = outcome::ignored;
  if (ev.kind == event_kind::sync && !c.direct && s.opts.only_direct_syncs) return {};
  std::string_view key = make_key(pl, ev);
  const bool db_mode = !s.opts.local_table.empty();
  const bool is_delete = ev.kind == event_kind::remove;
  const bool fast = db_mode && !c.authoritative &&
                    (is_delete ? !s.opts.on_delete : !s.opts.on_create && !s.opts.on_update);
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
      if (is_delete) ++tombstones_added;
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
  // An authoritative session (the operator's repair): the master's row wins over a tombstone
  // or a higher version, and takes the master's version.
  if (!newer && c.authoritative && c.repaired) {
    newer = true;
    ++(deleted ? c.repaired->tombstones_cleared_by_resync
               : c.repaired->rows_overwritten_by_resync);
  }
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
    q_row_put.bind(8, c.authoritative ? 1 : 0);
    if (q_row_put.step() != SQLITE_DONE) return sql_error(db, detail);
  }
  if (is_delete) ++tombstones_added;
  out = outcome::applied;
  return {};
}

void replica::impl::count(outcome o, replica_stats& d) {
  switch (o) {
    case outcome::applied:
      ++d.events_applied;
      break;
    case outcome::stale:
      ++d.skipped_stale;
      break;
    case outcome::duplicate:
      ++d.duplicates;
      break;
    case outcome::ignored:
      ++d.ignored;
      break;
  }
}

std::error_code replica::impl::prune_tombstones() {
  for (auto& s : streams) {
    statement d;
    if (d.prepare(db,
                  "DELETE FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=1 AND at_ms<?2"
                  " AND seq<=?3") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    d.bind(1, s->sid);
    d.bind(2, now() - opts.tombstone_retention_ms);
    d.bind(3, static_cast<std::int64_t>(s->prog.checkpoint));
    if (d.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    st.tombstones_pruned += static_cast<std::uint64_t>(sqlite3_changes(db));
    // Bounded (docs/replication.md §2): beyond max_tombstones the oldest go, even above the
    // checkpoint and within the retention time.
    statement n;
    if (n.prepare(db, "SELECT count(*) FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=1") !=
        SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    n.bind(1, s->sid);
    if (n.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
    const auto count = static_cast<std::uint64_t>(n.col_int(0));
    n.reset();
    if (count <= opts.max_tombstones) continue;
    statement cut;
    if (cut.prepare(db,
                    "DELETE FROM edgecqrs_r_rows WHERE sid=?1 AND key IN (SELECT key FROM"
                    " edgecqrs_r_rows WHERE sid=?1 AND deleted=1 ORDER BY at_ms, seq LIMIT ?2)") !=
        SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    cut.bind(1, s->sid);
    cut.bind(2, static_cast<std::int64_t>(count - opts.max_tombstones));
    if (cut.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    st.tombstones_dropped += static_cast<std::uint64_t>(sqlite3_changes(db));
  }
  tombstones_added = 0;
  return {};
}

}  // namespace edgecqrs

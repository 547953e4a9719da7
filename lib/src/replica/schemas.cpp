// Schemas: schema messages (from pipeline.cpp) and plans, how a remote schema lands in the local
// table; apply.cpp writes through the plans, parked messages return via dead_letters.cpp.
#include "replica/engine.hpp"

namespace edgecqrs {

std::error_code replica::impl::load_local_columns(const std::string& table,
                                                  std::vector<local_column>& out) {
  out.clear();
  statement q;
  // table_xinfo is a table-valued pragma; the table name is bound, never spliced.
  if (q.prepare(db,
                "SELECT name, type, \"notnull\", dflt_value, pk, hidden"
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

void replica::impl::build_plan(plan& pl) {
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
  // What each key column accepts: its declared type at the master and, in DB mode, locally.
  // A single INTEGER key is a rowid alias: SQLite takes integers only (NULL picks a new id).
  auto is_integer = [](std::string_view d) {
    return d.size() == 7 && key_types_of(d, true) == key_int && (d[0] | 0x20) == 'i' &&
           (d[6] | 0x20) == 'r';
  };
  std::size_t local_keys = 0;
  for (const auto& c : s.local) local_keys += c.pk > 0;
  for (std::uint32_t k : sch.pk) {
    const std::string_view decl = sch.columns[k].decl_type;
    std::uint8_t t = key_types_of(decl, sch.pk.size() == 1 && is_integer(decl));
    // A local type that keeps none of them maps across types (the application's choice): the
    // master's type decides then.
    if (const local_column* lc = db_mode ? find_local(pl.local_name[k]) : nullptr)
      if (const std::uint8_t both =
              t & key_types_of(lc->type, local_keys == 1 && lc->pk == 1 && is_integer(lc->type)))
        t = both;
    pl.key_types.push_back(t);
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
    pl.problem_detail = "stream '" + s.cqrs_id +
                        "': the master's key does not map onto the"
                        " PRIMARY KEY of local table '" +
                        s.opts.local_table + "'";
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
        pl.problem_detail = "stream '" + s.cqrs_id + "': local column '" + c.name + "' of table '" +
                            s.opts.local_table +
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

plan* replica::impl::find_plan(stream& s, std::uint32_t tag) {
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

std::error_code replica::impl::handle_schema(stream& s, std::string_view topic,
                                             const std::uint8_t* data, std::size_t size,
                                             const msg_opts& mo,
                                             std::vector<std::int64_t>& to_retry) {
  schema sch;
  if (auto ec = decode_schema(data, size, sch, opts.limits))
    return dead_letter_message(s.cqrs_id, topic, ec, ec.message(), data, size, mo.dead_letter_id,
                               nullptr, nullptr);
  if (sch.cqrs_id != s.cqrs_id || sch.pk.empty())
    return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::schema_mismatch),
                               "schema message names another CQRS_ID or has no key", data, size,
                               mo.dead_letter_id, nullptr, nullptr);
  // The tag names the content (docs/wire-format.md §4): a schema whose tag is not its hash, or
  // whose tag already names other content here (FNV-1a is no MAC: collisions can be made), would
  // make events of that tag land in the wrong columns.
  const char* forged = nullptr;
  if (compute_schema_tag(sch) != sch.schema_tag) forged = "is not the hash of its content";
  if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
  if (!forged) {
    reset_guard g(q_schema_get);
    q_schema_get.bind(1, s.sid);
    q_schema_get.bind(2, sch.schema_tag);
    schema old;
    if (q_schema_get.step() == SQLITE_ROW) {
      auto body = q_schema_get.col_blob(0);
      const bool same = !decode_schema(reinterpret_cast<const std::uint8_t*>(body.data()),
                                       body.size(), old, opts.limits) &&
                        old.cqrs_id == sch.cqrs_id && old.incarnation == sch.incarnation &&
                        old.pk == sch.pk && old.columns.size() == sch.columns.size() &&
                        std::equal(old.columns.begin(), old.columns.end(), sch.columns.begin(),
                                   [](const column_def& x, const column_def& y) {
                                     return x.name == y.name && x.decl_type == y.decl_type;
                                   });
      if (!same) forged = "already names a schema with other content";
    }
  }
  if (forged) {
    exec(db, "ROLLBACK");
    return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::bad_schema),
                               "schema tag " + std::to_string(sch.schema_tag) + " " + forged, data,
                               size, mo.dead_letter_id, nullptr, nullptr);
  }
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
  // The initial load, or the new master's rows: wanted until a session asked for now completes.
  if (first || reset) raise_want(p, true);
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
    if (trim.prepare(db,
                     "DELETE FROM edgecqrs_r_schemas WHERE sid=?1 AND rowid NOT IN (SELECT"
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
    s.next_resync_ms = s.resync_backoff_ms = 0;
  }
  settle_resync(s);
  plan* pl = find_plan(s, sch.schema_tag);
  if (pl && pl->problem) last_error = pl->problem_detail;
  // Messages parked for want of this schema can be applied now.
  statement q;
  if (q.prepare(db,
                "SELECT id FROM edgecqrs_r_dead WHERE cqrs_id=?1 AND reason=?2 AND"
                " category=?3 ORDER BY id") == SQLITE_OK) {
    q.bind_text(1, s.cqrs_id);
    q.bind(2, static_cast<int>(errc::unknown_schema));
    q.bind_text(3, edgecqrs_category().name());
    while (q.step() == SQLITE_ROW) to_retry.push_back(q.col_int(0));
  }
  return {};
}

}  // namespace edgecqrs

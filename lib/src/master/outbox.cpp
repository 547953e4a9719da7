// Outbox: before COMMIT, encodes the final state of each dirty row into events and writes them
// to edgecqrs_outbox in the same transaction. Fed by capture.cpp; drained by publisher.cpp.
#include "master/engine.hpp"

namespace edgecqrs::master_detail {
namespace {

// Exact equality, as `value`'s: REALs by bit pattern, TEXT never equals BLOB.
bool same_value(const value_view& a, const value_view& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case value_type::null:
      return true;
    case value_type::integer:
      return a.i == b.i;
    case value_type::real:
      return std::memcmp(&a.d, &b.d, sizeof(double)) == 0;
    default:
      return a.size == b.size && (a.size == 0 || std::memcmp(a.data, b.data, a.size) == 0);
  }
}

}  // namespace

std::error_code engine::write_record(table_state& t, int kind, std::uint64_t first_seq,
                                     std::size_t n_events, std::string_view target,
                                     const std::vector<std::uint8_t>* ext, const std::uint8_t* body,
                                     std::size_t body_size, std::uint64_t& new_records,
                                     std::uint64_t& new_bytes, std::uint32_t tag) {
  sqlite3_stmt* s = st_outbox_insert.get();
  reset_guard g{s};
  sqlite3_bind_int64(s, 1, t.stream_id);
  sqlite3_bind_int(s, 2, kind);
  sqlite3_bind_int64(s, 3, static_cast<sqlite3_int64>(first_seq));
  sqlite3_bind_int64(s, 4, static_cast<sqlite3_int64>(n_events));
  sqlite3_bind_text(s, 5, target.empty() ? "" : target.data(), static_cast<int>(target.size()),
                    SQLITE_STATIC);
  if (ext && !ext->empty())
    sqlite3_bind_blob(s, 6, ext->data(), static_cast<int>(ext->size()), SQLITE_STATIC);
  else
    sqlite3_bind_null(s, 6);
  sqlite3_bind_blob(s, 7, body_size ? body : reinterpret_cast<const std::uint8_t*>(""),
                    static_cast<int>(body_size), SQLITE_STATIC);
  sqlite3_bind_int64(s, 8, tag ? tag : t.sch.schema_tag);
  ++new_records;
  new_bytes += body_size;
  if (kind == kind_control) {
    // Control answers have their own share; the first one pending may exceed it (a re-sync
    // is the whole table). Refusals are counted by control.cpp (control_refused).
    if (cfg.control_max_records == 0 ||
        (ctl_records && (ctl_records + new_records > cfg.control_max_records ||
                         ctl_bytes + new_bytes > cfg.control_max_bytes)))
      return make_error_code(errc::outbox_full);
  } else if (pending_records - ctl_records + new_records > cfg.outbox_max_records ||
             pending_bytes - ctl_bytes + new_bytes > cfg.outbox_max_bytes) {
    std::lock_guard<std::mutex> lk(stats_mu);
    ++st.outbox_full_refusals;
    return make_error_code(errc::outbox_full);
  }
  if (sqlite3_step(s) != SQLITE_DONE) return sql_fail("outbox insert");
  return {};
}

std::uint64_t engine::bump_version(table_state& t, std::string_view key, std::int64_t now,
                                   bool existed_before, std::error_code& ec) {
  std::uint64_t v = 0;
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  if (!existed_before && !bloom_may_have(t.stream_id, key)) return 1;
#endif
  bloom_add(t.stream_id, key);
  {
    sqlite3_stmt* s = st_version_get.get();
    reset_guard g{s};
    sqlite3_bind_int64(s, 1, t.stream_id);
    sqlite3_bind_blob(s, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
      v = static_cast<std::uint64_t>(sqlite3_column_int64(s, 0));
    else if (rc != SQLITE_DONE) {
      ec = sql_fail("version");
      return 0;
    }
  }
  if (v == 0) {
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
    if (!existed_before) return 1;
#else
    // Without the pre-update hook a REPLACE over an existing row looks like an insert, so
    // every insert records its version to let the next change outrank it.
    if (!existed_before) {
      sqlite3_stmt* s = st_version.get();
      reset_guard g{s};
      sqlite3_bind_int64(s, 1, t.stream_id);
      sqlite3_bind_blob(s, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
      sqlite3_bind_int64(s, 3, 1);
      sqlite3_bind_int64(s, 4, now);
      if (sqlite3_step(s) != SQLITE_DONE) ec = sql_fail("version");
      return ec ? 0 : 1;
    }
#endif
    v = 1;  // existing row without an entry: inserted once, or older than its registration
    sqlite3_stmt* s = st_version.get();
    reset_guard g{s};
    sqlite3_bind_int64(s, 1, t.stream_id);
    sqlite3_bind_blob(s, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, 2);
    sqlite3_bind_int64(s, 4, now);
    if (sqlite3_step(s) != SQLITE_DONE) {
      ec = sql_fail("version");
      return 0;
    }
    return 2;
  }
  sqlite3_stmt* s = st_version_upd.get();
  reset_guard g{s};
  sqlite3_bind_int64(s, 1, t.stream_id);
  sqlite3_bind_blob(s, 2, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, static_cast<sqlite3_int64>(v + 1));
  sqlite3_bind_int64(s, 4, now);
  if (sqlite3_step(s) != SQLITE_DONE) {
    ec = sql_fail("version");
    return 0;
  }
  return v + 1;
}

std::error_code engine::serialize(const table_state& t, const row_ref& rr,
                                  std::vector<value_view>& vals, std::vector<value>& owned) {
  std::size_t ncol = vals.size();
  owned.clear();
  owned.reserve(ncol);
  for (auto& v : vals) owned.push_back(value::from(v));
  if (t.serializer(rr, owned) || owned.size() != ncol)
    return fail(errc::serialization_failed, "serializer of '%' failed", {t.cqrs_id});
  for (std::size_t i = 0; i < ncol; ++i) vals[i] = owned[i].view();
  return {};
}

std::error_code engine::emit_stream_chunk(table_state& t, std::int64_t t0, std::size_t n,
                                          std::uint64_t& new_records, std::uint64_t& new_bytes,
                                          std::size_t len) {
  len = std::min(len, evbuf.size());
  grpbuf.clear();
  std::error_code ec = append_encoded(grpbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
    return encode_group_head(t0, n, b, c, w);
  });
  if (ec) return ec;
  grpbuf.insert(grpbuf.end(), evbuf.begin(), evbuf.begin() + len);
  ec = write_record(t, kind_stream, t.next_seq, n, {}, nullptr, grpbuf.data(), grpbuf.size(),
                    new_records, new_bytes);
  if (ec) return ec;
  t.next_seq += n;
  const std::size_t rest = evbuf.size() - len;
  if (rest) std::memmove(evbuf.data(), evbuf.data() + len, rest);
  evbuf.resize(rest);
  return {};
}

// Runs `body` in BEGIN IMMEDIATE .. COMMIT as the library's own write (not captured); updates
// the outbox accounting after a successful commit.
std::error_code engine::internal_txn(fn_ref<std::error_code(std::uint64_t&, std::uint64_t&)> body) {
  std::uint64_t nr = 0, nb = 0;
  internal_write = true;
  std::error_code ec = exec("BEGIN IMMEDIATE");
  if (!ec) {
    ec = body(nr, nb);
    if (!ec) ec = exec("COMMIT");
    if (ec) exec("ROLLBACK");
  }
  internal_write = false;
  if (!ec) {
    pending_records += nr;
    pending_bytes += nb;
    update_stats();
    if (nr) wake_bg();
  }
  return ec;
}

// ============================================================================ commit

std::error_code engine::encode_dirty(dirty_row& d, std::int64_t now, bool& emitted) {
  emitted = false;
  table_state& t = *d.t;
  std::size_t npk = t.pk_table_cols.size();
  sqlite3_stmt* rf = t.read_final.get();
  reset_guard g{nullptr};
  bool cached = d.final_state != 0 && !rollback_to_seen;
  int rc = SQLITE_DONE;
  if (cached) {
    rc = d.final_state == 1 ? SQLITE_ROW : SQLITE_DONE;
  } else {
    g.s = rf;
    for (std::size_t i = 0; i < npk; ++i) bind_view(rf, static_cast<int>(i + 1), cell(d.pk_at + i));
    rc = sqlite3_step(rf);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sql_fail("read row");
  }
  // Column i of the row's stream columns (= compare columns when there is no SQL serializer).
  auto col = [&](int i) {
    return cached ? cell(d.fin_at + static_cast<std::size_t>(i)) : column_view(rf, i);
  };
  std::error_code ec;
  if (rc == SQLITE_DONE) {
    if (!d.existed_before) return {};  // inserted and deleted within the transaction
    std::uint64_t ver = bump_version(t, key_of(d), now, d.existed_before, ec);
    if (ec) return ec;
    value_view pkv[16];
    std::vector<value_view> big;
    value_view* pv = pkv;
    if (npk > 16) {
      big.resize(npk);
      pv = big.data();
    }
    for (std::size_t i = 0; i < npk; ++i) pv[i] = cell(d.pk_at + i);
    ec = detail::append_plain_event(evbuf, event_kind::remove, ver, pv, npk);
    emitted = !ec;
    return ec;
  }
  // The row exists. Unchanged since the transaction began (no-op update, or changes undone by
  // ROLLBACK TO): nothing to send.
  int ncmp = static_cast<int>(t.compare_table_cols.size());
  if (d.have_old && t.serializer_sql.empty()) {
    bool same = true;
    for (int i = 0; i < ncmp && same; ++i)
      same = same_value(cell(d.old_at + static_cast<std::size_t>(i)), col(i));
    if (same) return {};
  }
  std::size_t ncol = t.sch.columns.size();
  std::vector<value_view>& vals = vals_scratch;
  vals.resize(ncol);  // every entry is set below
  sqlite3_stmt* rc_stmt = nullptr;
  reset_guard g2{nullptr};
  if (!t.serializer_sql.empty()) {
    rc_stmt = t.read_custom.get();
    g2.s = rc_stmt;
    sqlite3_reset(rc_stmt);
    for (std::size_t i = 0; i < npk; ++i)
      bind_view(rc_stmt, static_cast<int>(i + 1), cell(d.pk_at + i));
    int r2 = sqlite3_step(rc_stmt);
    if (r2 == SQLITE_DONE) {
      return fail(errc::serialization_failed, "serializer_sql of '%' returned no row", {t.cqrs_id});
    }
    if (r2 != SQLITE_ROW) return sql_fail("serializer_sql");
    for (std::size_t i = 0; i < ncol; ++i) vals[i] = column_view(rc_stmt, static_cast<int>(i));
  } else {
    for (std::size_t i = 0; i < ncol; ++i) vals[i] = col(static_cast<int>(i));
  }
  row_ref rr{t.sch.columns.data(), vals.data(), ncol};
  // The version counts every committed change, sent or filtered.
  std::uint64_t ver = bump_version(t, key_of(d), now, d.existed_before, ec);
  if (ec) return ec;
  if (t.filter && !t.filter(rr)) return {};
  std::vector<value> owned;
  if (t.serializer)
    if (auto e = serialize(t, rr, vals, owned)) return e;
  std::vector<std::uint32_t>& prev_cols = prev_cols_scratch;
  std::vector<value_view>& prev_vals = prev_vals_scratch;
  prev_cols.clear();
  prev_vals.clear();
  if (d.have_old && !t.tracked.empty()) {
    for (auto& tr : t.tracked) {
      // Position of the tracked column within compare_table_cols.
      for (std::size_t k = 0; k < t.compare_table_cols.size(); ++k) {
        if (t.compare_table_cols[k] != tr.second) continue;
        if (!same_value(cell(d.old_at + k), vals[tr.first])) {
          prev_cols.push_back(tr.first);
          prev_vals.push_back(cell(d.old_at + k));
        }
        break;
      }
    }
  }
  if (prev_cols.empty()) {
    ec = detail::append_plain_event(evbuf, event_kind::save, ver, vals.data(), ncol);
    emitted = !ec;
    return ec;
  }
  event_view ev;
  ev.kind = event_kind::save;
  ev.row_version = ver;
  ev.values = vals.data();
  ev.n_values = ncol;
  ev.prev_columns = prev_cols.data();
  ev.prev_values = prev_vals.data();
  ev.n_prev = prev_cols.size();
  ec = append_encoded(evbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
    return encode_event(ev, b, c, w);
  });
  emitted = !ec;
  return ec;
}

std::error_code engine::too_large(const dirty_row& d, std::size_t size) {
  std::string key;
  for (std::size_t i = 0; i < d.t->pk_table_cols.size(); ++i) {
    value_view v = cell(d.pk_at + i);
    if (i) key += ", ";
    if (v.type == value_type::integer)
      key += std::to_string(v.i);
    else if (v.type == value_type::text)
      key.append(static_cast<const char*>(v.data), v.size);
    else
      key += '?';
  }
  return fail(errc::too_large, "row (%) of table '%' encodes to % bytes, over max_record_bytes %",
              {key, d.t->table, decimal(size), decimal(cfg.max_record_bytes)});
}

std::error_code engine::flush(std::uint64_t& new_records, std::uint64_t& new_bytes,
                              std::uint64_t& n_events) {
  // First: every failure path below (and a failed COMMIT) restores these in master::commit.
  for (auto& tp : tables) tp->saved_next_seq = tp->next_seq;
  if (dirty_overflow) {
    return fail(errc::outbox_full,
                "more than max_rows_per_transaction rows changed in one transaction");
  }
  if (n_dirty == 0) return {};
  std::int64_t now = clk->now_ms();
  // Stable grouping per table, in order of first change.
  std::vector<std::vector<std::size_t>>& per_table = per_table_scratch;  // kept between commits
  per_table.resize(tables.size());
  for (auto& v : per_table) v.clear();
  for (std::size_t i = 0; i < n_dirty; ++i) per_table[dirty[i].t->index].push_back(i);
  for (std::size_t ti = 0; ti < tables.size(); ++ti) {
    if (per_table[ti].empty()) continue;
    table_state& t = *tables[ti];
    evbuf.clear();
    std::size_t n = 0;
    for (std::size_t idx : per_table[ti]) {
      bool emitted = false;
      const std::size_t before = evbuf.size();
      if (auto ec = encode_dirty(dirty[idx], now, emitted)) return ec;
      if (!emitted) continue;
      // One event never exceeds a record: what a replica's decoder is sized for (a larger one
      // would be rejected there without its seq being handled, and asked for again forever).
      if (evbuf.size() - before > cfg.max_record_bytes)
        return too_large(dirty[idx], evbuf.size() - before);
      // A record's events never exceed max_record_bytes either (so never a replica's item
      // limit, items being at least a byte): one that would goes to the next record.
      if (evbuf.size() > cfg.max_record_bytes && n) {
        if (auto ec = emit_stream_chunk(t, now, n, new_records, new_bytes, before)) return ec;
        n = 0;
      }
      ++n;
      ++n_events;
      if (n >= cfg.max_record_events || evbuf.size() >= cfg.max_record_bytes) {
        if (auto ec = emit_stream_chunk(t, now, n, new_records, new_bytes)) return ec;
        n = 0;
      }
    }
    if (n)
      if (auto ec = emit_stream_chunk(t, now, n, new_records, new_bytes)) return ec;
    // The stream's next seq is not written per commit (one page less in every commit): it is
    // derived from the outbox at startup, and stored before records are pruned.
  }
  return {};
}
}  // namespace edgecqrs::master_detail

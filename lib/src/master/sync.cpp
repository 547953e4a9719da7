// Sync and dump: reads a table's current rows as sync events, for master::sync, re-sync answers
// and dump files. Called by master.cpp and control.cpp; its records go out via publisher.cpp.
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
                                    bool resync, std::size_t* synced, std::uint64_t session) {
  std::size_t rows = 0;
  const int kind = resync ? kind_control : kind_direct;  // re-syncs answer control requests
  std::error_code ec = internal_txn([&](std::uint64_t& nr, std::uint64_t& nb) -> std::error_code {
    message ext_msg;
    ext_msg.target = std::string(replica);
    if (resync) {
      ext_msg.reply_to = std::string(replica);
      ext_msg.has_resync = true;
      // The requester's nonce (docs/wire-format.md §5): the replica accepts only sessions it
      // asked for. None given (an older replica, or a replay that fell back): a random id.
      if (session == 0) {
        sqlite3_randomness(sizeof session, &session);
        session >>= 1;  // stays within 63 bits for SQLite-friendly logs
      }
      ext_msg.resync.session = session;
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
          if (auto e2 = write_record(t, kind, 0, n, replica, &ext, grp, size, nr, nb)) return e2;
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
        if (auto e2 = write_record(t, kind, 0, 0, replica, &ext, nullptr, 0, nr, nb)) return e2;
      }
    }
    return std::error_code{};
  });
  if (!ec && synced) *synced = rows;
  return ec;
}

}  // namespace edgecqrs::master_detail

namespace edgecqrs {

using master_detail::append_encoded;

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

}  // namespace edgecqrs

// The public master API: open/attach, register_table, begin/commit/rollback, sync, poll,
// start/stop, stats. A thin layer over engine.hpp (capture -> outbox -> publisher; control, sync).
#include "edgecqrs/master.hpp"

#include <cstdio>

#include "master/engine.hpp"

namespace edgecqrs::master_detail {

std::int64_t engine::failure_backoff() {
  std::lock_guard<std::mutex> lk(stats_mu);
  ++st.publish_failures;
  ++consecutive_failures;
  std::int64_t b = cfg.backoff_initial_ms;
  for (int i = 1; i < consecutive_failures && b < cfg.backoff_max_ms; ++i) b *= 2;
  return std::min(b, cfg.backoff_max_ms);
}

void engine::update_stats() {
  std::lock_guard<std::mutex> lk(stats_mu);
  st.records_pending = pending_records;
  st.bytes_pending = pending_bytes;
  st.in_flight = inflight.size();
  st.unmanaged_writes_refused = unmanaged_refused;
}

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

// ============================================================================ publisher

std::error_code engine::handle_completions() {
  std::vector<completion> done;
  {
    std::lock_guard<std::mutex> lk(snk->mu);
    done.swap(snk->done);
  }
  if (done.empty()) return {};
  std::vector<inflight_msg> acked;
  for (auto& c : done) {
    std::size_t k = 0;
    while (k < inflight.size() && inflight[k].no != c.msg_no) ++k;
    if (k == inflight.size()) continue;
    inflight_msg m = std::move(inflight[k]);
    if (k + 1 != inflight.size()) inflight[k] = std::move(inflight.back());
    inflight.pop_back();
    if (c.ec) {
      std::int64_t delay = failure_backoff();
      backoff_until = clk->steady_ms() + delay;
      if (!m.ids.empty()) cursor = std::min(cursor, m.ids.front() - 1);
      continue;
    }
    consecutive_failures = 0;
    {
      std::lock_guard<std::mutex> lk(stats_mu);
      ++st.messages_published;
      if (m.heartbeat) ++st.heartbeats;
    }
    if (!m.ids.empty()) acked.push_back(std::move(m));
  }
  if (acked.empty()) return {};
  std::uint64_t ar = 0, ab = 0, kr = 0, kb = 0;
  internal_write = true;
  std::error_code ec = exec("BEGIN IMMEDIATE");
  if (!ec) {
    for (auto& m : acked) {
      for (std::size_t i = 0; i < m.ids.size() && !ec; ++i) {
        // Every kind is marked, never deleted here: the newest row must stay so that SQLite
        // never reuses an id (the publisher's cursor relies on ids only growing).
        sqlite3_stmt* s = st_ack.get();
        reset_guard g{s};
        sqlite3_bind_int64(s, 1, m.ids[i]);
        if (sqlite3_step(s) != SQLITE_DONE) {
          ec = sql_fail("ack");
          break;
        }
        if (sqlite3_changes(db) == 0) continue;  // acknowledged twice (duplicate send)
        ++ar;
        ab += m.bytes[i];
        if (m.kinds[i] == kind_stream) {
          ++kr;
          kb += m.bytes[i];
        } else {
          acked_other = true;
        }
      }
    }
    if (!ec) ec = exec("COMMIT");
    if (ec) exec("ROLLBACK");
  }
  internal_write = false;
  if (ec) {
    // The acks are lost: the records stay pending and will be sent again (at-least-once).
    for (auto& m : acked) cursor = std::min(cursor, m.ids.front() - 1);
    return ec;
  }
  pending_records -= std::min(pending_records, ar);
  pending_bytes -= std::min(pending_bytes, ab);
  kept_records += kr;
  kept_bytes += kb;
  return {};
}

std::error_code engine::prune() {
  bool streams = kept_records > cfg.replay_keep_records || kept_bytes > cfg.replay_keep_bytes;
  if (!streams && !acked_other) return {};
  std::int64_t max_id = 0;
  {
    stmt q;
    if (prepare(q, "SELECT max(id) FROM edgecqrs_outbox")) return sql_fail("prune");
    if (sqlite3_step(q.get()) == SQLITE_ROW) max_id = sqlite3_column_int64(q.get(), 0);
  }
  std::int64_t upto = 0;
  std::uint64_t dr = 0, db_bytes = 0;
  if (streams) {
    stmt q;
    if (prepare(q,
                "SELECT id, length(body) FROM edgecqrs_outbox WHERE acked=1 AND kind=0 "
                "ORDER BY id"))
      return sql_fail("prune");
    std::uint64_t kr = kept_records, kb = kept_bytes;
    while ((kr > cfg.replay_keep_records || kb > cfg.replay_keep_bytes) &&
           sqlite3_step(q.get()) == SQLITE_ROW) {
      std::int64_t id = sqlite3_column_int64(q.get(), 0);
      if (id >= max_id) break;
      upto = id;
      auto b = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 1));
      --kr;
      kb -= std::min(kb, b);
      ++dr;
      db_bytes += b;
    }
  }
  std::error_code ec = internal_txn([&](std::uint64_t&, std::uint64_t&) -> std::error_code {
    if (upto) {
      // Pruned records no longer tell the stream's head: store it first.
      for (auto& tp : tables) {
        sqlite3_stmt* su = st_stream_update.get();
        reset_guard g{su};
        sqlite3_bind_int64(su, 1, tp->stream_id);
        sqlite3_bind_int64(su, 2, static_cast<sqlite3_int64>(tp->next_seq));
        if (sqlite3_step(su) != SQLITE_DONE) return sql_fail("stream seq");
      }
      stmt del;
      if (prepare(del, "DELETE FROM edgecqrs_outbox WHERE acked=1 AND kind=0 AND id<=?1"))
        return sql_fail("prune");
      sqlite3_bind_int64(del.get(), 1, upto);
      if (sqlite3_step(del.get()) != SQLITE_DONE) return sql_fail("prune");
    }
    if (acked_other) {
      stmt del;
      if (prepare(del, "DELETE FROM edgecqrs_outbox WHERE acked=1 AND kind<>0 AND id<?1"))
        return sql_fail("prune");
      sqlite3_bind_int64(del.get(), 1, max_id);
      if (sqlite3_step(del.get()) != SQLITE_DONE) return sql_fail("prune");
    }
    return std::error_code{};
  });
  if (ec) return ec;
  acked_other = false;
  kept_records -= std::min(kept_records, dr);
  kept_bytes -= std::min(kept_bytes, db_bytes);
  return {};
}

// Nothing leaves the device before it is on disk. In WAL mode with synchronous=NORMAL (or OFF)
// a commit reaches the WAL file but is synced only at the next checkpoint: a power cut may undo
// it. Were it published first, a replica would keep a change the master no longer has, and the
// master would give the undone sequence numbers to new events, which the replica would skip as
// duplicates. So before publishing, one sync of the WAL makes every committed record durable
// (group commit: one fdatasync covers every record committed so far, not one per transaction;
// nothing is queried while no new record is about to go out). In rollback-journal
// modes a commit is synced unless synchronous=OFF (docs/capture.md).
std::error_code engine::make_outbox_durable() {
  sqlite3_stmt* s = st_outbox_top.get();
  reset_guard g{s};
  int rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) return sql_fail("outbox top");
  std::int64_t top = sqlite3_column_int64(s, 0);
  if (top <= durable_upto) return {};
  {
    // synchronous=FULL (2) or EXTRA (3): every commit was synced before it returned.
    sqlite3_stmt* q = st_sync_level.get();
    reset_guard gq{q};
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) >= 2) {
      durable_upto = top;
      return {};
    }
  }
  sqlite3_file* wal = nullptr;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) == SQLITE_OK && wal &&
      wal->pMethods) {
    rc = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
    if (rc != SQLITE_OK) {
      return fail(errc::sqlite_error, "outbox sync before publishing failed: %",
                  {sqlite3_errstr(rc)});
    }
  }
  durable_upto = top;
  return {};
}

std::error_code engine::publish_pending() {
  if (!tx || !tx->connected()) return {};
  std::int64_t now = clk->steady_ms();
  if (now < backoff_until) return {};
  std::size_t window = std::min<std::size_t>({cfg.window, tx->max_in_flight(), 90});
  if (window == 0) window = 1;
  while (inflight.size() < window) {
    sqlite3_stmt* s = st_pending.get();
    reset_guard g{s};
    sqlite3_bind_int64(s, 1, cursor);
    sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(cfg.max_message_events + 64));
    int rc = sqlite3_step(s);
    // Skip records already in flight (after a rewind).
    while (rc == SQLITE_ROW && id_in_flight(sqlite3_column_int64(s, 0))) {
      cursor = std::max<std::int64_t>(cursor, sqlite3_column_int64(s, 0));
      rc = sqlite3_step(s);
    }
    if (rc == SQLITE_DONE) return {};
    if (rc != SQLITE_ROW) return sql_fail("outbox read");
    inflight_msg m;
    m.stream = sqlite3_column_int64(s, 1);
    int kind = sqlite3_column_int(s, 2);
    table_state* tsp = find_stream(m.stream);
    if (!tsp) {
      // A stream no longer registered: its records wait until it is registered again.
      cursor = sqlite3_column_int64(s, 0);
      continue;
    }
    table_state& t = *tsp;
    std::string topic;
    publish_options opts;
    msgbuf.clear();
    if (kind == kind_schema) {
      m.ids.push_back(sqlite3_column_int64(s, 0));
      m.kinds.push_back(kind);
      auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, 7));
      m.bytes.push_back(n);
      auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 7));
      msgbuf.assign(p, p + n);
      topic = t.schema_topic;
      opts.retain = true;
    } else if (kind == kind_direct) {
      m.ids.push_back(sqlite3_column_int64(s, 0));
      m.kinds.push_back(kind);
      auto first_seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 3));
      std::string target(reinterpret_cast<const char*>(sqlite3_column_text(s, 5)));
      auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, 7));
      auto* body = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 7));
      auto en = static_cast<std::size_t>(sqlite3_column_bytes(s, 6));
      auto* ext = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 6));
      m.bytes.push_back(n);
      std::size_t n_groups = n ? 1 : 0;
      if (auto ec = append_encoded(msgbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
            return encode_message_head(t.sch.schema_tag, first_seq, n_groups, en != 0, b, c, w);
          }))
        return ec;
      msgbuf.insert(msgbuf.end(), body, body + n);
      if (en) msgbuf.insert(msgbuf.end(), ext, ext + en);
      topic = target.empty() ? t.event_topic : direct_topic(cfg.topic_prefix, target, t.cqrs_id);
    } else {
      // Stream records: join consecutive records of the same stream with contiguous seqs.
      auto first_seq = static_cast<std::uint64_t>(sqlite3_column_int64(s, 3));
      std::uint64_t expect = first_seq;
      std::size_t events = 0;
      std::int64_t oldest_commit_ms = INT64_MAX;  // message TTL counts from the oldest commit
      // A stream record's body is one CBOR group [t0, events...]; t0 is its commit time (ms).
      auto record_t0 = [](const std::uint8_t* p, std::size_t size, std::int64_t& t0) {
        const std::uint8_t* end = p + size;
        std::uint64_t arg[2] = {0, 0};
        for (int item = 0; item < 2; ++item) {  // the array head, then t0
          if (p >= end || (*p >> 5) != (item == 0 ? 4 : 0)) return false;
          const int info = *p++ & 0x1f;
          if (info < 24) {
            arg[item] = static_cast<std::uint64_t>(info);
            continue;
          }
          if (info > 27) return false;
          const std::size_t len = std::size_t{1} << (info - 24);
          if (static_cast<std::size_t>(end - p) < len) return false;
          for (std::size_t i = 0; i < len; ++i) arg[item] = (arg[item] << 8) | *p++;
        }
        if (arg[1] > static_cast<std::uint64_t>(INT64_MAX)) return false;
        t0 = static_cast<std::int64_t>(arg[1]);
        return true;
      };
      grpbuf.clear();
      while (rc == SQLITE_ROW) {
        std::int64_t id = sqlite3_column_int64(s, 0);
        if (id_in_flight(id) || sqlite3_column_int64(s, 1) != m.stream ||
            sqlite3_column_int(s, 2) != kind_stream ||
            static_cast<std::uint64_t>(sqlite3_column_int64(s, 3)) != expect)
          break;
        auto ne = static_cast<std::size_t>(sqlite3_column_int64(s, 4));
        auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, 7));
        if (!m.ids.empty() &&
            (events + ne > cfg.max_message_events || grpbuf.size() + n > cfg.max_message_bytes))
          break;
        auto* body = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 7));
        std::int64_t t0 = 0;
        if (cfg.message_ttl_ms > 0 && record_t0(body, n, t0))
          oldest_commit_ms = std::min(oldest_commit_ms, t0);
        grpbuf.insert(grpbuf.end(), body, body + n);
        m.ids.push_back(id);
        m.kinds.push_back(kind_stream);
        m.bytes.push_back(n);
        events += ne;
        expect += ne;
        rc = sqlite3_step(s);
      }
      message ttl_ext;
      if (cfg.message_ttl_ms > 0) {
        // A record whose t0 cannot be read (never: the master wrote it) expires from now.
        const std::int64_t wall = clk->now_ms();
        const std::int64_t base = oldest_commit_ms == INT64_MAX ? wall : oldest_commit_ms;
        ttl_ext.expires_ms =
            base > INT64_MAX - cfg.message_ttl_ms ? INT64_MAX : base + cfg.message_ttl_ms;
        // MQTT 5: the broker drops it once the time left (rounded up, at least 1 s) has passed;
        // already expired ones still go out, and the replica dead-letters them as "expired".
        const std::int64_t left_ms = ttl_ext.expires_ms - wall;
        const std::int64_t left_s = left_ms <= 0 ? 1 : (left_ms + 999) / 1000;
        opts.expiry_interval_s =
            static_cast<std::uint32_t>(std::min<std::int64_t>(left_s, INT32_MAX));
      }
      const bool has_ext = ttl_ext.expires_ms != 0;
      if (auto ec = append_encoded(msgbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
            return encode_message_head(t.sch.schema_tag, first_seq, m.ids.size(), has_ext, b, c, w);
          }))
        return ec;
      msgbuf.insert(msgbuf.end(), grpbuf.begin(), grpbuf.end());
      if (has_ext)
        if (auto ec = append_encoded(msgbuf, [&](std::uint8_t* b, std::size_t c, std::size_t& w) {
              return encode_message_ext(ttl_ext, b, c, w);
            }))
          return ec;
      topic = t.event_topic;
    }
    sqlite3_reset(s);
    // Records newer than the last sync: make everything committed so far durable first.
    if (m.ids.back() > durable_upto)
      if (auto ec = make_outbox_durable()) return ec;
    std::uint64_t no = next_msg_no++;
    std::error_code ec =
        tx->publish(topic, msgbuf.data(), msgbuf.size(), opts, publish_done{snk, no, true});
    if (ec) {
      // Not queued (window full, disconnected): retry after a backoff, nothing lost.
      backoff_until = now + failure_backoff();
      return {};
    }
    for (auto id : m.ids) cursor = std::max(cursor, id);
    t.last_publish_ms = now;
    m.no = no;
    inflight.push_back(std::move(m));
  }
  return {};
}

void engine::heartbeats() {
  if (!tx || cfg.heartbeat_interval_ms <= 0 || !tx->connected()) return;
  std::int64_t now = clk->steady_ms();
  if (now < backoff_until) return;
  std::size_t window = std::min<std::size_t>({cfg.window, tx->max_in_flight(), 90});
  for (auto& tp : tables) {
    table_state& t = *tp;
    if (!t.produce || t.next_seq <= 1) continue;
    if (now - t.last_publish_ms < cfg.heartbeat_interval_ms) continue;
    if (inflight.size() >= window || pending_records) return;
    std::uint8_t buf[64];
    std::size_t w = 0;
    if (encode_message_head(t.sch.schema_tag, t.next_seq, 0, false, buf, sizeof buf, w)) continue;
    std::uint64_t no = next_msg_no++;
    if (tx->publish(t.event_topic, buf, w, publish_options{}, publish_done{snk, no, false})) return;
    inflight_msg m;
    m.stream = t.stream_id;
    m.heartbeat = true;
    m.no = no;
    inflight.push_back(std::move(m));
    t.last_publish_ms = now;
  }
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

std::error_code engine::poll_locked() {
  std::error_code first;
  auto keep = [&](std::error_code e) {
    if (e && !first) first = e;
  };
  keep(handle_completions());
  keep(prune());
  std::vector<std::pair<std::size_t, control_request>> ctl;
  {
    std::lock_guard<std::mutex> lk(snk->mu);
    ctl.swap(snk->control);
    std::lock_guard<std::mutex> lk2(stats_mu);
    st.control_dropped = snk->control_dropped;
  }
  for (auto& c : ctl) keep(handle_control(c.first, c.second));
  keep(publish_pending());
  heartbeats();
  update_stats();
  return first;
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

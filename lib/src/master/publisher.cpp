// Publisher: outbox -> transport (durable first, windowed), acknowledgements, pruning and
// heartbeats; poll_locked runs one round. Fed by outbox.cpp, control.cpp and sync.cpp.
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
  std::uint64_t ar = 0, ab = 0, kr = 0, kb = 0, cr = 0, cb = 0;
  bool gone = false;  // a record already acknowledged or removed by another connection
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
        if (sqlite3_changes(db) == 0) {  // acknowledged twice, or by another publisher
          gone = true;
          continue;
        }
        ++ar;
        ab += m.bytes[i];
        if (m.kinds[i] == kind_control) {
          ++cr;
          cb += m.bytes[i];
        }
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
  // Another publisher on this database (the CLI's sync --broker, a second master) acknowledges
  // records too: the counts are then re-read, not guessed.
  if (gone || ar > pending_records) return count_outbox();
  pending_records -= ar;
  pending_bytes -= std::min(pending_bytes, ab);
  ctl_records -= std::min(ctl_records, cr);
  ctl_bytes -= std::min(ctl_bytes, cb);
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
      // Pruned records no longer tell the stream's head: store it first, for every stream
      // that loses records (registered by this process or not: from its records).
      stmt su;
      if (prepare(su,
                  "UPDATE edgecqrs_stream SET next_seq=max(next_seq,coalesce((SELECT "
                  "max(first_seq+n_events) FROM edgecqrs_outbox WHERE kind=0 AND "
                  "stream=edgecqrs_stream.rowid),0)) WHERE rowid IN (SELECT stream FROM "
                  "edgecqrs_outbox WHERE acked=1 AND kind=0 AND id<=?1)"))
        return sql_fail("stream seq");
      sqlite3_bind_int64(su.get(), 1, upto);
      if (sqlite3_step(su.get()) != SQLITE_DONE) return sql_fail("stream seq");
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
    if (rc == SQLITE_DONE) {
      // Nothing left to send, nothing in flight, yet records counted pending: another
      // connection acknowledged or removed them (once per count: records of streams not
      // registered again stay pending).
      if (!inflight.empty() || !pending_records || pending_records == recounted_pending)
        return {};
      sqlite3_reset(s);
      std::error_code ec = count_outbox();
      recounted_pending = pending_records;
      return ec;
    }
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
    // The schema the record was encoded with (not necessarily the stream's current one).
    const auto tag = static_cast<std::uint32_t>(sqlite3_column_int64(s, 8));
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
      opts.retain = tag == t.sch.schema_tag;  // an older schema, re-published for its records
    } else if (kind == kind_direct || kind == kind_control) {
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
            return encode_message_head(tag, first_seq, n_groups, en != 0, b, c, w);
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
      // Joined records stay within a replica's default item limit too (an item is at least a
      // byte; a record alone is within it: docs/capture.md).
      const std::size_t join_bytes =
          std::min(cfg.max_message_bytes, decode_limits{}.max_items - 64);
      grpbuf.clear();
      while (rc == SQLITE_ROW) {
        std::int64_t id = sqlite3_column_int64(s, 0);
        if (id_in_flight(id) || sqlite3_column_int64(s, 1) != m.stream ||
            sqlite3_column_int(s, 2) != kind_stream || sqlite3_column_int64(s, 8) != tag ||
            static_cast<std::uint64_t>(sqlite3_column_int64(s, 3)) != expect)
          break;
        auto ne = static_cast<std::size_t>(sqlite3_column_int64(s, 4));
        auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, 7));
        if (!m.ids.empty() &&
            (events + ne > cfg.max_message_events || grpbuf.size() + n > join_bytes))
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
            return encode_message_head(tag, first_seq, m.ids.size(), has_ext, b, c, w);
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

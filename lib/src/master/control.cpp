// Control: answers replicas' replay and re-sync requests with direct outbox records. Fed by
// registration.cpp's subscription through publisher.cpp's poll; re-sync reads rows via sync.cpp.
// Whoever may write the control topics may ask, so answers are bounded (docs/replication.md §4):
// a token bucket per requester, one answer of each kind in flight per requester and stream
// (later requests it covers are coalesced), and their own share of the outbox (kind_control).
#include "master/engine.hpp"

namespace edgecqrs::master_detail {

std::int64_t engine::outbox_top() {
  sqlite3_stmt* s = st_outbox_top.get();
  reset_guard g{s};
  return sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
}

bool engine::control_rate_ok(const std::string& replica) {
  if (cfg.control_interval_ms <= 0) return true;
  const std::int64_t now = clk->steady_ms();
  // Clamped (a day, a million) so that no sum below overflows.
  const std::int64_t interval = std::min<std::int64_t>(cfg.control_interval_ms, 86400000);
  const std::int64_t cap = interval * static_cast<std::int64_t>(std::min<std::size_t>(
                                          std::max<std::size_t>(cfg.control_burst, 1), 1000000));
  ctl_bucket* b = nullptr;
  ctl_bucket* spare = nullptr;  // a free slot, or a requester whose bucket is full again
  for (auto& e : ctl_buckets) {
    if (e.replica == replica) b = &e;
    if (!spare && (e.replica.empty() || now - e.last_ms >= cap - e.credit_ms)) spare = &e;
  }
  if (!b) {
    if (!spare) return false;  // every tracked requester is busy: a newcomer waits (asks again)
    b = spare;
    b->replica = replica;
    b->credit_ms = cap;
    b->last_ms = now;
  }
  b->credit_ms = std::min(cap, b->credit_ms + std::max<std::int64_t>(now - b->last_ms, 0));
  b->last_ms = now;
  if (b->credit_ms < interval) return false;
  b->credit_ms -= interval;
  return true;
}

// The answer of this kind in flight for (stream, requester): one of its records is not
// acknowledged yet. An answer found complete is forgotten.
engine::ctl_answer* engine::control_in_flight(const table_state& t, const std::string& replica,
                                              control_op op) {
  for (auto& a : ctl_answers) {
    if (a.stream != t.stream_id || a.op != op || a.replica != replica) continue;
    stmt q;
    if (prepare(q, "SELECT 1 FROM edgecqrs_outbox WHERE id BETWEEN ?1 AND ?2 AND acked=0"))
      return nullptr;
    sqlite3_bind_int64(q.get(), 1, a.first_id);
    sqlite3_bind_int64(q.get(), 2, a.last_id);
    if (sqlite3_step(q.get()) == SQLITE_ROW) return &a;
    a.stream = 0;
    return nullptr;
  }
  return nullptr;
}

void engine::note_answer(const table_state& t, const std::string& replica, control_op op,
                         std::uint64_t from, std::uint64_t to, std::int64_t first_id) {
  std::int64_t last_id = outbox_top();
  if (last_id < first_id) return;  // nothing written
  // Its slot, else a free one, else the oldest answer's (that requester may be answered again).
  ctl_answer* a = &ctl_answers[0];
  for (auto& e : ctl_answers) {
    if (e.stream == t.stream_id && e.op == op && e.replica == replica) {
      a = &e;
      break;
    }
    if (a->stream && (!e.stream || e.last_id < a->last_id)) a = &e;
  }
  a->stream = t.stream_id;
  a->replica = replica;
  a->op = op;
  a->from = from;
  a->to = to;
  a->first_id = first_id;
  a->last_id = last_id;
}

// Re-publishes the kept stream records of [from, to] (bounded: the replica asks again for the
// rest); nothing but `need_resync` when some of the range is no longer kept.
std::error_code engine::answer_replay(table_state& t, const control_request& c, std::uint64_t from,
                                      std::uint64_t to, bool& need_resync) {
  stmt q;
  if (prepare(q,
              "SELECT id, first_seq, n_events, body, tag FROM edgecqrs_outbox WHERE kind=0 AND "
              "stream=?1 AND first_seq<=?3 AND first_seq+n_events-1>=?2 ORDER BY first_seq"))
    return sql_fail("replay");
  sqlite3_bind_int64(q.get(), 1, t.stream_id);
  sqlite3_bind_int64(q.get(), 2, static_cast<sqlite3_int64>(from));
  sqlite3_bind_int64(q.get(), 3, static_cast<sqlite3_int64>(to));
  struct rec {
    std::uint64_t first, n;
    std::vector<std::uint8_t> body;
    std::uint32_t tag;  // the schema tag the body was encoded with (a replay keeps it)
  };
  std::vector<rec> recs;
  std::uint64_t next = from;
  std::size_t bytes = 0;
  bool bounded = false;
  while (sqlite3_step(q.get()) == SQLITE_ROW) {
    rec r;
    r.first = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 1));
    r.n = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 2));
    r.tag = static_cast<std::uint32_t>(sqlite3_column_int64(q.get(), 4));
    if (r.first > next) break;  // a hole: pruned
    auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(q.get(), 3));
    r.body.assign(p, p + sqlite3_column_bytes(q.get(), 3));
    bytes += r.body.size();
    next = r.first + r.n;
    recs.push_back(std::move(r));
    if (bytes > cfg.max_message_bytes * 16) {  // bounded: the replica asks again for the rest
      bounded = true;
      break;
    }
  }
  // Some of the range is gone: one re-sync answers it all (the kept part too).
  need_resync = !bounded && next <= to;
  if (need_resync) return {};
  message ext_msg;
  ext_msg.target = c.replica;
  ext_msg.reply_to = c.replica;
  std::vector<std::uint8_t> ext;
  if (auto ec = append_encoded(ext, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
        return encode_message_ext(ext_msg, b, cap, w);
      }))
    return ec;
  std::int64_t first_id = outbox_top() + 1;
  std::error_code ec = internal_txn([&](std::uint64_t& nr, std::uint64_t& nb) -> std::error_code {
    for (auto& r : recs)
      if (auto e = write_record(t, kind_control, r.first, r.n, c.replica, &ext, r.body.data(),
                                r.body.size(), nr, nb, r.tag))
        return e;
    return std::error_code{};
  });
  if (!ec) note_answer(t, c.replica, control_op::replay, from, bounded ? next - 1 : to, first_id);
  return ec;
}

std::error_code engine::handle_control(std::size_t table, const control_request& c) {
  if (table >= tables.size()) return {};
  table_state& t = *tables[table];
  if (validate_replica_name(c.replica)) return {};
  ctl_count(&master_stats::control_handled);
  if (!control_rate_ok(c.replica)) {
    ctl_count(&master_stats::control_rate_limited);
    return {};
  }
  std::int64_t first_id = outbox_top() + 1;
  if (c.op == control_op::schema) {
    // One schema message pending per stream (it is broadcast, retained): whoever asks.
    const std::string none;
    if (control_in_flight(t, none, control_op::schema)) {
      ctl_count(&master_stats::control_coalesced);
      return {};
    }
    std::error_code ec = internal_txn(
        [&](std::uint64_t& nr, std::uint64_t& nb) { return enqueue_schema(t, nr, nb); });
    if (ec) return ec;
    note_answer(t, none, control_op::schema, 0, 0, first_id);
    ctl_count(&master_stats::control_answered);
    return {};
  }
  const ctl_answer* rs = control_in_flight(t, c.replica, control_op::resync);
  std::uint64_t from = 0, to = 0;
  bool coalesce = rs != nullptr;
  if (c.op == control_op::replay) {
    from = c.from_seq;
    to = std::min(c.to_seq, t.next_seq - 1);  // only what exists
    if (from == 0 || from > to) return {};
    const ctl_answer* rp = control_in_flight(t, c.replica, control_op::replay);
    // Covered by the re-sync or the replay being answered: merged into it.
    coalesce = (rs && to <= rs->to) || (rp && from >= rp->from && to <= rp->to);
  }
  if (coalesce) {
    ctl_count(&master_stats::control_coalesced);
    return {};
  }
  if (cfg.control_max_records == 0 || (ctl_records && (ctl_records >= cfg.control_max_records ||
                                                       ctl_bytes >= cfg.control_max_bytes))) {
    ctl_count(&master_stats::control_refused);
    return {};
  }
  const std::uint64_t r0 = pending_records, b0 = pending_bytes;
  bool resync = c.op != control_op::replay;
  std::error_code ec;
  if (!resync) {
    ec = answer_replay(t, c, from, to, resync);
    if (resync && rs) {
      // Partly pruned: the re-sync in flight is the answer (later seqs come by the stream).
      ctl_count(&master_stats::control_coalesced);
      return ec;
    }
  }
  if (!ec && resync) {
    first_id = outbox_top() + 1;
    std::uint64_t upto = t.next_seq - 1;
    ec = sync_locked(t, "", {}, c.replica, true, nullptr,
                     c.op == control_op::resync ? c.from_seq : 0);
    if (!ec) note_answer(t, c.replica, control_op::resync, 0, upto, first_id);
  }
  // Whatever was written is a control answer (pending_* grew by exactly that).
  ctl_records += pending_records - r0;
  ctl_bytes += pending_bytes - b0;
  if (ec == make_error_code(errc::outbox_full)) {
    ctl_count(&master_stats::control_refused);
    return {};  // not the application's error: the replica asks again
  }
  if (!ec) ctl_count(&master_stats::control_answered);
  return ec;
}
}  // namespace edgecqrs::master_detail

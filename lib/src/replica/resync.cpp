// Re-sync and requests: control requests to the master (replay, re-sync, schema), their timers in
// poll(), and completing a re-sync session pipeline.cpp applied. Gaps come from streams.cpp.
#include "replica/engine.hpp"

namespace edgecqrs {

void replica::impl::queue_control(const stream& s, control_op op, std::uint64_t from,
                                  std::uint64_t to) {
  if (!tp) return;
  control_request c;
  c.op = op;
  c.replica = opts.name;
  c.from_seq = from;
  c.to_seq = to;
  std::size_t n = 0;
  if (encode_control(c, nullptr, 0, n)) return;
  std::vector<std::uint8_t> buf(n);
  if (encode_control(c, buf.data(), buf.size(), n)) return;
  buf.resize(n);
  if (controls.size() >= max_pending_controls) return;  // the timers ask again
  controls.emplace_back(control_topic(opts.topic_prefix, s.cqrs_id), std::move(buf));
  if (op == control_op::replay) ++st.replay_requests;
  if (op == control_op::resync) ++st.resync_requests;
  if (op == control_op::schema) ++st.schema_requests;
}

// At most one schema request outstanding per stream, and a schema arriving does not reset the
// backoff: unknown tags arriving meanwhile wait for poll() (docs/replication.md §5). The backoff
// starts over once the stream asked nothing for request_backoff_max_ms.
void replica::impl::want_schema(stream& s) {
  if (s.schema_wanted) return;
  s.schema_wanted = true;
  const std::int64_t t = steady();
  if (s.schema_backoff_ms > 0 && t < s.next_schema_ms) return;
  if (s.schema_backoff_ms == 0 || t - s.next_schema_ms >= opts.request_backoff_max_ms)
    s.schema_backoff_ms = opts.request_backoff_initial_ms;
  else
    s.schema_backoff_ms = std::min(s.schema_backoff_ms * 2, opts.request_backoff_max_ms);
  s.next_schema_ms = t + s.schema_backoff_ms;
  queue_control(s, control_op::schema, 0, 0);
}

// Raises the stream's persisted re-sync want in a transaction of its own (request_resync) and
// asks when the backoff allows.
std::error_code replica::impl::want_resync(stream& s, bool fresh, bool authoritative) {
  if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(s.cqrs_id);
  std::error_code ec = reload_stream(s);
  progress p = s.prog;
  raise_want(p, fresh);
  // Stays authoritative until an authoritative session satisfies the want.
  p.resync_auth = p.resync_auth || authoritative;
  if (!ec) ec = save_stream(s, p);
  if (auto e = commit_or_rollback(ec, s.cqrs_id)) return e;
  s.prog = p;
  settle_resync(s);
  return {};
}

// After s.prog was refreshed (committed or re-read): one request in flight per stream while a
// re-sync is wanted, repeated with backoff (from resync_initial_backoff(), doubling) until a
// session asked for after the want completes (by this object or another one on the database).
// The backoff starts over only when a want ends with the stream gap-free, so a want that comes
// back at once (a seen-range set that stays full) never asks faster than the backoff.
void replica::impl::settle_resync(stream& s) {
  if (s.prog.resync_want == 0) {
    if (s.resync_pending && s.prog.seen.empty() && s.prog.head <= s.prog.checkpoint)
      s.next_resync_ms = s.resync_backoff_ms = 0;
    s.resync_pending = false;
    return;
  }
  s.resync_pending = true;
  if (steady() >= s.next_resync_ms) ask_resync(s);
}

// Sends a re-sync request with a fresh nonce, recorded with the stream first (the answer may
// come before publish returns; another object on the database or a restart accepts it too).
void replica::impl::ask_resync(stream& s) {
  const std::int64_t initial = resync_initial_backoff(), wall = now();
  const auto& asked = s.prog.resync_asked;
  if (!asked.empty() && !asked.back().done && asked.back().index >= s.prog.resync_want &&
      wall >= asked.back().at_ms && wall - asked.back().at_ms < initial) {
    // A request for this want went out a moment ago (before a restart, or by another object).
    s.next_resync_ms = steady() + initial - (wall - asked.back().at_ms);
    return;
  }
  const std::int64_t backoff = s.resync_backoff_ms > 0 ? s.resync_backoff_ms : initial;
  s.next_resync_ms = steady() + backoff;
  s.resync_backoff_ms = std::min(backoff * 2, std::max(opts.request_backoff_max_ms, initial));
  std::uint64_t nonce = 0;
  sqlite3_randomness(sizeof nonce, &nonce);
  nonce = (nonce >> 1) | 1;  // 63 bits (SQLite INTEGER), never 0 (0: the master picks one)
  if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return;  // the timer asks again
  std::error_code ec = reload_stream(s);
  progress p = s.prog;
  p.resync_asked.push_back({nonce, ++p.resync_asks, std::max(p.checkpoint, p.resync_done_upto),
                            wall, false, p.resync_auth});
  if (p.resync_asked.size() > max_asked_sessions) p.resync_asked.erase(p.resync_asked.begin());
  if (!ec) ec = save_stream(s, p);
  if (!ec && exec(db, "COMMIT") == SQLITE_OK) {
    s.prog = p;
    queue_control(s, control_op::resync, nonce, 0);
  } else {
    exec(db, "ROLLBACK");
  }
}

// Inside the transaction: removes rows of the stream the session did not carry and no later
// stream event touched, then raises the checkpoint. An authoritative session (answering the
// operator's request `a`) also removes rows at seqs above upto_seq that no stream event touched
// since the request (a master restored from a backup went back), and sets the checkpoint and
// head to upto_seq, lower than before if the master went back.
std::error_code replica::impl::finish_resync(stream& s, progress& p, const resync_marker& r,
                                             const asked_session& a, replica_stats& delta) {
  statement q;
  if (q.prepare(db,
                "SELECT key, version FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=0 AND"
                " session<>?2 AND (seq<=?3 OR at_ms<?4)") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, s.sid);
  q.bind(2, static_cast<std::int64_t>(r.session));
  q.bind(3, static_cast<std::int64_t>(r.upto_seq));
  q.bind(4, a.authoritative ? a.at_ms : INT64_MIN);
  std::vector<std::pair<std::string, std::uint64_t>> gone;
  int rc;
  while ((rc = q.step()) == SQLITE_ROW)
    gone.emplace_back(std::string(q.col_blob(0)), static_cast<std::uint64_t>(q.col_int(1)));
  if (rc != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  q.reset();
  if (!gone.empty()) {
    // Any plan of the current incarnation knows the key columns.
    plan* pl = nullptr;
    for (auto& [k, v] : plans)
      if (v->st == &s && v->sch.incarnation == s.incarnation && !v->problem) pl = v.get();
    if (!pl) return make_error_code(errc::unknown_schema);
    statement tomb;
    if (tomb.prepare(db,
                     "UPDATE edgecqrs_r_rows SET deleted=1, at_ms=?3 WHERE sid=?1 AND"
                     " key=?2") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    for (const auto& [key, version] : gone) {
      event ev;
      ev.kind = event_kind::remove;
      ev.row_version = version;
      if (!replica_detail::decode_key(key, ev.values) || ev.values.size() != pl->sch.pk.size())
        return make_error_code(errc::bad_value);
      if (s.opts.on_delete) {
        apply_ctx c;
        c.direct = true;
        change ch = make_change(*pl, ev, c);
        if (auto ec = s.opts.on_delete(ch)) return make_error_code(errc::handler_failed);
      } else if (!s.opts.local_table.empty()) {
        reset_guard g(pl->remove);
        for (std::size_t j = 0; j < ev.values.size(); ++j)
          pl->remove.bind_value(static_cast<int>(j + 1), ev.values[j]);
        if (pl->remove.step() != SQLITE_DONE) return make_error_code(errc::apply_failed);
      }
      reset_guard g(tomb);
      tomb.bind(1, s.sid);
      tomb.bind_blob(2, key.data(), key.size());
      tomb.bind(3, now());
      if (tomb.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
      ++delta.rows_removed_by_resync;
    }
  }
  // Never beyond the seqs the replica knows exist (an initial load before any stream message
  // or heartbeat: the gap up to upto_seq is then replayed, as duplicates).
  if (a.authoritative) {
    // The master's state at upto_seq is the truth: later stream events apply from there (seqs
    // seen before are forgotten; gap repair fetches what the master has beyond).
    p.checkpoint = p.head = r.upto_seq;
    p.seen.clear();
  } else {
    raise_checkpoint(p, std::min(r.upto_seq, p.head));
  }
  ++p.resync_done;
  p.resync_done_upto = r.upto_seq;
  // The want is satisfied by a session asked for after it (an authoritative want only by an
  // authoritative session); this session's request and older ones are done (a redelivery of
  // their parts is ignored).
  if (a.index >= p.resync_want && (a.authoritative || !p.resync_auth)) {
    p.resync_want = 0;
    p.resync_auth = false;
  }
  for (auto& x : p.resync_asked) x.done = x.done || x.index <= a.index;
  return {};
}

std::error_code replica::impl::poll_locked() {
  const std::int64_t t = steady();
  for (auto& sp : streams) {
    stream& s = *sp;
    // Another replica object on this database may have moved the stream (applied the other
    // half of a shared subscription, completed a re-sync): timers work from the persisted
    // state. A read that fails (busy) keeps the last known state until the next poll.
    // A wanted re-sync is asked for until a session satisfies it, also after a restart.
    if (!reload_stream(s)) {
      settle_resync(s);
      update_gap_state(s);
    }
    if (s.schema_wanted && t >= s.next_schema_ms) {
      queue_control(s, control_op::schema, 0, 0);
      s.schema_backoff_ms = std::min(s.schema_backoff_ms * 2, opts.request_backoff_max_ms);
      s.next_schema_ms = t + s.schema_backoff_ms;
    }
    if (s.gap_open && !s.resync_pending && t >= s.next_replay_ms) {
      // Each hole below the highest known seq, oldest first.
      std::uint64_t from = s.prog.checkpoint + 1;
      int sent = 0;
      for (const auto& [lo, hi] : s.prog.seen) {
        if (sent >= max_replays_per_poll) break;
        if (lo > from) {
          queue_control(s, control_op::replay, from, lo - 1);
          ++sent;
        }
        from = hi + 1;
      }
      if (sent < max_replays_per_poll && s.prog.head >= from)
        queue_control(s, control_op::replay, from, s.prog.head);
      s.replay_backoff_ms =
          std::min(std::max<std::int64_t>(s.replay_backoff_ms, 1) * 2, opts.request_backoff_max_ms);
      s.next_replay_ms = t + s.replay_backoff_ms;
    }
  }
  if (auto ec = run_due_retries()) return ec;
  if (t >= next_prune_ms) {
    next_prune_ms = t + prune_interval_ms;
    if (auto ec = prune_tombstones()) return ec;
  }
  return {};
}

// Publishes queued control requests; called without the lock held.
void replica::impl::flush_controls(std::unique_lock<std::mutex>& lk) {
  auto out = std::move(controls);
  controls.clear();
  transport* t = tp;
  lk.unlock();
  if (!t) return;
  publish_options po;
  for (auto& [topic, bytes] : out) t->publish(topic, bytes.data(), bytes.size(), po, nullptr);
}

}  // namespace edgecqrs

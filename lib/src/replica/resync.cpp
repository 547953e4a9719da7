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

// One pending re-sync per stream: a second want only raises the upto_seq the completing
// session must reach (coalesced); the timer in poll() repeats the request with backoff.
void replica::impl::want_resync(stream& s, std::uint64_t min_upto) {
  if (s.resync_pending) {
    s.resync_min_upto = std::max(s.resync_min_upto, min_upto);
    return;
  }
  s.resync_pending = true;
  s.resync_min_upto = min_upto;
  s.resync_done_mark = s.prog.resync_done;
  s.resync_backoff_ms = resync_initial_backoff();
  s.next_resync_ms = steady() + s.resync_backoff_ms;
  queue_control(s, control_op::resync, 0, 0);
}

// After s.prog was refreshed: a session completed (by this object or another one on the same
// database) since the request satisfies it when its upto_seq is high enough; otherwise the
// request goes out again at once.
void replica::impl::settle_resync(stream& s) {
  if (!s.resync_pending || s.prog.resync_done <= s.resync_done_mark) return;
  if (s.prog.resync_done_upto >= s.resync_min_upto) {
    s.resync_pending = false;
    return;
  }
  s.resync_done_mark = s.prog.resync_done;
  s.resync_backoff_ms = resync_initial_backoff();
  s.next_resync_ms = steady() + s.resync_backoff_ms;
  queue_control(s, control_op::resync, 0, 0);
}

// Inside the transaction: removes rows of the stream the session did not carry and no later
// stream event touched, then raises the checkpoint.
std::error_code replica::impl::finish_resync(stream& s, progress& p, const resync_marker& r,
                                             replica_stats& delta) {
  statement q;
  if (q.prepare(db,
                "SELECT key, version FROM edgecqrs_r_rows WHERE sid=?1 AND deleted=0 AND"
                " session<>?2 AND seq<=?3") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, s.sid);
  q.bind(2, static_cast<std::int64_t>(r.session));
  q.bind(3, static_cast<std::int64_t>(r.upto_seq));
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
  raise_checkpoint(p, r.upto_seq);
  ++p.resync_done;
  p.resync_done_upto = r.upto_seq;
  if (p.resync_want <= r.upto_seq) p.resync_want = 0;
  return {};
}

std::error_code replica::impl::poll_locked() {
  const std::int64_t t = steady();
  for (auto& sp : streams) {
    stream& s = *sp;
    // Another replica object on this database may have moved the stream (applied the other
    // half of a shared subscription, completed a re-sync): timers work from the persisted
    // state. A read that fails (busy) keeps the last known state until the next poll.
    if (!reload_stream(s)) {
      settle_resync(s);
      update_gap_state(s);
    }
    // A wanted re-sync (expired stream messages) is asked for until a session reaches it,
    // also after a restart.
    if (s.prog.resync_want > 0) want_resync(s, s.prog.resync_want);
    if (s.schema_wanted && t >= s.next_schema_ms) {
      queue_control(s, control_op::schema, 0, 0);
      s.schema_backoff_ms = std::min(s.schema_backoff_ms * 2, opts.request_backoff_max_ms);
      s.next_schema_ms = t + s.schema_backoff_ms;
    }
    if (s.resync_pending && t >= s.next_resync_ms) {
      queue_control(s, control_op::resync, 0, 0);
      s.resync_backoff_ms = std::min(s.resync_backoff_ms * 2,
                                     std::max(opts.request_backoff_max_ms, s.resync_backoff_ms));
      s.next_resync_ms = t + s.resync_backoff_ms;
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

// Retries: an event that failed in apply.cpp (via pipeline.cpp) is retried with backoff by
// poll(); after max_retries attempts it goes to dead_letters.cpp.
#include "replica/engine.hpp"

namespace edgecqrs {

// One event as a message of its own (kept for retries and dead letters).
std::error_code replica::impl::encode_single(const message& m, std::size_t i,
                                             std::vector<std::uint8_t>& out) {
  message one;
  one.schema_tag = m.schema_tag;
  one.first_seq = m.seq_of(i);
  one.events.push_back(m.events[i]);
  one.target = m.target;
  one.reply_to = m.reply_to;
  std::size_t n = 0;
  if (auto ec = encode_message(one, nullptr, 0, n)) return ec;
  out.resize(n);
  if (auto ec = encode_message(one, out.data(), out.size(), n)) return ec;
  out.resize(n);
  return {};
}

std::error_code replica::impl::schedule_retry(stream& s, std::string_view topic, const message& m,
                                              std::size_t i, std::error_code reason,
                                              const std::string& detail) {
  std::vector<std::uint8_t> body;
  if (auto ec = encode_single(m, i, body)) return ec;
  std::string key(keybuf);
  statement cnt;
  if (cnt.prepare(db, "SELECT count(*) FROM edgecqrs_r_retries") != SQLITE_OK ||
      cnt.step() != SQLITE_ROW)
    return make_error_code(errc::sqlite_error);
  bool full = static_cast<std::size_t>(cnt.col_int(0)) >= opts.max_pending_retries;
  cnt.reset();
  if (opts.max_retries == 0 || full)
    return put_dead_letter(s.cqrs_id, topic, key, reason,
                           full ? detail + " (retry table full)" : detail, 1, body.data(),
                           body.size(), 0);
  reset_guard g(q_retry_put);
  q_retry_put.bind(1, s.sid);
  q_retry_put.bind_text(2, topic);
  q_retry_put.bind_blob(3, key.data(), key.size());
  q_retry_put.bind_blob(4, body.data(), body.size());
  // Due times are wall-clock ms (persisted: the monotonic clock restarts at 0 on a reboot).
  q_retry_put.bind(5, now() + opts.retry_initial_ms);
  q_retry_put.bind(6, reason.value());
  q_retry_put.bind_text(7, detail);
  q_retry_put.bind(8, now());
  if (q_retry_put.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  ++st.retries_scheduled;
  return {};
}

std::error_code replica::impl::run_due_retries() {
  msg_now = now();
  const std::int64_t wall = msg_now;  // due times are wall-clock ms (see schedule_retry)
  statement q;
  if (q.prepare(db,
                "SELECT id, sid, topic, body, attempts, first_ms FROM edgecqrs_r_retries"
                " WHERE next_ms<=?1 ORDER BY next_ms LIMIT ?2") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, wall);
  q.bind(2, max_retries_per_poll);
  struct due {
    std::int64_t id, sid;
    std::string topic, body;
    std::uint32_t attempts;
  };
  std::vector<due> list;
  while (q.step() == SQLITE_ROW)
    list.push_back({q.col_int(0), q.col_int(1), std::string(q.col_text(2)),
                    std::string(q.col_blob(3)), static_cast<std::uint32_t>(q.col_int(4))});
  q.reset();
  for (auto& d : list) {
    stream* s = nullptr;
    for (auto& x : streams)
      if (x->sid == d.sid) s = x.get();
    message m;
    std::error_code ec;
    std::string detail;
    plan* pl = nullptr;
    bool obsolete = false;
    if (!s) {
      ec = make_error_code(errc::unknown_stream);
    } else if ((ec = decode_message(reinterpret_cast<const std::uint8_t*>(d.body.data()),
                                    d.body.size(), m, opts.limits))) {
    } else if (m.events.size() != 1 || !(pl = find_plan(*s, m.schema_tag)) || pl->problem) {
      ec = make_error_code(errc::unknown_schema);
    } else if (!s->has_incarnation || pl->sch.incarnation != s->incarnation) {
      obsolete = true;  // from a master database this replica no longer follows
    }
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return make_error_code(errc::sqlite_error);
    outcome o = outcome::ignored;
    if (!ec && !obsolete) {
      apply_ctx c;
      c.direct = parse_topic(opts.topic_prefix, d.topic).kind == topic_kind::direct;
      c.seq = m.first_seq;
      if (exec(db, "SAVEPOINT ev") != SQLITE_OK) {
        exec(db, "ROLLBACK");
        return make_error_code(errc::sqlite_error);
      }
      ec = apply_event(*pl, m.events[0], c, o, detail);
      if (ec && sqlite3_get_autocommit(db)) return ec;  // rolled back by SQLite itself
      if (ec && ec != errc::handler_failed && storage_fault(sqlite3_errcode(db))) {
        // Not the event's fault: the attempt is not counted and the retry stays due; the next
        // poll tries again. Counted and described (not_committed), but not a poll() error, so
        // a daemon loop keeps running while the disk is full.
        exec(db, "ROLLBACK");
        (void)not_committed(d.topic, detail);
        return {};
      }
      exec(db, ec ? "ROLLBACK TO ev" : "RELEASE ev");
      if (ec) exec(db, "RELEASE ev");
    }
    std::error_code ec2;
    statement u;
    if (ec && detail.empty()) detail = ec.message();  // bound SQLITE_STATIC below
    const std::uint32_t attempts = d.attempts + 1;
    if (!ec || attempts >= opts.max_retries) {
      if (ec) {
        make_key_from(m, pl);
        ec2 = put_dead_letter(s ? s->cqrs_id : std::string(), d.topic, pl ? keybuf : "", ec,
                              detail.empty() ? ec.message() : detail, attempts, d.body.data(),
                              d.body.size(), 0);
      }
      if (!ec2 && u.prepare(db, "DELETE FROM edgecqrs_r_retries WHERE id=?1") != SQLITE_OK)
        ec2 = make_error_code(errc::sqlite_error);
      if (!ec2) u.bind(1, d.id);
    } else {
      std::int64_t delay = opts.retry_initial_ms;
      for (std::uint32_t k = 0; k < attempts && delay < opts.retry_max_ms; ++k) delay *= 2;
      delay = std::min(delay, opts.retry_max_ms);
      if (u.prepare(db,
                    "UPDATE edgecqrs_r_retries SET attempts=?2, next_ms=?3, reason=?4,"
                    " detail=?5 WHERE id=?1") != SQLITE_OK)
        ec2 = make_error_code(errc::sqlite_error);
      else {
        u.bind(1, d.id);
        u.bind(2, attempts);
        u.bind(3, wall + delay);
        u.bind(4, ec.value());
        u.bind_text(5, detail);
      }
    }
    if (!ec2 && u && u.step() != SQLITE_DONE) ec2 = make_error_code(errc::sqlite_error);
    u.reset();
    if (!ec2 && exec(db, "COMMIT") != SQLITE_OK) ec2 = make_error_code(errc::sqlite_error);
    if (ec2) {
      exec(db, "ROLLBACK");
      return ec2;
    }
    if (!ec) {
      ++st.retries_succeeded;
      if (o == outcome::applied)
        ++st.events_applied;
      else if (o == outcome::stale)
        ++st.skipped_stale;
      else if (o == outcome::duplicate)
        ++st.duplicates;
    }
  }
  return {};
}

void replica::impl::make_key_from(const message& m, const plan* pl) {
  keybuf.clear();
  if (pl && m.events.size() == 1) make_key(*pl, m.events[0]);
}

std::error_code replica::pending_retries(std::size_t& out) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "SELECT count(*) FROM edgecqrs_r_retries") != SQLITE_OK ||
      q.step() != SQLITE_ROW)
    return make_error_code(errc::sqlite_error);
  out = static_cast<std::size_t>(q.col_int(0));
  return {};
}

}  // namespace edgecqrs

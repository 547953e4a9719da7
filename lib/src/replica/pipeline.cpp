// Pipeline: topic -> decode -> whole-message checks -> one transaction per message. Fed by
// replica.cpp (on_message); events go to apply.cpp, failures to retries.cpp and dead_letters.cpp.
#include "replica/engine.hpp"

namespace edgecqrs {

namespace replica_detail {

parsed_topic parse_topic(std::string_view prefix, std::string_view t) {
  parsed_topic p;
  if (t.size() < prefix.size() + 6 || t.substr(0, prefix.size()) != prefix) return p;
  t.remove_prefix(prefix.size());
  if (t.substr(0, 4) != "/v1/" || t.size() < 7 || t[5] != '/') return p;
  char k = t[4];
  t.remove_prefix(6);
  if (k == 'e' || k == 's') {
    if (t.empty() || t.find('/') != std::string_view::npos) return p;
    p.kind = k == 'e' ? topic_kind::event : topic_kind::schema;
    p.cqrs_id = t;
  } else if (k == 'd') {
    auto slash = t.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 >= t.size()) return p;
    p.replica = t.substr(0, slash);
    p.cqrs_id = t.substr(slash + 1);
    if (p.cqrs_id.find('/') != std::string_view::npos) return p;
    p.kind = topic_kind::direct;
  }
  return p;
}

}  // namespace replica_detail

// Ends the open write transaction: COMMIT when `ec` is clear, else (or when COMMIT fails)
// ROLLBACK, and then the message counts as not committed (gap repair fetches it again).
std::error_code replica::impl::commit_or_rollback(std::error_code ec, std::string_view topic) {
  if (!ec && exec(db, "COMMIT") == SQLITE_OK) return {};
  const std::string why = sqlite3_errmsg(db);
  exec(db, "ROLLBACK");
  return not_committed(topic, why);
}

// A message that could not be made durable (BEGIN, an apply step or COMMIT failed for a
// storage reason): counted, described in last_error(); the caller rolled back.
std::error_code replica::impl::not_committed(std::string_view topic, std::string why,
                                             std::error_code ec) {
  if (why.empty()) why = sqlite3_errmsg(db);
  ++st.commit_failures;
  last_error =
      "message on '" + std::string(topic) + "' not committed (gap repair fetches it again): " + why;
  return ec;
}

std::error_code replica::impl::handle_message(std::string_view topic, const std::uint8_t* data,
                                              std::size_t size, const msg_opts& mo,
                                              std::vector<std::int64_t>& to_retry) {
  ++st.messages;
  msg_now = now();
  parsed_topic pt = parse_topic(opts.topic_prefix, topic);
  auto sit = by_id.find(std::string(pt.cqrs_id));
  if (pt.kind == topic_kind::other || sit == by_id.end()) {
    // Not a stream this replica knows: kept, since an operator may register it later.
    return dead_letter_message(pt.cqrs_id, topic, make_error_code(errc::unknown_stream),
                               "no stream registered for topic", data, size, mo.dead_letter_id,
                               nullptr, nullptr);
  }
  stream& s = *sit->second;
  if (pt.kind == topic_kind::schema) return handle_schema(s, topic, data, size, mo, to_retry);
  const bool direct = pt.kind == topic_kind::direct;
  if (direct && pt.replica != opts.name) {
    ++st.ignored;
    return make_error_code(errc::not_for_this_replica);
  }
  message m;
  if (auto ec = decode_message(data, size, m, opts.limits))
    return dead_letter_message(s.cqrs_id, topic, ec, ec.message(), data, size, mo.dead_letter_id,
                               nullptr, nullptr);
  if (!m.target.empty() && m.target != opts.name) {
    ++st.ignored;
    return make_error_code(errc::not_for_this_replica);
  }
  // Counters beyond what the master could have produced (docs/replication.md §8), before any
  // state is touched: such a message changes no stream state (head, seen ranges, wants).
  {
    const std::size_t n = m.events.size();
    const char* bad = nullptr;
    for (const auto& e : m.events)
      if (e.row_version > max_wire_counter) bad = "row version at or above 2^53";
    const std::uint64_t last = n > 0 ? m.first_seq + (n - 1) : m.first_seq;
    // A re-sync answer's upto_seq is how a replica far behind catches up: only the 2^53 bound.
    const std::uint64_t known = std::max(s.prog.head, s.prog.checkpoint);
    if (m.first_seq > max_wire_counter || last < m.first_seq || last > max_wire_counter ||
        (m.has_resync &&
         (m.resync.upto_seq > max_wire_counter || m.resync.part > max_wire_counter)))
      bad = "stream seq at or above 2^53";
    else if (last > known && last - known > opts.max_seq_ahead)
      bad = "stream seq more than max_seq_ahead beyond the known head";
    if (bad) {
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::integer_out_of_range),
                                 std::string(bad) + " (known head " + std::to_string(known) + ")",
                                 data, size, mo.dead_letter_id, nullptr, nullptr);
    }
  }
  plan* pl = find_plan(s, m.schema_tag);
  if (!pl) {
    // A retry of a parked message that still finds no schema asks nothing: the schema that
    // arrived was the master's current one, and asking again would loop (issue 17.5).
    if (mo.dead_letter_id == 0) want_schema(s);
    if (m.events.empty()) return make_error_code(errc::unknown_schema);  // a heartbeat
    // Parked as a dead letter; applied automatically when the schema arrives.
    return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::unknown_schema),
                               "schema tag " + std::to_string(m.schema_tag) + " not known yet",
                               data, size, mo.dead_letter_id, nullptr, nullptr);
  }
  if (!s.has_incarnation || pl->sch.incarnation != s.incarnation) {
    ++st.ignored;  // from a master database this replica no longer follows
    return make_error_code(errc::stale_version);
  }
  const std::size_t n = m.events.size();
  // A seq beyond what the master could have produced (far beyond the highest known) is
  // rejected before it moves any state: it would open gaps no master can fill, or a re-sync
  // want no session reaches.
  if (!plausible_seq(s, m))
    return dead_letter_message(
        s.cqrs_id, topic, make_error_code(errc::integer_out_of_range),
        "seq " + std::to_string(m.first_seq) + " implausibly far beyond the known head " +
            std::to_string(std::max(s.prog.head, s.prog.checkpoint)) + " (max_seq_ahead)",
        data, size, mo.dead_letter_id, nullptr, nullptr);
  if (n == 0 && !(m.has_resync && direct)) {
    if (m.first_seq == 0 || m.first_seq - 1 <= s.prog.head) return {};
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
    std::error_code ec = reload_stream(s);
    progress p = s.prog;
    advance(p, m, opts.max_seen_ranges);
    if (!ec && p.head != s.prog.head) ec = save_stream(s, p);
    if (auto e = commit_or_rollback(ec, topic)) return e;
    s.prog = p;
    update_gap_state(s);
    return {};
  }
  // Whole-message checks first: a message is applied entirely or not at all.
  if (pl->problem && n > 0)
    return dead_letter_message(s.cqrs_id, topic, pl->problem, pl->problem_detail, data, size,
                               mo.dead_letter_id, &s, &m);
  if (!mo.ignore_expiry && m.expires_ms != 0 && m.expires_ms <= now())
    return dead_letter_message(
        s.cqrs_id, topic, make_error_code(errc::expired),
        "expired " + std::to_string(now() - m.expires_ms) + " ms before arrival", data, size,
        mo.dead_letter_id, &s, &m);
  // Sequences are stored as SQLite INTEGER (signed): the last event's seq must neither wrap
  // nor pass 2^63-1.
  if (m.first_seq != 0 && n != 0 &&
      (m.first_seq > static_cast<std::uint64_t>(INT64_MAX) ||
       n - 1 > static_cast<std::uint64_t>(INT64_MAX) - m.first_seq))
    return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::integer_out_of_range),
                               "stream sequence out of range (wraps or exceeds 2^63-1)", data, size,
                               mo.dead_letter_id, &s, &m);
  const std::size_t ncols = pl->sch.columns.size(), npk = pl->sch.pk.size();
  for (std::size_t i = 0; i < n; ++i) {
    const event& ev = m.events[i];
    std::size_t want = ev.kind == event_kind::remove ? npk : ncols;
    // Versions are stored as SQLite INTEGER (signed): above 2^63-1 one would read back as
    // negative and let an older version overwrite it.
    bool ok = ev.values.size() == want && ev.row_version > 0 &&
              ev.row_version <= static_cast<std::uint64_t>(INT64_MAX) &&
              (ev.kind == event_kind::sync) == (m.first_seq == 0);
    for (const auto& pv : ev.previous) ok = ok && pv.column < ncols;
    if (!ok)
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::schema_mismatch),
                                 "event " + std::to_string(i) + " does not fit schema tag " +
                                     std::to_string(m.schema_tag) +
                                     " (value count, version or kind vs seq)",
                                 data, size, mo.dead_letter_id, &s, &m);
    std::string bad_key = key_problem(*pl, ev);
    if (!bad_key.empty())
      return dead_letter_message(s.cqrs_id, topic, make_error_code(errc::bad_value),
                                 "event " + std::to_string(i) + ": " + bad_key, data, size,
                                 mo.dead_letter_id, &s, &m);
  }
  // The stream state and the re-sync session bookkeeping are computed inside the write
  // transaction from the persisted state (prepare(), after each BEGIN): several replica
  // objects or processes may apply to this database (docs/replication.md §4, "Several
  // replica objects on one database").
  progress p;
  std::uint64_t session = 0;
  asked_session asked;
  bool finish_session = false, session_broken = false, competing = false, rejected = false;
  auto prepare = [&]() -> std::error_code {
    session = 0;
    asked = asked_session{};
    finish_session = session_broken = competing = rejected = false;
    if (auto ec = reload_stream(s)) return ec;
    p = s.prog;
    if (!s.has_incarnation || pl->sch.incarnation != s.incarnation) {
      competing = true;  // another object switched the stream to a new master meanwhile
      return {};
    }
    advance(p, m, opts.max_seen_ranges);
    // Too many holes to track: a re-sync is cheaper than remembering them (coalesced; the
    // backoff bounds the requests while the set stays full).
    if (p.seen.size() >= opts.max_seen_ranges) raise_want(p, false);
    if (!(m.has_resync && direct)) return {};
    // Only a session this replica asked for (the master answers with the request's nonce as
    // session id) that read at least what the replica had when it asked, and no older than a
    // completed one, may run: anything else (forged, or redelivered from before a newer session
    // completed) is ignored whole. A replay the master could not serve is answered by a session
    // nobody asked for: while the stream has a gap, that makes the replica want a re-sync.
    const auto& r = m.resync;
    const auto a = std::find_if(p.resync_asked.begin(), p.resync_asked.end(),
                                [&](const asked_session& x) { return x.nonce == r.session; });
    // The answer to an authoritative request (the operator's) may read less than the replica
    // had: the master went back (restored from a backup).
    if (a == p.resync_asked.end() || a->done ||
        (!a->authoritative && (r.upto_seq < a->floor || r.upto_seq < p.resync_done_upto))) {
      if (a == p.resync_asked.end() && (!p.seen.empty() || p.head > p.checkpoint))
        raise_want(p, false);
      rejected = true;
      return {};
    }
    asked = *a;
    const std::size_t asked_at = static_cast<std::size_t>(a - p.resync_asked.begin());
    // Session ids are the nonces of this replica's requests. The database holds the one
    // running session; a run completes only when parts 0..last of that session arrived in
    // order (resync_parts = next part expected, broken_run once a part was skipped). A part
    // of another session starts a new run when none is running (or the running one made no
    // progress for the stall time); while one runs, the other session competes: its parts
    // are ignored (remembered in resync_skip, so its later parts are too). Its rows are
    // carried by the running session or come later by the stream, so nothing is lost, and
    // its marks never replace the running session's (which would let that session's sweep
    // remove them).
    if (r.session != p.resync_session) {
      const bool running = p.resync_session != 0 && p.resync_parts < broken_run;
      const bool stalled = running && msg_now - p.resync_at_ms >= resync_initial_backoff();
      const bool skipped =
          std::find(p.resync_skip.begin(), p.resync_skip.end(), r.session) != p.resync_skip.end();
      if (skipped || (running && !stalled)) {
        if (!skipped) {
          p.resync_skip.push_back(r.session);
          if (p.resync_skip.size() > max_skipped_sessions)
            p.resync_skip.erase(p.resync_skip.begin());
        }
        competing = true;
        return {};
      }
      if (running) {
        // Stalled: the new session takes over; the old one is ignored from now on.
        p.resync_skip.push_back(p.resync_session);
        if (p.resync_skip.size() > max_skipped_sessions) p.resync_skip.erase(p.resync_skip.begin());
      }
      p.resync_session = r.session;
      p.resync_parts = 0;
    }
    session = r.session;
    p.resync_at_ms = msg_now;
    // Redelivered parts of a completed session (or parts another replica object on this
    // database already applied) only apply by the sync rule.
    if (p.resync_parts != finished_run) {
      if (r.part == p.resync_parts)
        ++p.resync_parts;
      else if (r.part > p.resync_parts)
        p.resync_parts = broken_run;
      if (r.last) {
        if (p.resync_parts == r.part + 1 && r.upto_seq - std::min(r.upto_seq, p.head) >
                                                opts.max_seq_ahead) {
          // Implausible bounds: the session fails (no sweep, no checkpoint move); asked again.
          session_broken = true;
          p.resync_parts = finished_run;
        } else if (p.resync_parts == r.part + 1) {
          finish_session = true;
          p.resync_parts = finished_run;
        } else if (p.resync_parts == broken_run) {
          // A part was lost or reordered: ask again (once: the run is over, so another
          // replica object on this database that sees this last part does not ask too).
          session_broken = true;
          p.resync_parts = finished_run;
        }
      }
    }
    if (session_broken) {
      // Answered, but spoilt: the want stands and a new request may go out at once.
      p.resync_asked[asked_at].done = true;
      raise_want(p, false);
    }
    return {};
  };
  replica_stats delta;
  std::string detail;
  apply_ctx c;
  c.direct = direct;
  bool storage = false;
  auto run = [&](bool per_event) -> std::error_code {
    delta = replica_stats{};
    c.session = session;  // decided by prepare()
    c.authoritative = session != 0 && asked.authoritative;
    c.repaired = &delta;
    for (std::size_t i = 0; i < n; ++i) {
      c.seq = m.seq_of(i);
      outcome o{};
      if (per_event && exec(db, "SAVEPOINT ev") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
      std::error_code ec = apply_event(*pl, m.events[i], c, o, detail);
      if (ec && ec != errc::handler_failed && storage_fault(sqlite3_errcode(db))) {
        storage = true;
        return ec;
      }
      if (ec && !per_event) return ec;
      if (ec) {
        // SQLITE_FULL, IOERR, NOMEM and BUSY may roll the whole transaction back on their
        // own; carrying on would write the rest in autocommit mode.
        if (sqlite3_get_autocommit(db)) return ec;
        exec(db, "ROLLBACK TO ev");
        if (session) {
          // Keep the row in the session so completing it does not remove it meanwhile.
          if (auto e2 = mark_session(s, keybuf, session)) return e2;
        }
        if (auto e2 = schedule_retry(s, topic, m, i, ec, detail)) return e2;
      } else {
        count(o, delta);
      }
      if (per_event && exec(db, "RELEASE ev") != SQLITE_OK)
        return make_error_code(errc::sqlite_error);
    }
    if (finish_session) {
      if (auto ec = finish_resync(s, p, m.resync, asked, delta)) return ec;
    }
    if (auto ec = save_stream(s, p)) return ec;
    return {};
  };
  if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
  const replica_stats saved = st;
  std::error_code ec = prepare();
  if (!ec && (competing || rejected)) {
    // Nothing of the message applies; only the skip list and the want may change.
    ec = save_stream(s, p);
    if (auto e = commit_or_rollback(ec, topic)) return e;
    s.prog = p;
    ++(rejected ? st.resync_parts_rejected : st.ignored);
    settle_resync(s);
    update_gap_state(s);
    return {};
  }
  if (!ec) ec = run(false);
  if (ec && !storage) {
    // Slow path: one savepoint per event, failures go to the retry table.
    exec(db, "ROLLBACK");
    st = saved;
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
    ec = prepare();
    if (!ec && (competing || rejected)) ec = make_error_code(errc::sqlite_error);  // changed
    if (!ec) ec = run(true);
  }
  if (!ec && exec(db, "COMMIT") != SQLITE_OK) ec = make_error_code(errc::sqlite_error);
  if (ec) {
    // Never acknowledged as applied: the checkpoint did not move, so the sequence has a hole
    // that gap repair fills (a storage fault, or a failure to record a retry).
    const std::string why = storage ? detail : std::string(sqlite3_errmsg(db));
    exec(db, "ROLLBACK");
    st = saved;
    return not_committed(topic, why, ec);
  }
  st.events_applied += delta.events_applied;
  st.skipped_stale += delta.skipped_stale;
  st.duplicates += delta.duplicates;
  st.ignored += delta.ignored;
  st.rows_removed_by_resync += delta.rows_removed_by_resync;
  st.rows_overwritten_by_resync += delta.rows_overwritten_by_resync;
  st.tombstones_cleared_by_resync += delta.tombstones_cleared_by_resync;
  s.prog = p;
  if (finish_session) ++st.resyncs_completed;
  // A spoilt session is asked again at once the first time; later ones wait for the backoff.
  if (session_broken && s.resync_backoff_ms <= 2 * resync_initial_backoff()) s.next_resync_ms = 0;
  settle_resync(s);
  update_gap_state(s);
  // A burst of deletes prunes tombstones before poll()'s next round (max_tombstones).
  if (tombstones_added > opts.max_tombstones / 4) prune_tombstones();
  return {};
}

}  // namespace edgecqrs

// Dead letters: what could not be applied (from pipeline.cpp, schemas.cpp, retries.cpp), stored
// bounded, and the public API to list, retry (back through pipeline.cpp) and purge them.
#include "replica/engine.hpp"

namespace edgecqrs {

// Inside a transaction. `existing_id` > 0 updates that dead letter instead (a failed retry).
std::error_code replica::impl::put_dead_letter(std::string_view cqrs_id, std::string_view topic,
                                               std::string_view key, std::error_code reason,
                                               std::string_view detail, std::uint32_t attempts,
                                               const void* body, std::size_t size,
                                               std::int64_t existing_id) {
  if (existing_id > 0) {
    statement u;
    if (u.prepare(db,
                  "UPDATE edgecqrs_r_dead SET at_ms=?2, reason=?3, category=?4, detail=?5,"
                  " attempts=attempts+1 WHERE id=?1") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    u.bind(1, existing_id);
    u.bind(2, now());
    u.bind(3, reason.value());
    u.bind_text(4, reason.category().name());
    u.bind_text(5, detail);
    if (u.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    ++st.dead_letters;
    return {};
  }
  {
    reset_guard g(q_dead_put);
    q_dead_put.bind(1, now());
    q_dead_put.bind_text(2, cqrs_id);
    q_dead_put.bind_text(3, topic);
    q_dead_put.bind_blob(4, key.data(), key.size());
    q_dead_put.bind(5, reason.value());
    q_dead_put.bind_text(6, reason.category().name());
    q_dead_put.bind_text(7, detail);
    q_dead_put.bind(8, attempts);
    // Bounded per letter: a prefix and the original size, so one huge message cannot evict
    // every other letter from the byte bound (max_dead_letter_bytes).
    q_dead_put.bind_blob(9, body, std::min(size, opts.max_dead_letter_body));
    q_dead_put.bind(10, static_cast<std::int64_t>(size));
    if (q_dead_put.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  }
  ++st.dead_letters;
  // Bound by count, then by bytes: the oldest go first (docs/replication.md §7).
  {
    reset_guard g(q_dead_trim);
    q_dead_trim.bind(1, static_cast<std::int64_t>(opts.max_dead_letters));
    if (q_dead_trim.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    st.dead_letters_dropped += static_cast<std::uint64_t>(sqlite3_changes(db));
  }
  statement bytes;
  if (bytes.prepare(db, "SELECT coalesce(sum(length(body)),0), count(*) FROM edgecqrs_r_dead") !=
      SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  if (bytes.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
  std::int64_t total = bytes.col_int(0), count = bytes.col_int(1);
  bytes.reset();
  if (total > static_cast<std::int64_t>(opts.max_dead_letter_bytes) && count > 1) {
    statement oldest;
    if (oldest.prepare(db, "SELECT id, length(body) FROM edgecqrs_r_dead ORDER BY id") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    std::int64_t cut = 0;
    while (total > static_cast<std::int64_t>(opts.max_dead_letter_bytes) && count > 1 &&
           oldest.step() == SQLITE_ROW) {
      cut = oldest.col_int(0);
      total -= oldest.col_int(1);
      --count;
    }
    oldest.reset();
    statement del;
    if (del.prepare(db, "DELETE FROM edgecqrs_r_dead WHERE id<=?1") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    del.bind(1, cut);
    if (del.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
    st.dead_letters_dropped += static_cast<std::uint64_t>(sqlite3_changes(db));
  }
  return {};
}

// A whole message that cannot be applied, in its own transaction.
std::error_code replica::impl::dead_letter_message(std::string_view cqrs_id, std::string_view topic,
                                                   std::error_code reason, std::string_view detail,
                                                   const std::uint8_t* data, std::size_t size,
                                                   std::int64_t existing_id, stream* s,
                                                   const message* m) {
  if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK) return not_committed(topic);
  std::error_code ec;
  progress p;
  if (s && m) {
    // Its seqs count as handled (docs/replication.md §3), from the persisted state.
    ec = reload_stream(*s);
    p = s->prog;
    advance(p, *m, opts.max_seen_ranges);
    // An expired stream message is handled but its changes are missing: a replay would bring
    // the same expired bytes, so the stream wants a re-sync asked for after it (persisted, so a
    // restart or another replica object on this database asks too).
    if (reason == errc::expired && m->first_seq > 0 && !m->events.empty())
      raise_want(p, true);
  }
  if (!ec)
    ec = put_dead_letter(cqrs_id, topic, {}, reason,
                         detail.empty() ? std::string_view(reason.message()) : detail, 1, data,
                         size, existing_id);
  if (!ec && s && m) ec = save_stream(*s, p);
  if (auto e = commit_or_rollback(ec, topic)) return e;
  if (s && m) {
    s->prog = p;
    settle_resync(*s);
    update_gap_state(*s);
  }
  return reason;
}

std::error_code replica::impl::retry_dead(std::int64_t id, std::vector<std::int64_t>& more) {
  statement q;
  if (q.prepare(db, "SELECT topic, body, size > length(body) FROM edgecqrs_r_dead WHERE id=?1") !=
      SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, id);
  int rc = q.step();
  if (rc == SQLITE_DONE) return make_error_code(errc::invalid_argument);
  if (rc != SQLITE_ROW) return make_error_code(errc::sqlite_error);
  if (q.col_int(2) != 0) return make_error_code(errc::too_large);  // only a prefix was kept
  std::string topic(q.col_text(0));
  std::string body(q.col_blob(1));
  q.reset();
  msg_opts mo;
  mo.ignore_expiry = true;
  mo.dead_letter_id = id;
  --st.messages;  // a retry is not a new arrival
  std::error_code ec = handle_message(topic, reinterpret_cast<const std::uint8_t*>(body.data()),
                                      body.size(), mo, more);
  if (ec) return ec;
  statement del;
  if (del.prepare(db, "DELETE FROM edgecqrs_r_dead WHERE id=?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  del.bind(1, id);
  if (del.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  return {};
}

// Retries dead letters queued by schema arrivals (bounded by the dead-letter table).
void replica::impl::drain_retries(std::vector<std::int64_t>& ids) {
  while (!ids.empty()) {
    std::int64_t id = ids.back();
    ids.pop_back();
    std::vector<std::int64_t> more;
    retry_dead(id, more);
  }
}

std::error_code replica::list_dead_letters(std::vector<dead_letter>& out, std::size_t offset,
                                           std::size_t limit) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  out.clear();
  statement q;
  if (q.prepare(impl_->db,
                "SELECT id, at_ms, cqrs_id, topic, key, reason, category, detail,"
                " attempts, body, size FROM edgecqrs_r_dead ORDER BY id LIMIT ?1 OFFSET ?2") !=
      SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  // On 32-bit targets size_t is narrower than int64: widen before clamping.
  const std::uint64_t lim = limit;
  q.bind(1, static_cast<std::int64_t>(std::min<std::uint64_t>(lim, INT64_MAX)));
  q.bind(2, static_cast<std::int64_t>(offset));
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    dead_letter d;
    d.id = q.col_int(0);
    d.at_ms = q.col_int(1);
    d.cqrs_id = std::string(q.col_text(2));
    d.topic = std::string(q.col_text(3));
    replica_detail::decode_key(q.col_blob(4), d.key);
    // Only our own category is stored by this library; others are reported generically.
    if (q.col_text(6) == edgecqrs_category().name())
      d.reason = std::error_code(static_cast<int>(q.col_int(5)), edgecqrs_category());
    else
      d.reason = make_error_code(errc::sqlite_error);
    d.detail = std::string(q.col_text(7));
    d.attempts = static_cast<std::uint32_t>(q.col_int(8));
    d.raw = std::string(q.col_blob(9));
    d.original_size =
        std::max<std::uint64_t>(static_cast<std::uint64_t>(q.col_int(10)), d.raw.size());
    d.truncated = d.original_size > d.raw.size();
    out.push_back(std::move(d));
  }
  return rc == SQLITE_DONE ? std::error_code{} : make_error_code(errc::sqlite_error);
}

std::error_code replica::retry_dead_letter(std::int64_t id) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  std::vector<std::int64_t> more;
  std::error_code ec = impl_->retry_dead(id, more);
  impl_->drain_retries(more);
  impl_->flush_controls(lk);
  return ec;
}

std::error_code replica::retry_all_dead_letters(std::size_t& still_failing) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  still_failing = 0;
  std::vector<std::int64_t> ids;
  {
    statement q;
    if (q.prepare(impl_->db, "SELECT id FROM edgecqrs_r_dead ORDER BY id") != SQLITE_OK)
      return make_error_code(errc::sqlite_error);
    while (q.step() == SQLITE_ROW) ids.push_back(q.col_int(0));
  }
  for (std::int64_t id : ids) {
    std::vector<std::int64_t> more;
    if (impl_->retry_dead(id, more)) ++still_failing;
    impl_->drain_retries(more);
  }
  impl_->flush_controls(lk);
  return {};
}

std::error_code replica::purge_dead_letter(std::int64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "DELETE FROM edgecqrs_r_dead WHERE id=?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, id);
  if (q.step() != SQLITE_DONE) return make_error_code(errc::sqlite_error);
  return sqlite3_changes(impl_->db) ? std::error_code{} : make_error_code(errc::invalid_argument);
}

std::error_code replica::purge_dead_letters(std::int64_t older_than_ms) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "DELETE FROM edgecqrs_r_dead WHERE at_ms<?1") != SQLITE_OK)
    return make_error_code(errc::sqlite_error);
  q.bind(1, older_than_ms);
  return q.step() == SQLITE_DONE ? std::error_code{} : make_error_code(errc::sqlite_error);
}

std::error_code replica::dead_letter_count(std::size_t& out) const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  statement q;
  if (q.prepare(impl_->db, "SELECT count(*) FROM edgecqrs_r_dead") != SQLITE_OK ||
      q.step() != SQLITE_ROW)
    return make_error_code(errc::sqlite_error);
  out = static_cast<std::size_t>(q.col_int(0));
  return {};
}

}  // namespace edgecqrs

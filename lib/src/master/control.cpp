// Control: answers replicas' replay and re-sync requests with direct outbox records. Fed by
// registration.cpp's subscription through publisher.cpp's poll; re-sync reads rows via sync.cpp.
#include "master/engine.hpp"

namespace edgecqrs::master_detail {

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
                "SELECT id, first_seq, n_events, body, tag FROM edgecqrs_outbox WHERE kind=0 AND "
                "stream=?1 AND first_seq<=?3 AND first_seq+n_events-1>=?2 ORDER BY first_seq"))
      return sql_fail("replay");
    sqlite3_bind_int64(q.get(), 1, t.stream_id);
    sqlite3_bind_int64(q.get(), 2, static_cast<sqlite3_int64>(from));
    sqlite3_bind_int64(q.get(), 3, static_cast<sqlite3_int64>(to));
    struct rec {
      std::uint64_t first, n;
      std::vector<std::uint8_t> body;
      std::uint32_t tag;
    };
    std::vector<rec> recs;
    std::uint64_t next = from;
    bool covered = true;
    std::size_t bytes = 0;
    while (sqlite3_step(q.get()) == SQLITE_ROW) {
      rec r;
      r.first = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 1));
      r.n = static_cast<std::uint64_t>(sqlite3_column_int64(q.get(), 2));
      r.tag = static_cast<std::uint32_t>(sqlite3_column_int64(q.get(), 4));
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
                                     r.body.size(), nr, nb, r.tag))
            return ec;
        return std::error_code{};
      });
    }
    // The range is gone: answer with a full re-sync.
  }
  return sync_locked(t, "", {}, c.replica, true, nullptr,
                     c.op == control_op::resync ? c.from_seq : 0);
}
}  // namespace edgecqrs::master_detail

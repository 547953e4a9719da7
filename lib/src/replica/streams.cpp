// Streams: per-stream progress (seen ranges, checkpoint, head, open gaps), persisted in
// edgecqrs_r_streams. Moved by pipeline.cpp and resync.cpp; resync.cpp asks to fill the gaps.
#include "replica/engine.hpp"

namespace edgecqrs {

namespace {

std::string seen_to_blob(const std::map<std::uint64_t, std::uint64_t>& seen) {
  std::string b;
  b.reserve(seen.size() * 16);
  for (const auto& [lo, hi] : seen) {
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((lo >> s) & 0xff));
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((hi >> s) & 0xff));
  }
  return b;
}

void seen_from_blob(std::string_view b, std::map<std::uint64_t, std::uint64_t>& seen) {
  seen.clear();
  for (std::size_t i = 0; i + 16 <= b.size(); i += 16) {
    std::uint64_t lo = 0, hi = 0;
    for (int k = 0; k < 8; ++k) lo = (lo << 8) | static_cast<std::uint8_t>(b[i + k]);
    for (int k = 0; k < 8; ++k) hi = (hi << 8) | static_cast<std::uint8_t>(b[i + 8 + k]);
    if (lo <= hi) seen[lo] = hi;
  }
}

// Marks [lo, hi] applied and advances the checkpoint over contiguous ranges.
void mark_seen(progress& p, std::uint64_t lo, std::uint64_t hi, std::size_t max_ranges) {
  if (hi <= p.checkpoint || lo > hi) return;
  lo = std::max(lo, p.checkpoint + 1);
  p.head = std::max(p.head, hi);
  auto it = p.seen.upper_bound(lo);
  if (it != p.seen.begin()) {
    auto prev = std::prev(it);
    if (prev->second + 1 >= lo) {
      lo = prev->first;
      hi = std::max(hi, prev->second);
      it = p.seen.erase(prev);
    }
  }
  while (it != p.seen.end() && it->first <= hi + 1) {
    hi = std::max(hi, it->second);
    it = p.seen.erase(it);
  }
  p.seen[lo] = hi;
  while (!p.seen.empty() && p.seen.begin()->first <= p.checkpoint + 1) {
    p.checkpoint = std::max(p.checkpoint, p.seen.begin()->second);
    p.seen.erase(p.seen.begin());
  }
  // Bounded: forget the highest ranges (head keeps them counted as existing, so a replay brings
  // them back and they are skipped as duplicates).
  while (p.seen.size() > max_ranges) p.seen.erase(std::prev(p.seen.end()));
}

std::string ids_to_blob(const std::vector<std::uint64_t>& ids) {
  std::string b;
  for (std::uint64_t v : ids)
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((v >> s) & 0xff));
  return b;
}

void ids_from_blob(std::string_view b, std::vector<std::uint64_t>& ids) {
  ids.clear();
  for (std::size_t i = 0; i + 8 <= b.size(); i += 8) {
    std::uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = (v << 8) | static_cast<std::uint8_t>(b[i + k]);
    ids.push_back(v);
  }
}

std::string asked_to_blob(const std::vector<asked_session>& v) {
  std::vector<std::uint64_t> ids;
  for (const auto& a : v)
    ids.insert(ids.end(),
               {a.nonce, a.index, a.floor, static_cast<std::uint64_t>(a.at_ms),
                (a.done ? 1u : 0u) | (a.authoritative ? 2u : 0u)});
  return ids_to_blob(ids);
}

void asked_from_blob(std::string_view b, std::vector<asked_session>& v) {
  std::vector<std::uint64_t> ids;
  ids_from_blob(b, ids);
  v.clear();
  for (std::size_t i = 0; i + 5 <= ids.size(); i += 5)
    v.push_back({ids[i], ids[i + 1], ids[i + 2], static_cast<std::int64_t>(ids[i + 3]),
                 (ids[i + 4] & 1) != 0, (ids[i + 4] & 2) != 0});
}

bool has_gap(const progress& p) { return !p.seen.empty() || p.head > p.checkpoint; }

}  // namespace

namespace replica_detail {

void raise_checkpoint(progress& p, std::uint64_t to) {
  if (to <= p.checkpoint) return;
  p.checkpoint = to;
  p.head = std::max(p.head, to);
  while (!p.seen.empty() && p.seen.begin()->first <= p.checkpoint + 1) {
    p.checkpoint = std::max(p.checkpoint, p.seen.begin()->second);
    p.seen.erase(p.seen.begin());
  }
}

// What a message tells about the stream: a heartbeat announces the head, events mark their seqs.
void advance(progress& p, const message& m, std::size_t max_ranges) {
  const std::size_t n = m.events.size();
  if (n == 0 && m.first_seq > 0) {
    p.head = std::max(p.head, m.first_seq - 1);  // heartbeat: seqs below it exist
  } else if (m.first_seq > 0) {
    mark_seen(p, m.first_seq, m.first_seq + n - 1, max_ranges);
  }
}

}  // namespace replica_detail

std::error_code replica::impl::save_stream(const stream& s, const progress& p) {
  reset_guard g(q_stream_put);
  q_stream_put.bind(1, s.sid);
  if (s.has_incarnation)
    q_stream_put.bind_blob(2, s.incarnation.data(), s.incarnation.size());
  else
    q_stream_put.bind_null(2);
  q_stream_put.bind(3, static_cast<std::int64_t>(p.checkpoint));
  q_stream_put.bind(4, static_cast<std::int64_t>(p.head));
  std::string blob = seen_to_blob(p.seen);
  q_stream_put.bind_blob(5, blob.data(), blob.size());
  q_stream_put.bind(6, static_cast<std::int64_t>(p.resync_session));
  q_stream_put.bind(7, static_cast<std::int64_t>(p.resync_parts));
  q_stream_put.bind(8, p.resync_at_ms);
  q_stream_put.bind(9, static_cast<std::int64_t>(p.resync_done));
  q_stream_put.bind(10, static_cast<std::int64_t>(p.resync_done_upto));
  std::string skip = ids_to_blob(p.resync_skip);
  q_stream_put.bind_blob(11, skip.data(), skip.size());
  q_stream_put.bind(12, static_cast<std::int64_t>(p.resync_want));
  std::string asked = asked_to_blob(p.resync_asked);
  q_stream_put.bind_blob(13, asked.data(), asked.size());
  q_stream_put.bind(14, static_cast<std::int64_t>(p.resync_asks));
  q_stream_put.bind(15, p.resync_auth ? 1 : 0);
  return q_stream_put.step() == SQLITE_DONE ? std::error_code{}
                                            : make_error_code(errc::sqlite_error);
}

// Re-reads the stream's persisted state (another replica object or process on the same
// database may have moved it): call it inside the write transaction before computing the
// new state from s.prog, so that nothing another writer committed is overwritten.
std::error_code replica::impl::reload_stream(stream& s) {
  reset_guard g(q_stream_get);
  q_stream_get.bind(1, s.sid);
  if (q_stream_get.step() != SQLITE_ROW) return make_error_code(errc::sqlite_error);
  auto inc = q_stream_get.col_blob(0);
  if (inc.size() == s.incarnation.size()) {
    if (!s.has_incarnation || std::memcmp(s.incarnation.data(), inc.data(), inc.size()) != 0) {
      s.has_incarnation = true;
      std::memcpy(s.incarnation.data(), inc.data(), inc.size());
    }
  } else {
    s.has_incarnation = false;
  }
  progress& p = s.prog;
  p.checkpoint = static_cast<std::uint64_t>(q_stream_get.col_int(1));
  p.head = static_cast<std::uint64_t>(q_stream_get.col_int(2));
  seen_from_blob(q_stream_get.col_blob(3), p.seen);
  p.resync_session = static_cast<std::uint64_t>(q_stream_get.col_int(4));
  p.resync_parts = static_cast<std::uint64_t>(q_stream_get.col_int(5));
  p.resync_at_ms = q_stream_get.col_int(6);
  p.resync_done = static_cast<std::uint64_t>(q_stream_get.col_int(7));
  p.resync_done_upto = static_cast<std::uint64_t>(q_stream_get.col_int(8));
  ids_from_blob(q_stream_get.col_blob(9), p.resync_skip);
  p.resync_want = static_cast<std::uint64_t>(q_stream_get.col_int(10));
  asked_from_blob(q_stream_get.col_blob(11), p.resync_asked);
  p.resync_asks = static_cast<std::uint64_t>(q_stream_get.col_int(12));
  p.resync_auth = q_stream_get.col_int(13) != 0;
  return {};
}

// A stream seq (or a heartbeat's head) at most max_seq_ahead beyond the highest one known.
bool replica::impl::plausible_seq(const stream& s, const message& m) const {
  const std::uint64_t known = std::max(s.prog.head, s.prog.checkpoint);
  const std::uint64_t seq = m.events.empty() && m.first_seq > 0 ? m.first_seq - 1 : m.first_seq;
  return seq <= known || seq - known <= opts.max_seq_ahead;
}

void replica::impl::update_gap_state(stream& s) {
  bool gap = has_gap(s.prog);
  if (gap && !s.gap_open) {
    s.gap_open = true;
    s.gap_since_ms = steady();
    s.replay_backoff_ms = opts.request_backoff_initial_ms;
    s.next_replay_ms = s.gap_since_ms + opts.reorder_window_ms;
    ++st.gaps_detected;
  } else if (!gap && s.gap_open) {
    s.gap_open = false;
    ++st.gaps_repaired;
  }
}

}  // namespace edgecqrs

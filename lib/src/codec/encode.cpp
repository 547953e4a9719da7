// Encoder for docs/wire-format.md: writes into the caller's buffer, never allocates.
#include <cstdint>
#include <string_view>

#include "codec/cbor_writer.hpp"
#include "utf8.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"

namespace edgecqrs {
namespace {

using detail::cbor_writer;

constexpr std::uint64_t head_has_dt = 4;
constexpr std::uint64_t head_has_extras = 8;

std::error_code finish(const cbor_writer& w, std::size_t& written) noexcept {
  written = w.size();
  return w.overflow() ? make_error_code(errc::buffer_too_small) : std::error_code{};
}

std::error_code put_value(cbor_writer& w, const value_view& v) noexcept {
  switch (v.type) {
    case value_type::null: w.null(); return {};
    case value_type::integer: w.sint(v.i); return {};
    case value_type::real: w.real(v.d); return {};
    case value_type::text:
    case value_type::blob:
      if (v.size != 0 && v.data == nullptr) return errc::invalid_argument;
      if (v.type == value_type::text) {
        // SQLite does not validate TEXT; refusing here keeps a bad row from poisoning a
        // whole message that every replica would then reject.
        if (!detail::valid_utf8(static_cast<const std::uint8_t*>(v.data), v.size))
          return errc::invalid_argument;
        w.text(v.data, v.size);
      } else {
        w.bytes(v.data, v.size);
      }
      return {};
  }
  return errc::invalid_argument;
}

// Both event shapes (the master's borrowed event_view and the decoded, owning event) are
// written by one routine through these small adapters.
struct view_source {
  const event_view& ev;
  std::size_t n_values() const { return ev.n_values; }
  value_view value_at(std::size_t k) const { return ev.values[k]; }
  std::size_t n_prev() const { return ev.n_prev; }
  std::uint32_t prev_column(std::size_t k) const { return ev.prev_columns[k]; }
  value_view prev_value(std::size_t k) const { return ev.prev_values[k]; }
  std::size_t n_meta() const { return ev.n_meta; }
  std::string_view meta_key(std::size_t k) const { return ev.meta[k].first; }
  value_view meta_value(std::size_t k) const { return ev.meta[k].second; }
};

struct owned_source {
  const event& ev;
  std::size_t n_values() const { return ev.values.size(); }
  value_view value_at(std::size_t k) const { return ev.values[k].view(); }
  std::size_t n_prev() const { return ev.previous.size(); }
  std::uint32_t prev_column(std::size_t k) const { return ev.previous[k].column; }
  value_view prev_value(std::size_t k) const { return ev.previous[k].old.view(); }
  std::size_t n_meta() const { return ev.meta.size(); }
  std::string_view meta_key(std::size_t k) const { return ev.meta[k].first; }
  value_view meta_value(std::size_t k) const { return ev.meta[k].second.view(); }
};

bool valid_text(std::string_view s) noexcept {
  return detail::valid_utf8(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

template <class Source>
std::error_code put_event_from(cbor_writer& w, event_kind kind_enum, std::uint64_t row_version,
                               std::int64_t dt, std::string_view correlation_id,
                               const Source& src) noexcept {
  const auto kind = static_cast<std::uint64_t>(kind_enum);
  if (kind > 2) return errc::invalid_argument;
  if (!valid_text(correlation_id)) return errc::invalid_argument;
  // The decoder rejects duplicate map keys, so the encoder must never produce them. The lists
  // are short (tracked columns, a few meta entries); a quadratic check beats sorting a copy
  // on the allocation-free path.
  for (std::size_t a = 0; a < src.n_prev(); ++a)
    for (std::size_t b = a + 1; b < src.n_prev(); ++b)
      if (src.prev_column(a) == src.prev_column(b)) return errc::invalid_argument;
  for (std::size_t a = 0; a < src.n_meta(); ++a) {
    if (!valid_text(src.meta_key(a))) return errc::invalid_argument;
    for (std::size_t b = a + 1; b < src.n_meta(); ++b)
      if (src.meta_key(a) == src.meta_key(b)) return errc::invalid_argument;
  }

  const bool has_dt = dt != 0;
  const std::size_t n_extras = (src.n_prev() ? 1 : 0) + (correlation_id.empty() ? 0 : 1) +
                               (src.n_meta() ? 1 : 0);
  std::uint64_t head = kind;
  if (has_dt) head |= head_has_dt;
  if (n_extras) head |= head_has_extras;

  w.array(2 + (has_dt ? 1 : 0) + src.n_values() + (n_extras ? 1 : 0));
  w.uint(head);
  w.uint(row_version);
  if (has_dt) w.sint(dt);
  for (std::size_t k = 0; k < src.n_values(); ++k)
    if (auto ec = put_value(w, src.value_at(k))) return ec;
  if (!n_extras) return {};
  w.map(n_extras);
  if (src.n_prev()) {
    w.uint(1);
    w.map(src.n_prev());
    for (std::size_t k = 0; k < src.n_prev(); ++k) {
      w.uint(src.prev_column(k));
      if (auto ec = put_value(w, src.prev_value(k))) return ec;
    }
  }
  if (!correlation_id.empty()) {
    w.uint(2);
    w.text(correlation_id.data(), correlation_id.size());
  }
  if (src.n_meta()) {
    w.uint(3);
    w.map(src.n_meta());
    for (std::size_t k = 0; k < src.n_meta(); ++k) {
      w.text(src.meta_key(k).data(), src.meta_key(k).size());
      if (auto ec = put_value(w, src.meta_value(k))) return ec;
    }
  }
  return {};
}

std::error_code put_event(cbor_writer& w, const event_view& ev) noexcept {
  if ((ev.n_values && !ev.values) || (ev.n_prev && (!ev.prev_columns || !ev.prev_values)) ||
      (ev.n_meta && !ev.meta)) {
    return errc::invalid_argument;
  }
  return put_event_from(w, ev.kind, ev.row_version, ev.dt_ms, ev.correlation_id,
                        view_source{ev});
}

std::error_code put_owned_event(cbor_writer& w, const event& e, std::int64_t dt) noexcept {
  return put_event_from(w, e.kind, e.row_version, dt, e.correlation_id, owned_source{e});
}

std::error_code put_message_head(cbor_writer& w, std::uint32_t schema_tag, std::uint64_t first_seq,
                                 std::size_t n_groups, bool has_ext) noexcept {
  w.array(has_ext ? 5 : 4);
  w.uint(wire_format_version);
  w.uint(schema_tag);
  w.uint(first_seq);
  w.array(n_groups);
  return {};
}

std::error_code put_message_ext(cbor_writer& w, const message& m) noexcept {
  if (m.expires_ms < 0 || !valid_text(m.target) || !valid_text(m.reply_to))
    return errc::invalid_argument;
  const std::size_t n = (m.target.empty() ? 0 : 1) + (m.expires_ms ? 1 : 0) +
                        (m.has_resync ? 1 : 0) + (m.reply_to.empty() ? 0 : 1);
  w.map(n);
  if (!m.target.empty()) {
    w.uint(1);
    w.text(m.target.data(), m.target.size());
  }
  if (m.expires_ms) {
    w.uint(2);
    w.uint(static_cast<std::uint64_t>(m.expires_ms));
  }
  if (m.has_resync) {
    w.uint(3);
    w.array(4);
    w.uint(m.resync.session);
    w.uint(m.resync.upto_seq);
    w.uint(m.resync.part);
    w.boolean(m.resync.last);
  }
  if (!m.reply_to.empty()) {
    w.uint(4);
    w.text(m.reply_to.data(), m.reply_to.size());
  }
  return {};
}

}  // namespace

std::error_code encode_value(const value_view& v, std::uint8_t* buf, std::size_t cap,
                             std::size_t& written) noexcept {
  cbor_writer w(buf, cap);
  written = 0;
  if (auto ec = put_value(w, v)) return ec;
  return finish(w, written);
}

std::error_code encode_event(const event_view& ev, std::uint8_t* buf, std::size_t cap,
                             std::size_t& written) noexcept {
  cbor_writer w(buf, cap);
  written = 0;
  if (auto ec = put_event(w, ev)) return ec;
  return finish(w, written);
}

std::error_code encode_group_head(std::int64_t t0_ms, std::size_t n_events, std::uint8_t* buf,
                                  std::size_t cap, std::size_t& written) noexcept {
  written = 0;
  if (t0_ms < 0 || n_events == 0) return errc::invalid_argument;
  cbor_writer w(buf, cap);
  w.array(1 + static_cast<std::uint64_t>(n_events));
  w.uint(static_cast<std::uint64_t>(t0_ms));
  return finish(w, written);
}

std::error_code encode_message_head(std::uint32_t schema_tag, std::uint64_t first_seq,
                                    std::size_t n_groups, bool has_ext, std::uint8_t* buf,
                                    std::size_t cap, std::size_t& written) noexcept {
  cbor_writer w(buf, cap);
  written = 0;
  if (auto ec = put_message_head(w, schema_tag, first_seq, n_groups, has_ext)) return ec;
  return finish(w, written);
}

bool message_has_ext(const message& m) noexcept {
  return !m.target.empty() || m.expires_ms != 0 || m.has_resync || !m.reply_to.empty();
}

std::error_code encode_message_ext(const message& m, std::uint8_t* buf, std::size_t cap,
                                   std::size_t& written) noexcept {
  cbor_writer w(buf, cap);
  written = 0;
  if (auto ec = put_message_ext(w, m)) return ec;
  return finish(w, written);
}

std::error_code encode_message(const message& m, std::uint8_t* buf, std::size_t cap,
                               std::size_t& written) noexcept {
  written = 0;
  cbor_writer w(buf, cap);
  const bool has_ext = message_has_ext(m);
  put_message_head(w, m.schema_tag, m.first_seq, m.events.empty() ? 0 : 1, has_ext);
  if (!m.events.empty()) {
    const std::int64_t t0 = m.events.front().updated_ms;
    if (t0 < 0) return errc::invalid_argument;
    w.array(1 + static_cast<std::uint64_t>(m.events.size()));
    w.uint(static_cast<std::uint64_t>(t0));
    for (const auto& e : m.events) {
      // t0 is a uint on the wire; with both times >= 0 the difference cannot overflow.
      if (e.updated_ms < 0) return errc::invalid_argument;
      if (auto ec = put_owned_event(w, e, e.updated_ms - t0)) return ec;
    }
  }
  if (has_ext) {
    if (auto ec = put_message_ext(w, m)) return ec;
  }
  return finish(w, written);
}

std::error_code encode_schema(const schema& s, std::uint8_t* buf, std::size_t cap,
                              std::size_t& written) noexcept {
  written = 0;
  if (s.columns.empty() || s.pk.empty()) return errc::invalid_argument;
  for (auto i : s.pk)
    if (i >= s.columns.size()) return errc::invalid_argument;
  if (!valid_text(s.cqrs_id)) return errc::invalid_argument;
  for (const auto& c : s.columns)
    if (!valid_text(c.name) || !valid_text(c.decl_type)) return errc::invalid_argument;
  cbor_writer w(buf, cap);
  w.array(7);
  w.uint(wire_format_version);
  w.text("schema", 6);
  w.text(s.cqrs_id.data(), s.cqrs_id.size());
  w.uint(s.schema_tag);
  w.bytes(s.incarnation.data(), s.incarnation.size());
  w.array(s.columns.size());
  for (const auto& c : s.columns) {
    w.array(2);
    w.text(c.name.data(), c.name.size());
    w.text(c.decl_type.data(), c.decl_type.size());
  }
  w.array(s.pk.size());
  for (auto i : s.pk) w.uint(i);
  return finish(w, written);
}

std::error_code encode_control(const control_request& c, std::uint8_t* buf, std::size_t cap,
                               std::size_t& written) noexcept {
  written = 0;
  if (static_cast<std::uint64_t>(c.op) > 2 || !valid_text(c.replica))
    return errc::invalid_argument;
  cbor_writer w(buf, cap);
  w.array(5);
  w.uint(wire_format_version);
  w.uint(static_cast<std::uint64_t>(c.op));
  w.text(c.replica.data(), c.replica.size());
  w.uint(c.from_seq);
  w.uint(c.to_seq);
  return finish(w, written);
}

}  // namespace edgecqrs

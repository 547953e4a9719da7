#include "golden_cases.hpp"

#include <cstring>
#include <limits>
#include <stdexcept>

namespace edgecqrs::test {
namespace {

constexpr std::uint32_t reading_tag = 0x9e3779b9;
constexpr std::int64_t t_base = 1763800000000;  // 2025-11-22T08:26:40Z

double from_bits(std::uint64_t b) {
  double d;
  std::memcpy(&d, &b, 8);
  return d;
}

event make(event_kind k, std::uint64_t version, std::int64_t t, std::vector<value> values) {
  event e;
  e.kind = k;
  e.row_version = version;
  e.updated_ms = t;
  e.values = std::move(values);
  return e;
}

std::vector<value> reading_row(std::int64_t id, double temp, std::int64_t ts) {
  return {value::integer(id), value::text("sensor-42"), value::real(temp), value::integer(ts)};
}

void append(bytes& out,
            const std::function<std::error_code(std::uint8_t*, std::size_t, std::size_t&)>& fn) {
  std::size_t n = 0;
  if (fn(nullptr, 0, n)) throw std::runtime_error("measure failed");
  const std::size_t at = out.size();
  out.resize(at + n);
  std::size_t w = 0;
  if (fn(out.data() + at, n, w) || w != n) throw std::runtime_error("encode failed");
}

// A group of events [from, to) of `m` committed at `t0`, built with the hot-path pieces: the
// group head, then each event with its time relative to t0 (dt 0 is omitted).
void append_group(bytes& out, const message& m, std::int64_t t0, std::size_t from, std::size_t to) {
  append(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
    return encode_group_head(t0, to - from, b, cap, w);
  });
  for (std::size_t i = from; i < to; ++i) {
    std::vector<value_view> vals;
    for (const auto& v : m.events[i].values) vals.push_back(v.view());
    event_view ev;
    ev.kind = m.events[i].kind;
    ev.row_version = m.events[i].row_version;
    ev.dt_ms = m.events[i].updated_ms - t0;
    ev.values = vals.data();
    ev.n_values = vals.size();
    append(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
      return encode_event(ev, b, cap, w);
    });
  }
}

std::vector<golden_case> build() {
  std::vector<golden_case> cases;

  {
    golden_case c;
    c.name = "save_reading";
    c.msg = save_reading_message();
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "delete_reading";
    c.msg.schema_tag = reading_tag;
    c.msg.first_seq = 100001;
    c.msg.events.push_back(make(event_kind::remove, 4, t_base + 60000, {value::integer(123456)}));
    cases.push_back(c);
  }
  {
    // A direct re-sync answer: seq 0, sync events with their own row times (dt), all four ext keys.
    golden_case c;
    c.name = "sync_resync";
    c.msg.schema_tag = reading_tag;
    c.msg.first_seq = 0;
    c.msg.events.push_back(make(event_kind::sync, 7, t_base, reading_row(1, 20.25, 1763799000)));
    c.msg.events.push_back(
        make(event_kind::sync, 2, t_base - 86400000, reading_row(2, -3.0, 1763713600)));
    c.msg.events.push_back(make(event_kind::sync, 1, t_base + 1, reading_row(3, 0.1, 1763800000)));
    c.msg.target = "gw-1";
    c.msg.expires_ms = t_base + 3600000;
    c.msg.has_resync = true;
    c.msg.resync = {42, 100001, 0, true};
    c.msg.reply_to = "gw-1";
    cases.push_back(c);
  }
  {
    // Two outbox records joined by the publisher: two groups, built with the hot-path pieces.
    golden_case c;
    c.name = "batch_two_groups";
    c.msg.schema_tag = reading_tag;
    c.msg.first_seq = 100002;
    c.msg.events.push_back(
        make(event_kind::save, 1, t_base + 1000, reading_row(10, 21.5, 1763800001)));
    c.msg.events.push_back(
        make(event_kind::save, 1, t_base + 1000, reading_row(11, 22.0, 1763800001)));
    c.msg.events.push_back(
        make(event_kind::save, 2, t_base + 1500, reading_row(10, 21.75, 1763800002)));
    c.msg.events.push_back(make(event_kind::remove, 3, t_base + 2000, {value::integer(11)}));
    const message m = c.msg;
    c.encode_fn = [m] {
      bytes out;
      append(out, [&](std::uint8_t* b, std::size_t cap, std::size_t& w) {
        return encode_message_head(m.schema_tag, m.first_seq, 2, false, b, cap, w);
      });
      // Group 1: one transaction at t_base + 1000 (events 0, 1).
      append_group(out, m, t_base + 1000, 0, 2);
      // Group 2: a transaction at t_base + 2000 whose first event is older (dt -500).
      append_group(out, m, t_base + 2000, 2, 4);
      return out;
    };
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "heartbeat";
    c.msg.schema_tag = reading_tag;
    c.msg.first_seq = 100006;
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "extras";
    c.msg.schema_tag = reading_tag;
    c.msg.first_seq = 100007;
    event e = make(event_kind::save, 5, t_base + 5000, reading_row(123456, 22.5, 1763800005));
    e.previous.push_back({2, value::real(21.5)});
    e.previous.push_back({3, value::integer(1763800000)});
    e.correlation_id = "req-7f3a";
    e.meta.emplace_back("user", value::text("alice"));
    e.meta.emplace_back("attempt", value::integer(2));
    e.meta.emplace_back("note", value::null());
    c.msg.events.push_back(std::move(e));
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "all_values";
    c.msg.schema_tag = 0x01020304;
    c.msg.first_seq = 1;
    const auto i64min = std::numeric_limits<std::int64_t>::min();
    const auto i64max = std::numeric_limits<std::int64_t>::max();
    std::vector<value> v = {
        value::null(),
        value::integer(0),
        value::integer(23),
        value::integer(24),
        value::integer(255),
        value::integer(256),
        value::integer(65535),
        value::integer(65536),
        value::integer(4294967295),
        value::integer(4294967296),
        value::integer(i64max),
        value::integer(-1),
        value::integer(-24),
        value::integer(-25),
        value::integer(-256),
        value::integer(-257),
        value::integer(-4294967296),
        value::integer(-4294967297),
        value::integer(i64min),
        value::real(0.0),
        value::real(-0.0),
        value::real(1.5),
        value::real(65504.0),
        value::real(65505.0),
        value::real(3.4028234663852886e38),
        value::real(0.1),
        value::real(1e300),
        value::real(from_bits(0x7ff0000000000000)),  // +Inf
        value::real(from_bits(0xfff0000000000000)),  // -Inf
        value::real(from_bits(0x7ff8000000000000)),  // quiet NaN: float16
        value::real(from_bits(0x7ff4000000000000)),  // signalling NaN, payload fits float16
        value::real(from_bits(0x7ff8000020000000)),  // NaN payload needs float32
        value::real(from_bits(0x7ff0000000000001)),  // NaN payload needs float64
        value::real(from_bits(0x3e70000000000000)),  // 2^-24: smallest float16 subnormal
        value::real(from_bits(0x36a0000000000000)),  // 2^-149: smallest float32 subnormal
        value::real(from_bits(0x0000000000000001)),  // smallest float64 subnormal
        value::text(""),
        value::text(std::string("a\0b", 3)),
        value::text("z\xc3\xa4hler \xe2\x82\xac \xf0\x9d\x84\x9e"),
        value::blob(""),
        value::blob(std::string("\x00\xff\x10", 3)),
    };
    c.msg.events.push_back(make(event_kind::save, 1, t_base, std::move(v)));
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "schema_reading";
    c.kind = golden_kind::schema;
    c.sch.cqrs_id = "reading";
    for (int k = 0; k < 16; ++k) c.sch.incarnation[k] = static_cast<std::uint8_t>(0xa0 + k);
    c.sch.columns = {{"id", "INTEGER"}, {"name", "TEXT"}, {"temp", "REAL"}, {"ts", ""}};
    c.sch.pk = {0};
    c.sch.schema_tag = compute_schema_tag(c.sch);
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "control_replay";
    c.kind = golden_kind::control;
    c.ctl.op = control_op::replay;
    c.ctl.replica = "gw-1";
    c.ctl.from_seq = 100003;
    c.ctl.to_seq = 100005;
    cases.push_back(c);
  }
  {
    golden_case c;
    c.name = "control_resync";
    c.kind = golden_kind::control;
    c.ctl.op = control_op::resync;
    c.ctl.replica = "dashboard";
    cases.push_back(c);
  }
  return cases;
}

}  // namespace

message save_reading_message() {
  message m;
  m.schema_tag = reading_tag;
  m.first_seq = 100000;
  m.events.push_back(make(event_kind::save, 1, t_base, reading_row(123456, 21.5, 1763800000)));
  return m;
}

const std::vector<golden_case>& golden_cases() {
  static const std::vector<golden_case> cases = build();
  return cases;
}

}  // namespace edgecqrs::test

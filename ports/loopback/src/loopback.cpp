// In-process broker: one queue of publishes, routed to subscribers when the test pumps.
#include "edgecqrs/ports/loopback.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <vector>

#include "edgecqrs/errors.hpp"

namespace edgecqrs::loopback {

namespace {

// splitmix64: the same sequence on every platform and standard library.
struct rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double unit() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  bool chance(double p) { return p > 0 && unit() < p; }
};

struct item {
  std::uint64_t from = 0;         // publishing client id (0: broker-originated)
  std::uint64_t only_sub = 0;     // retained replay to one subscription id (0: route normally)
  std::string topic;
  std::string payload;
  bool retain = false;
  bool duplicate = false;
  std::int64_t due_ms = 0;
  publish_callback done;
};

struct subscription {
  std::uint64_t id = 0;
  std::uint64_t client = 0;
  std::string filter;   // as given
  std::string group;    // shared subscription group (empty: none)
  std::string match;    // filter without "$share/<group>/"
  std::shared_ptr<message_callback> cb;
};

struct client_rec {
  bool connected = true;
  std::size_t in_flight = 0;
};

}  // namespace

struct broker::state {
  mutable std::mutex mu;
  rng gen;
  clock* clk = nullptr;
  std::size_t max_queued = 0;
  std::deque<item> queue;
  std::vector<subscription> subs;
  std::map<std::string, std::string, std::less<>> retained;
  std::map<std::uint64_t, client_rec> clients;
  std::map<std::string, std::size_t> share_next;  // round-robin cursor per group+filter
  faults f;
  std::size_t drop_next = 0, dup_next = 0, fail_next = 0;
  std::uint64_t next_client = 1, next_sub = 1;
  broker_stats stats;
  bool alive = true;

  std::int64_t now() const { return clk ? clk->steady_ms() : 0; }
};

bool topic_matches(std::string_view filter, std::string_view topic) noexcept {
  // Topics starting with '$' are not matched by wildcards at the first level (MQTT 4.7.2).
  if (!topic.empty() && topic[0] == '$' && !filter.empty() && (filter[0] == '+' || filter[0] == '#'))
    return false;
  std::size_t fi = 0, ti = 0;
  while (true) {
    std::size_t fe = filter.find('/', fi);
    std::string_view fl = filter.substr(fi, fe == std::string_view::npos ? fe : fe - fi);
    if (fl == "#") return true;
    if (ti > topic.size()) return false;
    std::size_t te = topic.find('/', ti);
    std::string_view tl = topic.substr(ti, te == std::string_view::npos ? te : te - ti);
    if (fl != "+" && fl != tl) return false;
    bool f_end = fe == std::string_view::npos, t_end = te == std::string_view::npos;
    if (f_end || t_end) {
      if (f_end && t_end) return true;
      // "a/#" also matches "a".
      return t_end && !f_end && filter.substr(fe + 1) == "#";
    }
    fi = fe + 1;
    ti = te + 1;
  }
}

broker::broker(std::uint64_t seed, clock* clk, std::size_t max_queued)
    : state_(std::make_shared<state>()) {
  state_->gen.s = seed;
  state_->clk = clk;
  state_->max_queued = max_queued;
}

broker::~broker() {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->alive = false;
}

std::unique_ptr<client> broker::make_client(std::string name, std::size_t max_in_flight) {
  std::lock_guard<std::mutex> lk(state_->mu);
  std::uint64_t id = state_->next_client++;
  state_->clients[id] = client_rec{};
  return std::unique_ptr<client>(new client(state_, std::move(name), max_in_flight, id));
}

void broker::set_faults(const faults& f) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->f = f;
}
void broker::drop_next(std::size_t n) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->drop_next = n;
}
void broker::duplicate_next(std::size_t n) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->dup_next = n;
}
void broker::fail_ack_next(std::size_t n) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->fail_next = n;
}

void broker::disconnect(const client& c) {
  std::vector<publish_callback> failed;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    auto it = state_->clients.find(c.id_);
    if (it == state_->clients.end()) return;
    it->second.connected = false;
    for (auto q = state_->queue.begin(); q != state_->queue.end();) {
      if (q->from == c.id_) {
        if (q->done) failed.push_back(std::move(q->done));
        ++state_->stats.dropped;
        q = state_->queue.erase(q);
      } else {
        ++q;
      }
    }
    it->second.in_flight = 0;
  }
  for (auto& cb : failed) cb(make_error_code(errc::not_connected));
}

void broker::reconnect(const client& c) {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto it = state_->clients.find(c.id_);
  if (it != state_->clients.end()) it->second.connected = true;
}

std::size_t broker::queued() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->queue.size();
}

bool broker::retained(std::string_view topic, std::string& payload) const {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto it = state_->retained.find(topic);
  if (it == state_->retained.end()) return false;
  payload = it->second;
  return true;
}

broker_stats broker::stats() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->stats;
}

std::size_t broker::pump(std::size_t max) {
  std::size_t done_count = 0;
  while (done_count < max) {
    item it;
    std::vector<std::shared_ptr<message_callback>> targets;
    bool deliver = true, dup = false;
    std::error_code ack;
    {
      std::lock_guard<std::mutex> lk(state_->mu);
      auto& st = *state_;
      std::int64_t now = st.now();
      auto pos = std::find_if(st.queue.begin(), st.queue.end(),
                              [&](const item& i) { return i.due_ms <= now; });
      if (pos == st.queue.end()) break;
      it = std::move(*pos);
      st.queue.erase(pos);
      ++done_count;
      if (it.from) {
        auto c = st.clients.find(it.from);
        if (c != st.clients.end() && c->second.in_flight) --c->second.in_flight;
      }
      if (it.only_sub == 0) {
        if (st.drop_next) {
          --st.drop_next;
          deliver = false;
          ack = make_error_code(errc::timeout);
        } else if (st.gen.chance(st.f.drop)) {
          deliver = false;
          ack = make_error_code(errc::timeout);
        } else if (st.gen.chance(st.f.drop_after_ack)) {
          deliver = false;
        }
        if (!deliver) ++st.stats.dropped;
        if (deliver) {
          if (st.dup_next) {
            --st.dup_next;
            dup = true;
          } else {
            dup = st.gen.chance(st.f.duplicate);
          }
          if (dup) ++st.stats.duplicated;
          if (st.fail_next) {
            --st.fail_next;
            ack = make_error_code(errc::timeout);
          } else if (st.gen.chance(st.f.fail_ack)) {
            ack = make_error_code(errc::timeout);
          }
          if (ack) ++st.stats.failed_acks;
          if (it.retain) {
            if (it.payload.empty())
              st.retained.erase(it.topic);
            else
              st.retained[it.topic] = it.payload;
          }
        }
      }
      if (deliver) {
        std::map<std::string, std::vector<const subscription*>> groups;
        for (const auto& s : st.subs) {
          auto c = st.clients.find(s.client);
          if (c == st.clients.end() || !c->second.connected) continue;
          if (it.only_sub ? s.id != it.only_sub : !topic_matches(s.match, it.topic)) continue;
          if (s.group.empty())
            targets.push_back(s.cb);
          else
            groups[s.group + '\0' + s.match].push_back(&s);
        }
        for (auto& g : groups) {
          std::size_t& cur = st.share_next[g.first];
          targets.push_back(g.second[cur % g.second.size()]->cb);
          ++cur;
        }
        st.stats.delivered += targets.size() * (dup ? 2 : 1);
      }
    }
    if (deliver) {
      incoming_message m;
      m.topic = it.topic;
      m.data = reinterpret_cast<const std::uint8_t*>(it.payload.data());
      m.size = it.payload.size();
      for (int round = 0; round < (dup ? 2 : 1); ++round) {
        m.duplicate = round > 0;
        for (auto& cb : targets) (*cb)(m);
      }
    }
    if (it.done) it.done(ack);
  }
  return done_count;
}

std::size_t broker::pump_all(std::size_t max_rounds) {
  std::size_t total = 0;
  while (total < max_rounds) {
    std::size_t n = pump(max_rounds - total);
    if (n == 0) break;
    total += n;
  }
  return total;
}

client::client(std::shared_ptr<broker::state> s, std::string name, std::size_t max_in_flight,
               std::uint64_t id)
    : state_(std::move(s)), name_(std::move(name)), max_in_flight_(max_in_flight), id_(id) {}

client::~client() {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto& subs = state_->subs;
  subs.erase(std::remove_if(subs.begin(), subs.end(),
                            [&](const subscription& s) { return s.client == id_; }),
             subs.end());
  // Completions of queued publishes must not call into a destroyed owner.
  for (auto& q : state_->queue)
    if (q.from == id_) q.done = nullptr;
  state_->clients.erase(id_);
}

std::error_code client::publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                                const publish_options& opts, publish_callback done) {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto& st = *state_;
  auto c = st.clients.find(id_);
  if (!st.alive || c == st.clients.end() || !c->second.connected)
    return make_error_code(errc::not_connected);
  if (topic.empty() || topic.find_first_of("+#") != std::string_view::npos)
    return make_error_code(errc::publish_failed);
  if (c->second.in_flight >= max_in_flight_ || st.queue.size() >= st.max_queued)
    return make_error_code(errc::window_full);
  item it;
  it.from = id_;
  it.topic = std::string(topic);
  it.payload.assign(reinterpret_cast<const char*>(data), size);
  it.retain = opts.retain;
  it.due_ms = st.now() + st.f.delay_ms;
  it.done = std::move(done);
  ++c->second.in_flight;
  ++st.stats.published;
  if (!st.queue.empty() && st.gen.chance(st.f.reorder)) {
    std::size_t at = static_cast<std::size_t>(st.gen.next() % st.queue.size());
    st.queue.insert(st.queue.begin() + static_cast<std::ptrdiff_t>(at), std::move(it));
  } else {
    st.queue.push_back(std::move(it));
  }
  return {};
}

std::error_code client::subscribe(std::string_view filter, message_callback on_message) {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto& st = *state_;
  if (!st.alive || !st.clients.count(id_)) return make_error_code(errc::not_connected);
  subscription s;
  s.client = id_;
  s.filter = std::string(filter);
  s.match = s.filter;
  if (filter.substr(0, 7) == "$share/") {
    std::size_t slash = filter.find('/', 7);
    if (slash == std::string_view::npos || slash == 7 || slash + 1 >= filter.size())
      return make_error_code(errc::subscribe_failed);
    s.group = std::string(filter.substr(7, slash - 7));
    s.match = std::string(filter.substr(slash + 1));
  }
  if (s.match.empty()) return make_error_code(errc::subscribe_failed);
  s.cb = std::make_shared<message_callback>(std::move(on_message));
  // One callback per filter: a second subscribe replaces the first.
  for (auto& old : st.subs) {
    if (old.client == id_ && old.filter == s.filter) {
      old.cb = s.cb;
      return {};
    }
  }
  s.id = st.next_sub++;
  // Retained messages go to a new (non-shared) subscriber only, like MQTT 5 default handling.
  if (s.group.empty()) {
    for (const auto& r : st.retained) {
      if (!topic_matches(s.match, r.first)) continue;
      item it;
      it.only_sub = s.id;
      it.topic = r.first;
      it.payload = r.second;
      it.due_ms = st.now();
      st.queue.push_back(std::move(it));
    }
  }
  st.subs.push_back(std::move(s));
  return {};
}

std::error_code client::unsubscribe(std::string_view filter) {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto& subs = state_->subs;
  auto n = subs.size();
  subs.erase(std::remove_if(subs.begin(), subs.end(),
                            [&](const subscription& s) {
                              return s.client == id_ && s.filter == filter;
                            }),
             subs.end());
  return n == subs.size() ? make_error_code(errc::subscribe_failed) : std::error_code{};
}

bool client::connected() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto c = state_->clients.find(id_);
  return state_->alive && c != state_->clients.end() && c->second.connected;
}

std::size_t client::in_flight() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  auto c = state_->clients.find(id_);
  return c == state_->clients.end() ? 0 : c->second.in_flight;
}

}  // namespace edgecqrs::loopback

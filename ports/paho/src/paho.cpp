// paho_transport: edgecqrs::transport over mqtt::async_client (Paho MQTT C++ 1.2 / Paho C 1.3).
#include "edgecqrs/ports/paho.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <mqtt/async_client.h>
#if __has_include(<openssl/opensslv.h>)
#include <openssl/opensslv.h>
#endif

#include "edgecqrs/errors.hpp"

namespace edgecqrs::ports {
namespace {

constexpr std::size_t min_window = 1;
constexpr std::size_t max_window = 1024;
// Headroom between our window and Paho's limits: subscribes, unsubscribes and the disconnect
// also occupy Paho's command buffer.
constexpr int paho_headroom = 32;

// The filter without its "$share/<group>/" prefix.
std::string_view strip_share(std::string_view filter) noexcept {
  constexpr std::string_view share = "$share/";
  if (filter.substr(0, share.size()) != share) return filter;
  const auto rest = filter.substr(share.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return {};
  return rest.substr(slash + 1);
}

bool valid_filter(std::string_view filter) noexcept {
  if (filter.empty() || filter.find('\0') != std::string_view::npos) return false;
  if (filter.substr(0, 7) == "$share/") {
    const auto rest = filter.substr(7);
    const auto slash = rest.find('/');
    if (slash == 0 || slash == std::string_view::npos) return false;
    const auto group = rest.substr(0, slash);
    if (group.find_first_of("+#") != std::string_view::npos) return false;
    filter = rest.substr(slash + 1);
    if (filter.empty()) return false;
  }
  std::size_t start = 0;
  while (true) {
    const auto end = filter.find('/', start);
    const auto level = filter.substr(start, end == std::string_view::npos ? std::string_view::npos
                                                                          : end - start);
    if (level.find_first_of("+#") != std::string_view::npos && level.size() != 1) return false;
    if (level == "#" && end != std::string_view::npos) return false;
    if (end == std::string_view::npos) return true;
    start = end + 1;
  }
}

// Maps a failed Paho operation to our codes. Positive return codes below 0x80 are MQTT 3.1.1
// CONNACK refusals; reason codes >= 0x80 come from MQTT 5.
std::error_code map_connect_failure(int rc, int reason, bool tls, bool tls_error) {
  // MQTT 5 refusals arrive as the return code or the reason code depending on the path.
  for (int code : {rc, reason}) {
    if (code == 0x86 || code == 0x87 || code == 0x8C) return errc::auth_failed;
  }
  if (rc == 4 || rc == 5) {
    return errc::auth_failed;
  }
  if (tls_error || (tls && rc == MQTTASYNC_FAILURE)) return errc::tls_failed;
  return errc::connect_failed;
}

bool uri_is_tls(const std::string& uri) {
  return uri.rfind("ssl://", 0) == 0 || uri.rfind("mqtts://", 0) == 0 ||
         uri.rfind("wss://", 0) == 0;
}

// Paho C (the SSL build libpaho-mqtt3as, which Paho C++ links) initialises OpenSSL eagerly when
// the first client is created: error strings, every cipher and digest, the config file. Measured
// 1.3-1.7 MiB of RSS in a process that never speaks TLS. OpenSSL >= 1.1 initialises itself on
// first use (SSL_CTX_new for a TLS connection), so the port tells Paho to leave it alone. Only
// with a known OpenSSL >= 1.1 at build time; older OpenSSL needs Paho's init and locks.
void paho_global_init_once() {
#if defined(OPENSSL_VERSION_NUMBER) && OPENSSL_VERSION_NUMBER >= 0x10100000L
  static std::once_flag once;
  std::call_once(once, [] {
    MQTTAsync_init_options init = MQTTAsync_init_options_initializer;
    init.do_openssl_init = 0;
    MQTTAsync_global_init(&init);
  });
#endif
}

void* id_to_context(std::uint64_t id) {
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(id));
}
std::uint64_t context_to_id(void* ctx) {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(ctx));
}

}  // namespace

struct paho_transport::impl {
  struct subscription {
    std::string filter;
    std::shared_ptr<message_callback> callback;
  };

  // Completes publishes by the id carried in the token's user context.
  class publish_listener final : public mqtt::iaction_listener {
   public:
    explicit publish_listener(impl& owner) : owner_(owner) {}
    void on_success(const mqtt::token& tok) override {
      owner_.complete(context_to_id(tok.get_user_context()), {});
    }
    void on_failure(const mqtt::token& tok) override {
      const int rc = tok.get_return_code();
      owner_.complete(context_to_id(tok.get_user_context()),
                      rc == MQTTASYNC_DISCONNECTED ? make_error_code(errc::not_connected)
                                                   : make_error_code(errc::publish_failed));
    }

   private:
    impl& owner_;
  };

  // Resubscribes issued from the connected handler cannot be waited for; failures are kept
  // for diagnostics.
  class resubscribe_listener final : public mqtt::iaction_listener {
   public:
    explicit resubscribe_listener(impl& owner) : owner_(owner) {}
    void on_success(const mqtt::token& tok) override {
      const auto response = tok.get_subscribe_response();
      const auto codes = response.get_reason_codes();
      for (auto c : codes) {
        if (c >= 0x80) owner_.set_error("resubscribe refused by the broker");
      }
    }
    void on_failure(const mqtt::token&) override { owner_.set_error("resubscribe failed"); }

   private:
    impl& owner_;
  };

  explicit impl(paho_config c) : cfg(std::move(c)), listener(*this), resub_listener(*this) {
    cfg.max_in_flight = std::clamp(cfg.max_in_flight, min_window, max_window);
    tls = !cfg.tls.ca_file.empty() || uri_is_tls(cfg.server_uri);
  }

  paho_config cfg;
  bool tls = false;
  publish_listener listener;
  resubscribe_listener resub_listener;

  mutable std::mutex lifecycle_mutex;  // serialises start/stop
  // Read with std::atomic_load by any thread; replaced only by start/stop. A reader's copy keeps
  // the client alive while it uses it; stop() waits for those copies before destroying it.
  std::shared_ptr<mqtt::async_client> client;

  mutable std::mutex mutex;  // pending, subs, last_error
  std::map<std::uint64_t, publish_callback> pending;
  std::uint64_t next_id = 1;
  std::vector<subscription> subs;
  std::string last_error;
  std::atomic<bool> tls_error{false};
  std::atomic<bool> first_connect{false};
  std::atomic<std::thread::id> callback_thread{};

  std::atomic<std::uint64_t> published{0}, publish_failures{0}, received{0}, unrouted{0},
      callback_exceptions{0}, connects{0}, connection_losses{0};

  void set_error(std::string msg) {
    std::lock_guard<std::mutex> lock(mutex);
    last_error = std::move(msg);
  }

  void complete(std::uint64_t id, std::error_code ec) {
    publish_callback done;
    {
      std::lock_guard<std::mutex> lock(mutex);
      const auto it = pending.find(id);
      if (it == pending.end()) return;  // already failed by stop()
      done = std::move(it->second);
      pending.erase(it);
    }
    (ec ? publish_failures : published).fetch_add(1, std::memory_order_relaxed);
    callback_thread.store(std::this_thread::get_id());
    if (!done) return;  // fire and forget (e.g. control requests)
    try {
      done(ec);
    } catch (...) {
      callback_exceptions.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void fail_all_pending(std::error_code ec) {
    std::map<std::uint64_t, publish_callback> failed;
    {
      std::lock_guard<std::mutex> lock(mutex);
      failed.swap(pending);
    }
    for (auto& [id, done] : failed) {
      publish_failures.fetch_add(1, std::memory_order_relaxed);
      if (!done) continue;
      try {
        done(ec);
      } catch (...) {
        callback_exceptions.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  // Runs inside Paho's arrival callback: Paho acknowledges the message when this returns.
  void on_message(const mqtt::const_message_ptr& msg) {
    callback_thread.store(std::this_thread::get_id());
    const std::string& topic = msg->get_topic();
    std::shared_ptr<message_callback> cb;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (const auto& s : subs) {
        if (topic_matches(s.filter, topic)) {
          cb = s.callback;
          break;
        }
      }
    }
    if (!cb) {
      unrouted.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const auto& payload = msg->get_payload_ref();
    incoming_message in;
    in.topic = topic;
    in.data = reinterpret_cast<const std::uint8_t*>(payload.data());
    in.size = payload.size();
    in.duplicate = msg->is_duplicate();
    received.fetch_add(1, std::memory_order_relaxed);
    try {
      (*cb)(in);
    } catch (...) {
      callback_exceptions.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void on_connected() {
    connects.fetch_add(1, std::memory_order_relaxed);
    // start() subscribes itself after the first CONNACK and waits for the SUBACKs; subscribing
    // from this handler during the first connect was seen to leave a client without its
    // subscriptions (mosquitto 2.0.11, Paho C 1.3.11).
    if (first_connect.load()) return;
    std::vector<std::string> filters;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (const auto& s : subs) filters.push_back(s.filter);
    }
    auto cli = std::atomic_load(&client);
    if (!cli) return;
    for (const auto& f : filters) {
      try {
        cli->subscribe(f, 1, nullptr, resub_listener);
      } catch (const mqtt::exception& e) {
        set_error("resubscribe " + f + ": " + e.what());
      }
    }
  }

  std::shared_ptr<mqtt::async_client> current() const { return std::atomic_load(&client); }

  // Detaches the client and destroys it once no other thread holds a copy, never on a Paho
  // thread (a callback's copy is short-lived; we wait it out here).
  void drop_client(bool disconnect) {
    auto cli = std::atomic_exchange(&client, std::shared_ptr<mqtt::async_client>());
    if (!cli) return;
    try {
      if (disconnect && cli->is_connected()) {
        cli->disconnect(std::chrono::milliseconds(1000))->wait_for(std::chrono::seconds(2));
      }
    } catch (const mqtt::exception&) {
      // Already disconnected or the broker went away: nothing more to tell it.
    }
    try {
      cli->disable_callbacks();
    } catch (const mqtt::exception&) {
    }
    while (cli.use_count() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    cli.reset();
  }

  bool on_callback_thread() const {
    return callback_thread.load() == std::this_thread::get_id();
  }

  mqtt::connect_options make_connect_options() {
    mqtt::connect_options opts;
    opts.set_mqtt_version(cfg.mqtt_version);
    if (cfg.mqtt_version >= MQTTVERSION_5) {
      opts.set_clean_start(!cfg.persistent_session);
      if (cfg.persistent_session) {
        mqtt::properties props;
        props.add(mqtt::property(mqtt::property::SESSION_EXPIRY_INTERVAL,
                                 static_cast<int32_t>(cfg.session_expiry_s)));
        opts.set_properties(props);
      }
    } else {
      opts.set_clean_session(!cfg.persistent_session);
    }
    opts.set_keep_alive_interval(cfg.keep_alive);
    opts.set_connect_timeout(cfg.connect_timeout);
    opts.set_automatic_reconnect(cfg.reconnect_min, cfg.reconnect_max);
    opts.set_max_inflight(static_cast<int>(cfg.max_in_flight) + paho_headroom);
    if (!cfg.username.empty()) {
      opts.set_user_name(cfg.username);
      opts.set_password(cfg.password);
    }
    if (tls) {
      mqtt::ssl_options ssl;
      if (!cfg.tls.ca_file.empty()) ssl.set_trust_store(cfg.tls.ca_file);
      if (!cfg.tls.cert_file.empty()) ssl.set_key_store(cfg.tls.cert_file);
      if (!cfg.tls.key_file.empty()) ssl.set_private_key(cfg.tls.key_file);
      if (!cfg.tls.key_password.empty()) ssl.set_private_key_password(cfg.tls.key_password);
      ssl.set_enable_server_cert_auth(true);
      ssl.set_verify(cfg.tls.verify_hostname);
      ssl.set_error_handler([this](const std::string& msg) {
        tls_error.store(true);
        set_error("TLS: " + msg);
      });
      opts.set_ssl(std::move(ssl));
    }
    return opts;
  }
};

paho_transport::paho_transport(paho_config config)
    : impl_(std::make_shared<impl>(std::move(config))) {}

paho_transport::~paho_transport() { stop(); }

std::error_code paho_transport::start() {
  auto& m = *impl_;
  std::lock_guard<std::mutex> life(m.lifecycle_mutex);
  if (auto cur = m.current(); cur && cur->is_connected()) return {};
  if (m.cfg.client_id.empty() || m.cfg.server_uri.empty() ||
      (m.cfg.mqtt_version != MQTTVERSION_3_1_1 && m.cfg.mqtt_version != MQTTVERSION_5) ||
      m.cfg.reconnect_min.count() < 1 || m.cfg.reconnect_max < m.cfg.reconnect_min) {
    return errc::bad_config;
  }
  m.tls_error.store(false);
  try {
    // A previous start() failed: drop that client so no stale state or retries remain.
    m.drop_client(false);
    paho_global_init_once();
    mqtt::create_options create(m.cfg.mqtt_version,
                                static_cast<int>(m.cfg.max_in_flight) + paho_headroom);
    // Our outbox is the durable store; Paho keeps in-flight messages in memory only.
    auto cli = std::make_shared<mqtt::async_client>(m.cfg.server_uri, m.cfg.client_id, create,
                                                    nullptr);
    impl* raw = &m;
    cli->set_message_callback([raw](mqtt::const_message_ptr msg) { raw->on_message(msg); });
    cli->set_connected_handler([raw](const std::string&) { raw->on_connected(); });
    cli->set_connection_lost_handler([raw](const std::string& cause) {
      raw->connection_losses.fetch_add(1, std::memory_order_relaxed);
      raw->set_error("connection lost: " + cause);
    });
    std::atomic_store(&m.client, cli);
    m.first_connect.store(true);
    auto tok = cli->connect(m.make_connect_options());
    const bool answered = tok->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(
        m.cfg.connect_timeout + std::chrono::seconds(2)));
    m.first_connect.store(false);
    if (!answered) {
      m.set_error("connect timed out");
      return errc::timeout;
    }
    // wait_for throws on failure; reaching here means CONNACK accepted.
    std::vector<std::string> filters;
    {
      std::lock_guard<std::mutex> lock(m.mutex);
      for (const auto& s : m.subs) filters.push_back(s.filter);
    }
    const auto limit = std::chrono::duration_cast<std::chrono::milliseconds>(m.cfg.connect_timeout);
    for (const auto& f : filters) {
      auto sub = cli->subscribe(f, 1);
      if (!sub->wait_for(limit)) {
        m.set_error("subscribe " + f + ": no SUBACK");
        return errc::timeout;
      }
      const auto response = sub->get_subscribe_response();
      for (auto c : response.get_reason_codes()) {
        if (c >= 0x80) {
          m.set_error("subscribe " + f + ": refused by the broker");
          return errc::subscribe_failed;
        }
      }
    }
    return {};
  } catch (const mqtt::exception& e) {
    m.first_connect.store(false);
    m.set_error(std::string("connect: ") + e.what());
    return map_connect_failure(e.get_return_code(), e.get_reason_code(), m.tls,
                               m.tls_error.load());
  } catch (const std::exception& e) {
    m.set_error(std::string("connect: ") + e.what());
    return errc::connect_failed;
  }
}

void paho_transport::stop() {
  auto& m = *impl_;
  std::lock_guard<std::mutex> life(m.lifecycle_mutex);
  m.drop_client(true);
  m.fail_all_pending(errc::not_connected);
}

std::error_code paho_transport::publish(std::string_view topic, const std::uint8_t* data,
                                        std::size_t size, const publish_options& opts,
                                        publish_callback done) {
  auto& m = *impl_;
  if (topic.empty() || (data == nullptr && size != 0) ||
      topic.find_first_of("+#") != std::string_view::npos) {
    return errc::invalid_argument;
  }
  const auto cli = m.current();
  if (!cli || !cli->is_connected()) return errc::not_connected;

  std::uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if (m.pending.size() >= m.cfg.max_in_flight) return errc::window_full;
    id = m.next_id++;
    m.pending.emplace(id, std::move(done));
  }
  auto take_back = [&m, id]() {
    std::lock_guard<std::mutex> lock(m.mutex);
    m.pending.erase(id);
  };
  try {
    auto msg = mqtt::make_message(std::string(topic), data, size, 1, opts.retain);
    if (m.cfg.mqtt_version >= MQTTVERSION_5) {
      mqtt::properties props;
      if (opts.expiry_interval_s != 0) {
        props.add(mqtt::property(mqtt::property::MESSAGE_EXPIRY_INTERVAL,
                                 static_cast<int32_t>(opts.expiry_interval_s)));
      }
      if (!opts.correlation_data.empty()) {
        props.add(mqtt::property(mqtt::property::CORRELATION_DATA, opts.correlation_data));
      }
      for (const auto& [name, value] : opts.user_properties) {
        props.add(mqtt::property(mqtt::property::USER_PROPERTY, name, value));
      }
      if (!props.empty()) msg->set_properties(std::move(props));
    }
    // The listener reports PUBACK (or failure); the returned token is not needed.
    cli->publish(msg, id_to_context(id), m.listener);
    return {};
  } catch (const mqtt::exception& e) {
    take_back();
    const int rc = e.get_return_code();
    if (rc == MQTTASYNC_DISCONNECTED) return errc::not_connected;
    if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT) {
      return errc::window_full;
    }
    m.set_error(std::string("publish: ") + e.what());
    return errc::publish_failed;
  } catch (const std::exception& e) {
    take_back();
    m.set_error(std::string("publish: ") + e.what());
    return errc::publish_failed;
  }
}

std::error_code paho_transport::subscribe(std::string_view filter, message_callback on_message) {
  auto& m = *impl_;
  if (!on_message || !valid_filter(filter)) return errc::invalid_argument;
  const std::string f(filter);
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    auto cb = std::make_shared<message_callback>(std::move(on_message));
    auto it = std::find_if(m.subs.begin(), m.subs.end(),
                           [&](const impl::subscription& s) { return s.filter == f; });
    if (it != m.subs.end()) {
      it->callback = std::move(cb);
    } else {
      m.subs.push_back({f, std::move(cb)});
    }
  }
  const auto cli = m.current();
  if (!cli || !cli->is_connected()) return {};  // sent by the connected handler
  try {
    if (m.on_callback_thread()) {
      cli->subscribe(f, 1, nullptr, m.resub_listener);
      return {};
    }
    auto tok = cli->subscribe(f, 1);
    if (!tok->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(
            m.cfg.connect_timeout))) {
      return errc::timeout;
    }
    const auto response = tok->get_subscribe_response();
    for (auto c : response.get_reason_codes()) {
      if (c >= 0x80) {
        std::lock_guard<std::mutex> lock(m.mutex);
        m.subs.erase(std::remove_if(m.subs.begin(), m.subs.end(),
                                    [&](const impl::subscription& s) { return s.filter == f; }),
                     m.subs.end());
        return errc::subscribe_failed;
      }
    }
    return {};
  } catch (const mqtt::exception& e) {
    if (e.get_return_code() == MQTTASYNC_DISCONNECTED) return {};  // restored on reconnect
    m.set_error(std::string("subscribe: ") + e.what());
    std::lock_guard<std::mutex> lock(m.mutex);
    m.subs.erase(std::remove_if(m.subs.begin(), m.subs.end(),
                                [&](const impl::subscription& s) { return s.filter == f; }),
                 m.subs.end());
    return errc::subscribe_failed;
  }
}

std::error_code paho_transport::unsubscribe(std::string_view filter) {
  auto& m = *impl_;
  const std::string f(filter);
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    const auto before = m.subs.size();
    m.subs.erase(std::remove_if(m.subs.begin(), m.subs.end(),
                                [&](const impl::subscription& s) { return s.filter == f; }),
                 m.subs.end());
    if (before == m.subs.size()) return errc::invalid_argument;
  }
  const auto cli = m.current();
  if (!cli || !cli->is_connected()) return {};
  try {
    auto tok = cli->unsubscribe(f);
    if (m.on_callback_thread()) return {};
    if (!tok->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(
            m.cfg.connect_timeout))) {
      return errc::timeout;
    }
    return {};
  } catch (const mqtt::exception& e) {
    // With a persistent session the broker keeps the subscription; we drop arrivals for it.
    if (e.get_return_code() == MQTTASYNC_DISCONNECTED) return errc::not_connected;
    m.set_error(std::string("unsubscribe: ") + e.what());
    return errc::transport_error;
  }
}

bool paho_transport::connected() const {
  const auto cli = impl_->current();
  return cli && cli->is_connected();
}

std::size_t paho_transport::max_in_flight() const { return impl_->cfg.max_in_flight; }

std::size_t paho_transport::in_flight() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->pending.size();
}

paho_stats paho_transport::stats() const {
  const auto& m = *impl_;
  paho_stats s;
  s.published = m.published.load();
  s.publish_failures = m.publish_failures.load();
  s.received = m.received.load();
  s.unrouted = m.unrouted.load();
  s.callback_exceptions = m.callback_exceptions.load();
  s.connects = m.connects.load();
  s.connection_losses = m.connection_losses.load();
  return s;
}

std::string paho_transport::last_error_message() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->last_error;
}

bool paho_transport::topic_matches(std::string_view filter, std::string_view topic) noexcept {
  filter = strip_share(filter);
  if (filter.empty() || topic.empty()) return false;
  if (topic.front() == '$' && (filter.front() == '+' || filter.front() == '#')) return false;
  std::size_t fi = 0;
  std::size_t ti = 0;
  while (true) {
    const auto fe = filter.find('/', fi);
    const auto flevel = filter.substr(fi, fe == std::string_view::npos ? std::string_view::npos
                                                                        : fe - fi);
    if (flevel == "#") return true;  // also matches the parent level ("a/#" matches "a")
    if (ti > topic.size()) return false;
    const auto te = topic.find('/', ti);
    const auto tlevel = topic.substr(ti, te == std::string_view::npos ? std::string_view::npos
                                                                       : te - ti);
    if (flevel != "+" && flevel != tlevel) return false;
    const bool f_last = fe == std::string_view::npos;
    const bool t_last = te == std::string_view::npos;
    if (f_last && t_last) return true;
    if (f_last) return false;
    if (t_last) {
      // Topic ended: only a trailing "/#" still matches.
      return filter.substr(fe + 1) == "#";
    }
    fi = fe + 1;
    ti = te + 1;
  }
}

}  // namespace edgecqrs::ports

// Broker-facing sub-commands over the Paho port: `consume` (the replica daemon), `sync`
// (queue sync events and publish until the outbox drains) and the live side of `decode`.
#ifdef EDGECQRS_HAVE_PAHO
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/ports/paho.hpp"
#include "io.hpp"

namespace edgecqrs::cli {
namespace {

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Sleeps up to `ms`, returning early when a signal arrived.
bool sleep_unless_signal(std::int64_t ms) {
  for (std::int64_t t = 0; t < ms && !g_signal.load(); t += 50)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return !g_signal.load();
}

// Several Paho clients seen by the replica as one transport: shared-subscription filters
// ($share/...) are subscribed on every client so the broker spreads the stream over them;
// other filters (direct, schema) and publishes (control requests) use the first client only,
// so nothing is delivered twice.
class fan_in final : public transport {
 public:
  explicit fan_in(std::vector<std::unique_ptr<ports::paho_transport>>& ts) : ts_(ts) {}
  std::error_code publish(std::string_view topic, const std::uint8_t* data, std::size_t size,
                          const publish_options& opts, publish_callback done) override {
    return ts_[0]->publish(topic, data, size, opts, std::move(done));
  }
  std::error_code subscribe(std::string_view filter, message_callback cb) override {
    if (filter.rfind("$share/", 0) != 0) return ts_[0]->subscribe(filter, std::move(cb));
    for (auto& t : ts_)
      if (auto ec = t->subscribe(filter, cb)) return ec;
    return {};
  }
  std::error_code unsubscribe(std::string_view filter) override {
    if (filter.rfind("$share/", 0) != 0) return ts_[0]->unsubscribe(filter);
    std::error_code first;
    for (auto& t : ts_)
      if (auto ec = t->unsubscribe(filter); ec && !first) first = ec;
    return first;
  }
  bool connected() const override { return ts_[0]->connected(); }
  std::size_t max_in_flight() const override { return ts_[0]->max_in_flight(); }

 private:
  std::vector<std::unique_ptr<ports::paho_transport>>& ts_;
};

bool read_password_file(const char* cmd, const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    errorf(cmd, "broker.password_file '%s': cannot read", path.c_str());
    return false;
  }
  std::getline(f, out);
  if (!out.empty() && out.back() == '\r') out.pop_back();
  return true;
}

ports::paho_config paho_from(const broker_config& b, const std::string& client_id) {
  ports::paho_config p;
  p.server_uri = b.url;
  p.client_id = client_id;
  p.mqtt_version = b.mqtt_version == 5 ? 5 : 4;
  p.keep_alive = std::chrono::seconds(b.keepalive_s);
  p.username = b.username;
  p.password = b.password;
  if (b.tls.enabled) {
    p.tls.ca_file = b.tls.ca_file;
    p.tls.cert_file = b.tls.cert_file;
    p.tls.key_file = b.tls.key_file;
    p.tls.verify_hostname = b.tls.verify_hostname;
  }
  return p;
}

// Connects, retrying with backoff until it works or a signal arrives. Bad credentials, TLS
// and configuration errors are not retried: a restart will not fix them.
bool connect(const char* cmd, ports::paho_transport& t, const std::string& uri, bool quiet) {
  std::int64_t backoff = 1000;
  for (;;) {
    std::error_code ec = t.start();
    if (!ec) return true;
    std::string detail = t.last_error_message();
    if (ec == make_error_code(errc::auth_failed) || ec == make_error_code(errc::tls_failed) ||
        ec == make_error_code(errc::bad_config)) {
      errorf(cmd, "%s: %s%s%s", uri.c_str(), ec.message().c_str(), detail.empty() ? "" : ": ",
             detail.c_str());
      return false;
    }
    if (!quiet)
      errorf(cmd, "%s: %s; retrying in %lld ms", uri.c_str(), ec.message().c_str(),
             (long long)backoff);
    if (!sleep_unless_signal(backoff)) return false;
    backoff = std::min<std::int64_t>(backoff * 2, 30000);
  }
}

// ------------------------------------------------------------------ consume

int run_consume(const std::string& config, const std::string& db, const run_state& st) {
  const char* cmd = "consume";
  consume_config cfg;
  if (!load_config(cmd, config, cfg)) return 2;
  if (!cfg.broker.password_file.empty() &&
      !read_password_file(cmd, cfg.broker.password_file, cfg.broker.password))
    return 2;
  install_signals();
  std::unique_ptr<replica> rep;
  if (!open_replica(cmd, cfg, db, rep)) return 2;
  const std::string base_id = cfg.broker.client_id.empty() ? cfg.name : cfg.broker.client_id;
  std::vector<std::unique_ptr<ports::paho_transport>> ts;
  for (int i = 0; i < cfg.workers; ++i)
    ts.push_back(std::make_unique<ports::paho_transport>(
        paho_from(cfg.broker, cfg.workers > 1 ? base_id + "-" + std::to_string(i + 1) : base_id)));
  fan_in fan(ts);
  // Subscriptions are restored by each client on (re)connect; attach before connecting so the
  // first connection already carries them.
  if (auto ec = rep->attach(fan)) {
    errorf(cmd, "subscribe: %s", ec.message().c_str());
    return 1;
  }
  for (auto& t : ts)
    if (!connect(cmd, *t, cfg.broker.url, st.quiet)) {
      for (auto& u : ts) u->stop();
      return g_signal.load() ? 0 : 1;
    }
  if (!st.quiet)
    std::fprintf(stderr,
                 "edgecqrs consume: replica '%s' on %s, %zu stream(s), %d worker(s), database %s\n",
                 printable(cfg.name).c_str(), printable(cfg.broker.url).c_str(), cfg.tables.size(),
                 cfg.workers, printable(db.empty() ? cfg.database : db).c_str());
  int rc = 0;
  while (!g_signal.load()) {
    if (auto ec = rep->poll()) {
      errorf(cmd, "replica: %s", ec.message().c_str());
      rc = 1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // Clean shutdown: disconnect every client first. A message being applied finishes its commit
  // under the replica's lock; one not yet acknowledged is redelivered by the broker to the
  // persistent session on restart (a duplicate version is skipped). Subscriptions stay in the
  // session (no unsubscribe), so nothing published meanwhile is lost.
  for (auto& t : ts) t->stop();
  replica_stats s = rep->stats();
  rep.reset();
  if (!st.quiet)
    std::fprintf(
        stderr,
        "edgecqrs consume: stopped (%s): %llu messages, %llu events applied, %llu stale, %llu "
        "duplicates, %llu dead letters\n",
        g_signal.load() == SIGTERM  ? "SIGTERM"
        : g_signal.load() == SIGINT ? "SIGINT"
                                    : "error",
        (unsigned long long)s.messages, (unsigned long long)s.events_applied,
        (unsigned long long)s.skipped_stale, (unsigned long long)s.duplicates,
        (unsigned long long)s.dead_letters);
  if (!st.quiet && s.resyncs_completed)
    std::fprintf(stderr,
                 "edgecqrs consume: %llu re-syncs: %llu rows overwritten, %llu tombstones "
                 "cleared, %llu rows removed\n",
                 (unsigned long long)s.resyncs_completed,
                 (unsigned long long)s.rows_overwritten_by_resync,
                 (unsigned long long)s.tombstones_cleared_by_resync,
                 (unsigned long long)s.rows_removed_by_resync);
  return rc;
}

// ------------------------------------------------------------------ sync

struct sync_opts {
  master_target target;
  std::string where, to, broker, username, password_file, client_id;
  std::vector<std::string> params;
  int mqtt_version = 5;
  std::int64_t timeout_s = 300;
};

int run_sync(const sync_opts& o, const run_state& st) {
  const char* cmd = "sync";
  install_signals();
  std::unique_ptr<master> m;
  if (!open_master(cmd, o.target, m)) return 2;
  std::vector<sql_param> params;
  for (const auto& p : o.params) params.push_back(parse_param(p));
  std::size_t n = 0;
  if (auto ec = m->sync(o.target.cqrs_id, o.where, params, o.to, &n)) {
    std::string d = m->last_error_message();
    errorf(cmd, "%s: %s%s%s", o.target.cqrs_id.c_str(), ec.message().c_str(), d.empty() ? "" : ": ",
           d.c_str());
    return ec == make_error_code(errc::invalid_argument) ? 2 : 1;
  }
  if (!st.quiet)
    std::fprintf(stderr, "edgecqrs sync: %zu rows of '%s' queued as sync events%s%s\n", n,
                 printable(o.target.cqrs_id).c_str(), o.to.empty() ? "" : " to replica ",
                 printable(o.to).c_str());
  if (o.broker.empty()) return 0;  // the application's publisher sends them
  broker_config b;
  b.url = o.broker;
  b.mqtt_version = o.mqtt_version;
  b.username = o.username;
  if (!o.password_file.empty() && !read_password_file(cmd, o.password_file, b.password)) return 2;
  ports::paho_config pc = paho_from(
      b, o.client_id.empty() ? "edgecqrs-sync-" + std::to_string(::getpid()) : o.client_id);
  pc.persistent_session = false;
  ports::paho_transport t(pc);
  if (!connect(cmd, t, o.broker, st.quiet)) return g_signal.load() ? 130 : 1;
  m->set_transport(&t);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.timeout_s);
  progress prog("edgecqrs sync: messages published", st.quiet);
  int rc = 0;
  for (;;) {
    if (auto ec = m->poll()) {
      errorf(cmd, "publish: %s", ec.message().c_str());
      rc = 1;
      break;
    }
    master_stats s = m->stats();
    prog.update(s.messages_published);
    if (s.records_pending == 0 && s.in_flight == 0) break;
    if (g_signal.load() || std::chrono::steady_clock::now() > deadline) {
      errorf(cmd,
             "%s with %llu outbox records unpublished (they stay queued and are sent by the "
             "next publisher)",
             g_signal.load() ? "interrupted" : "timed out", (unsigned long long)s.records_pending);
      rc = 1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  prog.done();
  m->set_transport(nullptr);
  t.stop();
  if (!rc && !st.quiet)
    std::fprintf(stderr, "edgecqrs sync: outbox drained (%llu messages published)\n",
                 (unsigned long long)m->stats().messages_published);
  return rc;
}

}  // namespace

// ------------------------------------------------------------------ decode --subscribe

int decode_subscribe(const std::string& url, const std::string& topic, std::uint64_t count,
                     bool quiet) {
  const char* cmd = "decode";
  install_signals();
  ports::paho_config pc;
  pc.server_uri = url;
  pc.client_id = "edgecqrs-decode-" + std::to_string(::getpid());
  pc.persistent_session = false;
  pc.mqtt_version = 5;
  ports::paho_transport t(pc);
  std::mutex mu;
  std::map<std::string, schema> schemas;  // by CQRS_ID, from retained schema messages
  std::atomic<std::uint64_t> printed{0};
  auto cb = [&](const incoming_message& in) {
    std::lock_guard<std::mutex> lk(mu);
    std::string line;
    message m;
    schema s;
    control_request c;
    std::string id(in.topic.substr(in.topic.rfind('/') + 1));
    if (!decode_message(in.data, in.size, m)) {
      auto it = schemas.find(id);
      const schema* sp =
          it != schemas.end() && it->second.schema_tag == m.schema_tag ? &it->second : nullptr;
      line = to_json(m, sp);
    } else if (!decode_schema(in.data, in.size, s)) {
      line = nlohmann::json{{"schema",
                             {{"cqrs_id", s.cqrs_id},
                              {"schema_tag", s.schema_tag},
                              {"columns", s.columns.size()}}}}
                 .dump();
      schemas[s.cqrs_id] = std::move(s);
    } else if (!decode_control(in.data, in.size, c)) {
      line = nlohmann::json{{"control",
                             {{"op", int(c.op)},
                              {"replica", c.replica},
                              {"from_seq", c.from_seq},
                              {"to_seq", c.to_seq}}}}
                 .dump();
    } else {
      errorf(cmd, "%.*s: %zu bytes: not an edgecqrs message", int(in.topic.size()), in.topic.data(),
             in.size);
      return;
    }
    std::printf("{\"topic\":%s,\"message\":%s}\n",
                nlohmann::json(std::string(in.topic)).dump().c_str(), line.c_str());
    std::fflush(stdout);
    ++printed;
  };
  if (auto ec = t.subscribe(topic, cb)) {
    errorf(cmd, "subscribe '%s': %s", topic.c_str(), ec.message().c_str());
    return 2;
  }
  if (!connect(cmd, t, url, quiet)) return g_signal.load() ? 0 : 1;
  while (!g_signal.load() && (!count || printed.load() < count))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  t.stop();
  return 0;
}

void register_consume(CLI::App& app, run_state& st) {
  auto* c = app.add_subcommand(
      "consume", "Run a replica daemon from a config file (SIGINT/SIGTERM: clean stop)");
  auto config = std::make_shared<std::string>();
  auto db = std::make_shared<std::string>();
  c->add_option("--config", *config, "Replica config (TOML), see examples/replica.toml")
      ->required();
  c->add_option("--db", *db, "Replica database (default: the config's replica.database)");
  c->callback([&st, config, db] { st.status = run_consume(*config, *db, st); });

  auto* s = app.add_subcommand(
      "sync", "Queue sync events for rows of a master table (and publish them with --broker)");
  auto o = std::make_shared<sync_opts>();
  s->add_option("--db", o->target.db_path, "Master SQLite database")->required();
  s->add_option("-c,--cqrs-id", o->target.cqrs_id, "Stream")->required();
  s->add_option("--table", o->target.table, "Master table of the stream (default: the CQRS_ID)");
  s->add_option("--columns", o->target.columns,
                "Columns sent (default: all), as the master registers them")
      ->delimiter(',');
  s->add_option("-w,--where", o->where, "SQL expression selecting the rows (default: all)");
  s->add_option("-p,--param", o->params,
                "Bound value of ?1, ?2... in --where (repeat; text:X forces text)");
  s->add_option("--to", o->to, "Send to this replica only (its direct topic)");
  s->add_option("--broker", o->broker,
                "Publish now through this broker (mqtt://host:port) until the outbox drains");
  s->add_option("--mqtt-version", o->mqtt_version, "3 or 5")
      ->check(CLI::IsMember({3, 5}))
      ->capture_default_str();
  s->add_option("--username", o->username, "Broker user");
  s->add_option("--password-file", o->password_file, "File holding the broker password");
  s->add_option("--client-id", o->client_id, "MQTT client id (default: edgecqrs-sync-<pid>)");
  s->add_option("--timeout", o->timeout_s, "Seconds to wait for the outbox to drain")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  s->callback([&st, o] { st.status = run_sync(*o, st); });
}

}  // namespace edgecqrs::cli
#endif  // EDGECQRS_HAVE_PAHO

// A private mosquitto broker for tests: own config, free 127.0.0.1 port, started and stopped by
// PID, restartable on the same port; optional persistence, TLS (test CA made with openssl),
// password file and ACL file; tuned (no queue/in-flight limits) or stock limits.
#pragma once

#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace edgecqrs::test {

struct broker_options {
  // Tuned: max_queued_messages 0 and max_inflight_messages 0 (unlimited), as docs/brokers.md
  // recommends. Off: mosquitto's stock limits (1000 queued, 20 in flight), which drop messages.
  bool tuned = true;
  bool persistence = false;
  bool tls = false;                  // the listener speaks TLS; certificates made at start
  bool require_client_cert = false;  // with tls: clients must present a cert signed by the CA
  std::string server_cert_san = "IP:127.0.0.1,DNS:localhost";  // the server cert's names
  std::vector<std::pair<std::string, std::string>> users;  // non-empty: password file, no anonymous
  std::string acl;                   // non-empty: ACL file content
};

class mosquitto_broker {
 public:
  explicit mosquitto_broker(broker_options opts = {});
  ~mosquitto_broker();  // stops the broker (SIGTERM, then SIGKILL) and removes its directory
  mosquitto_broker(const mosquitto_broker&) = delete;
  mosquitto_broker& operator=(const mosquitto_broker&) = delete;

  // Starts on a free port (the first time) or the same port (later); waits until it accepts
  // TCP connections. Returns false with a reason in error() on failure.
  bool start();
  // SIGTERM (mosquitto saves its persistence file), then SIGKILL after 5 s; waits for exit.
  void stop();
  // SIGKILL: a crash, no persistence save.
  void kill();
  // stop() then start() on the same port, with persistence switched as given.
  bool restart(bool persistence);
  bool restart() { return restart(opts_.persistence); }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  // "tcp://127.0.0.1:<port>" or "ssl://127.0.0.1:<port>".
  std::string uri() const;
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  std::string log() const;  // the broker's log so far

  // TLS material (valid after start() with tls): the CA that signed the server certificate
  // (which names 127.0.0.1 and localhost), a client certificate/key signed by it, and a second
  // CA that signed nothing here (for "wrong CA" tests).
  std::string ca_file() const { return dir_ + "/ca.crt"; }
  std::string client_cert_file() const { return dir_ + "/client.crt"; }
  std::string client_key_file() const { return dir_ + "/client.key"; }
  std::string other_ca_file() const { return dir_ + "/other-ca.crt"; }

 private:
  bool prepare_files();
  bool make_certificates();
  bool write_config();
  bool launch();

  broker_options opts_;
  std::string dir_;
  std::string error_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool prepared_ = false;
};

// Runs a shell command, returning true on exit status 0 (output to `log_file` if given).
bool run_command(const std::string& cmd, const std::string& log_file = {});

// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();

}  // namespace edgecqrs::test

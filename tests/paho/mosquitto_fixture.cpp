// mosquitto_broker: see mosquitto_fixture.hpp.
#include "mosquitto_fixture.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <pwd.h>
#include <sstream>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace edgecqrs::test {
namespace {

using namespace std::chrono_literals;

std::string make_temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/edgecqrs-mosq-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return {};
  return buf.data();
}

bool write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

bool accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// Waits up to `limit` for `pid` to exit; true when it has been reaped.
bool wait_exit(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

bool run_command(const std::string& cmd, const std::string& log_file) {
  const std::string full = log_file.empty() ? cmd + " >/dev/null 2>&1"
                                            : cmd + " >>" + shell_quote(log_file) + " 2>&1";
  const int rc = std::system(full.c_str());
  return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

mosquitto_broker::mosquitto_broker(broker_options opts) : opts_(std::move(opts)) {}

mosquitto_broker::~mosquitto_broker() {
  stop();
  if (!dir_.empty() && std::getenv("EDGECQRS_KEEP_BROKER_DIR") == nullptr) {
    run_command("rm -rf " + shell_quote(dir_));
  }
}

std::string mosquitto_broker::uri() const {
  return std::string(opts_.tls ? "ssl" : "tcp") + "://127.0.0.1:" + std::to_string(port_);
}

std::string mosquitto_broker::log() const {
  std::ifstream in(dir_ + "/mosquitto.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool mosquitto_broker::make_certificates() {
  const std::string d = shell_quote(dir_);
  const std::string log = dir_ + "/openssl.log";
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  if (!write_text(dir_ + "/server.ext",
                  "subjectAltName=" + opts_.server_cert_san + "\n"
                  "extendedKeyUsage=serverAuth\n") ||
      !write_text(dir_ + "/client.ext", "extendedKeyUsage=clientAuth\n")) {
    return false;
  }
  const std::string cmds[] = {
      "cd " + d + " && openssl req -x509 " + ec +
          " -keyout ca.key -out ca.crt -days 2 -subj /CN=edgecqrs-test-ca",
      "cd " + d + " && openssl req -x509 " + ec +
          " -keyout other-ca.key -out other-ca.crt -days 2 -subj /CN=edgecqrs-other-ca",
      "cd " + d + " && openssl req " + ec +
          " -keyout server.key -out server.csr -subj /CN=edgecqrs-test-server",
      "cd " + d + " && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key" +
          " -CAcreateserial -out server.crt -days 2 -extfile server.ext",
      "cd " + d + " && openssl req " + ec +
          " -keyout client.key -out client.csr -subj /CN=edgecqrs-test-client",
      "cd " + d + " && openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key" +
          " -CAcreateserial -out client.crt -days 2 -extfile client.ext",
  };
  for (const auto& c : cmds) {
    if (!run_command(c, log)) {
      error_ = "openssl failed: " + c;
      return false;
    }
  }
  return true;
}

bool mosquitto_broker::prepare_files() {
  if (prepared_) return true;
  dir_ = make_temp_dir();
  if (dir_.empty()) {
    error_ = "cannot create a temporary directory";
    return false;
  }
  if (opts_.tls && !make_certificates()) return false;
  if (!opts_.users.empty()) {
    bool first = true;
    for (const auto& [user, pass] : opts_.users) {
      const std::string cmd = std::string("mosquitto_passwd ") + (first ? "-c " : "") + "-b " +
                              shell_quote(dir_ + "/passwd") + " " + shell_quote(user) + " " +
                              shell_quote(pass);
      if (!run_command(cmd, dir_ + "/passwd.log")) {
        error_ = "mosquitto_passwd failed";
        return false;
      }
      first = false;
    }
  }
  if (!opts_.acl.empty() && !write_text(dir_ + "/acl", opts_.acl)) {
    error_ = "cannot write the ACL file";
    return false;
  }
  prepared_ = true;
  return true;
}

bool mosquitto_broker::write_config() {
  std::ostringstream c;
  // mosquitto started as root drops to user "mosquitto", which could not read our files.
  if (const passwd* pw = ::getpwuid(::geteuid()); pw != nullptr) c << "user " << pw->pw_name << "\n";
  c << "per_listener_settings false\n";
  c << "listener " << port_ << " 127.0.0.1\n";
  c << "allow_anonymous " << (opts_.users.empty() ? "true" : "false") << "\n";
  if (!opts_.users.empty()) c << "password_file " << dir_ << "/passwd\n";
  if (!opts_.acl.empty()) c << "acl_file " << dir_ << "/acl\n";
  if (opts_.tls) {
    c << "cafile " << dir_ << "/ca.crt\n";
    c << "certfile " << dir_ << "/server.crt\n";
    c << "keyfile " << dir_ << "/server.key\n";
    c << "require_certificate " << (opts_.require_client_cert ? "true" : "false") << "\n";
  }
  if (opts_.tuned) {
    c << "max_queued_messages 0\n";
    c << "max_inflight_messages 0\n";
  }
  c << "persistence " << (opts_.persistence ? "true" : "false") << "\n";
  c << "persistence_location " << dir_ << "/\n";
  c << "autosave_interval 1800\n";
  c << "log_dest file " << dir_ << "/mosquitto.log\n";
  c << "log_type error\nlog_type warning\nlog_type notice\n";
  c << "connection_messages true\n";
  if (!write_text(dir_ + "/mosquitto.conf", c.str())) {
    error_ = "cannot write mosquitto.conf";
    return false;
  }
  return true;
}

bool mosquitto_broker::launch() {
  const std::string conf = dir_ + "/mosquitto.conf";
  const std::string out = dir_ + "/stdout.log";
  const pid_t pid = ::fork();
  if (pid < 0) {
    error_ = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  if (pid == 0) {
    const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    ::execlp("mosquitto", "mosquitto", "-c", conf.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      error_ = "mosquitto exited at start: " + log();
      return false;
    }
    if (accepts(port_)) return true;
    std::this_thread::sleep_for(10ms);
  }
  error_ = "mosquitto did not accept connections within 10 s";
  kill();
  return false;
}

bool mosquitto_broker::start() {
  if (running()) return true;
  if (!prepare_files()) return false;
  const bool first = port_ == 0;
  // A fresh port can be taken between free_port() and mosquitto's bind: try a few.
  for (int attempt = 0; attempt < (first ? 5 : 1); ++attempt) {
    if (first) port_ = free_port();
    if (port_ == 0) {
      error_ = "no free port";
      return false;
    }
    if (!write_config()) return false;
    if (launch()) return true;
  }
  return false;
}

void mosquitto_broker::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!wait_exit(pid_, 5000ms)) {
    ::kill(pid_, SIGKILL);
    wait_exit(pid_, 5000ms);
  }
  pid_ = -1;
}

void mosquitto_broker::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  wait_exit(pid_, 5000ms);
  pid_ = -1;
}

bool mosquitto_broker::restart(bool persistence) {
  stop();
  opts_.persistence = persistence;
  // The old listening socket may linger briefly; mosquitto sets SO_REUSEADDR, so retry a bit.
  for (int attempt = 0; attempt < 20; ++attempt) {
    if (start()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

}  // namespace edgecqrs::test

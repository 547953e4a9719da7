#include "fault_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace rel {

fault_proxy::fault_proxy(int upstream_port) : upstream_(upstream_port) {}

fault_proxy::~fault_proxy() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  for (auto& p : pairs_) close_pair(p, false);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

bool fault_proxy::start() {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return false;
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
  if (::listen(listen_fd_, 16) != 0) return false;
  socklen_t len = sizeof a;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { loop(); });
  return true;
}

void fault_proxy::cut() { cut_req_.fetch_add(1); }
void fault_proxy::half_close() { half_req_.fetch_add(1); }

void fault_proxy::close_pair(pair& p, bool rst) {
  for (int* fd : {&p.client, &p.server}) {
    if (*fd < 0) continue;
    if (rst) {
      linger l{1, 0};
      ::setsockopt(*fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    ::close(*fd);
    *fd = -1;
  }
}

namespace {
int connect_upstream(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Copies what is readable on `from` to `to` (blocking write on loopback). false: EOF or error.
bool pump(int from, int to) {
  char buf[16384];
  const ssize_t n = ::recv(from, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  ssize_t off = 0;
  while (off < n) {
    const ssize_t w = ::send(to, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
    if (w <= 0) return false;
    off += w;
  }
  return true;
}
}  // namespace

void fault_proxy::loop() {
  int cuts_seen = 0;
  int halves_seen = 0;
  while (!stop_.load()) {
    if (const int c = cut_req_.load(); c != cuts_seen) {
      cuts_seen = c;
      for (auto& p : pairs_) close_pair(p, true);
      pairs_.clear();
    }
    if (const int h = half_req_.load(); h != halves_seen) {
      halves_seen = h;
      for (auto& p : pairs_) {
        if (p.client >= 0) ::shutdown(p.client, SHUT_WR);
        if (p.server >= 0) ::shutdown(p.server, SHUT_WR);
        p.client_eof = p.server_eof = true;  // nothing more is forwarded either way
      }
    }
    std::vector<pollfd> fds;
    fds.push_back({listen_fd_, POLLIN, 0});
    const bool stalled = stalled_.load();
    for (auto& p : pairs_) {
      fds.push_back({p.client, static_cast<short>(stalled || p.client_eof ? 0 : POLLIN), 0});
      fds.push_back({p.server, static_cast<short>(stalled || p.server_eof ? 0 : POLLIN), 0});
    }
    if (::poll(fds.data(), fds.size(), 20) < 0) continue;
    if ((fds[0].revents & POLLIN) != 0) {
      const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        accepted_.fetch_add(1);
        const int s = refusing_.load() ? -1 : connect_upstream(upstream_);
        if (s < 0) {
          ::close(c);
        } else {
          pairs_.push_back({c, s, false, false});
        }
      }
    }
    std::vector<pair> keep;
    for (std::size_t i = 0; i < pairs_.size(); ++i) {
      auto& p = pairs_[i];
      const short cre = fds[1 + 2 * i].revents;
      const short sre = fds[2 + 2 * i].revents;
      bool ok = true;
      if ((cre & (POLLIN | POLLHUP | POLLERR)) != 0 && !p.client_eof) ok = pump(p.client, p.server);
      if (ok && (sre & (POLLIN | POLLHUP | POLLERR)) != 0 && !p.server_eof) {
        ok = pump(p.server, p.client);
      }
      // A half-closed pair is dropped once either end closes (the peer reacts to our FIN).
      if (ok && p.client_eof && ((cre | sre) & (POLLHUP | POLLERR)) != 0) ok = false;
      if (ok) {
        keep.push_back(p);
      } else {
        close_pair(p, false);
      }
    }
    pairs_.swap(keep);
  }
}

}  // namespace rel

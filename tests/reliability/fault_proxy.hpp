// A fault-injecting TCP proxy on 127.0.0.1 between MQTT clients and the broker: passes bytes
// both ways, and on request stalls (stops forwarding, keeps sockets open), cuts (RST every
// connection) or half-closes (shutdown(SHUT_WR) towards both ends) the connections.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rel {

class fault_proxy {
 public:
  explicit fault_proxy(int upstream_port);
  ~fault_proxy();  // stops the thread, closes every socket
  fault_proxy(const fault_proxy&) = delete;
  fault_proxy& operator=(const fault_proxy&) = delete;

  bool start();  // listens on a free 127.0.0.1 port
  int port() const { return port_; }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

  void stall(bool on) { stalled_.store(on); }
  void cut();         // RST every open connection
  void half_close();  // shutdown(SHUT_WR) on both sides of every connection
  void refuse(bool on) { refusing_.store(on); }  // accept and close at once new connections
  unsigned long long connections() const { return accepted_.load(); }

 private:
  struct pair {
    int client = -1;
    int server = -1;
    bool client_eof = false;
    bool server_eof = false;
  };
  void loop();
  static void close_pair(pair& p, bool rst);

  int upstream_;
  int port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stalled_{false};
  std::atomic<bool> refusing_{false};
  std::atomic<int> cut_req_{0};
  std::atomic<int> half_req_{0};
  std::atomic<unsigned long long> accepted_{0};
  std::vector<pair> pairs_;  // owned by the thread
  std::thread thread_;
};

}  // namespace rel

// See host_support.hpp.
#include "host_support.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace example {

child::~child() {
  if (pid_ > 0) terminate();
}

bool child::spawn(const std::vector<std::string>& argv, const std::string& log_file) {
  if (argv.empty() || pid_ > 0) return false;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    const int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  pid_ = pid;
  status_ = -1;
  return true;
}

bool child::running() { return pid_ > 0 && wait(std::chrono::milliseconds(0)) == -1; }

int child::wait(std::chrono::milliseconds limit) {
  if (pid_ <= 0) return status_;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (r < 0 && errno != EINTR) {
      pid_ = -1;
      return status_;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int child::terminate(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return status_;
  ::kill(pid_, SIGTERM);
  if (wait(grace) != -1) return status_;
  ::kill(pid_, SIGKILL);
  return wait(std::chrono::seconds(10));
}

std::string self_dir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  std::string p(buf, static_cast<std::size_t>(n));
  const auto slash = p.rfind('/');
  return slash == std::string::npos ? std::string() : p.substr(0, slash);
}

bool wait_for_text(const std::string& path, const std::string& text,
                   std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    if (ss.str().find(text) != std::string::npos) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::map<std::string, std::string> read_summary(const std::string& path) {
  std::map<std::string, std::string> kv;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

std::vector<std::string> query_rows(const std::string& path, const std::string& sql,
                                    std::string* error) {
  std::vector<std::string> rows;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    if (error != nullptr) *error = sqlite3_errmsg(db);
    sqlite3_close(db);
    return rows;
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    if (error != nullptr) *error = sqlite3_errmsg(db);
    sqlite3_close(db);
    return rows;
  }
  int rc = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    std::string line;
    for (int c = 0; c < sqlite3_column_count(st); ++c) {
      if (c != 0) line += '|';
      const auto* t = sqlite3_column_text(st, c);
      line += t == nullptr ? "NULL" : reinterpret_cast<const char*>(t);
    }
    rows.push_back(std::move(line));
  }
  if (rc != SQLITE_DONE && error != nullptr) *error = sqlite3_errmsg(db);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rows;
}

bool databases_agree(const std::string& master_db, const std::string& replica_db,
                     std::string* why) {
  const char* const queries[] = {
      "SELECT id, name, location FROM device ORDER BY id",
      "SELECT id, device_id, value, taken_ms FROM reading ORDER BY id",
  };
  for (const char* q : queries) {
    std::string err_m, err_r;
    const auto m = query_rows(master_db, q, &err_m);
    const auto r = query_rows(replica_db, q, &err_r);
    if (!err_m.empty() || !err_r.empty()) {
      if (why != nullptr) *why = "query failed: " + err_m + err_r;
      return false;
    }
    if (m != r) {
      if (why != nullptr) {
        std::ostringstream os;
        os << q << ": master " << m.size() << " rows, replica " << r.size() << " rows";
        const auto mm = std::mismatch(m.begin(), m.end(), r.begin(), r.end());
        if (mm.first != m.end()) os << "; first master row not matched: " << *mm.first;
        if (mm.second != r.end()) os << "; first replica row not matched: " << *mm.second;
        *why = os.str();
      }
      return false;
    }
  }
  return true;
}

std::vector<std::int64_t> latencies_ms(const std::string& replica_db) {
  std::vector<std::int64_t> v;
  for (const auto& row : query_rows(replica_db,
                                    "SELECT applied_ms - taken_ms FROM reading "
                                    "WHERE applied_ms IS NOT NULL")) {
    v.push_back(std::atoll(row.c_str()));
  }
  std::sort(v.begin(), v.end());
  return v;
}

std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double pos = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto idx = static_cast<std::size_t>(pos + 0.5);
  return sorted[std::min(idx, sorted.size() - 1)];
}

}  // namespace example

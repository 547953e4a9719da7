// Process control and database comparison for the host example's driver and the integration
// tests: start the example programs, stop them by PID, read their summaries, compare databases.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <sys/types.h>
#include <vector>

namespace example {

// A child process started with fork/exec; stopped by its PID only.
class child {
 public:
  child() = default;
  ~child();  // terminate()s a child still running
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  // Starts argv[0] with stdout/stderr appended to `log_file`.
  bool spawn(const std::vector<std::string>& argv, const std::string& log_file);
  bool running();
  // Waits up to `limit` for exit; returns the exit status (128+signal when killed), -1 on
  // timeout (the child keeps running).
  int wait(std::chrono::milliseconds limit);
  // SIGTERM, then SIGKILL after `grace`; returns the exit status.
  int terminate(std::chrono::milliseconds grace = std::chrono::seconds(10));
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

// The directory of the running executable ("" when unknown).
std::string self_dir();

// Waits up to `limit` until the file at `path` contains `text`.
bool wait_for_text(const std::string& path, const std::string& text,
                   std::chrono::milliseconds limit);

// key=value lines written by the example programs (empty map when the file is missing).
std::map<std::string, std::string> read_summary(const std::string& path);

// Rows of `sql` from the database at `path`, one text line per row ("" on error, with `error`).
std::vector<std::string> query_rows(const std::string& path, const std::string& sql,
                                    std::string* error = nullptr);

// Whether the replica's device and reading tables hold exactly the master's rows; `why`
// describes the first difference.
bool databases_agree(const std::string& master_db, const std::string& replica_db,
                     std::string* why = nullptr);

// Write-to-applied latencies (ms) of the replica's readings, sorted.
std::vector<std::int64_t> latencies_ms(const std::string& replica_db);

// The p-th percentile (0..100) of sorted values (0 when empty).
std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p);

}  // namespace example

// Shared test helpers: temporary directories, paths to test data, seeded randomness.
#pragma once

#include <cstdint>
#include <string>

#include "edgecqrs/master.hpp"
#include "edgecqrs/replica.hpp"

namespace edgecqrs::test {

// A fresh directory under the build tree (or $TMPDIR), removed on destruction.
class temp_dir {
 public:
  explicit temp_dir(const std::string& tag = "t");
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// tests/<rel> in the source tree.
std::string source_path(const std::string& rel);

// Reads a whole file (empty string on failure).
std::string read_file(const std::string& path);

// Seed for randomized tests: $EDGECQRS_SEED if set, else `fallback`.
std::uint64_t seed_or(std::uint64_t fallback);

// One MQTT topic matching case: does `filter` match `topic`? (loopback and paho tests).
struct topic_case {
  const char* filter;
  const char* topic;
  bool match;
};

// Opens the database file `path`, runs `sql` on it and closes it; fails the test on error.
void exec_file(const std::string& path, const std::string& sql);

// Master side: `table` published as the stream of the same name.
table_options stream_of(const std::string& table);

// Replica side: a stream applied into the local table `local_table`.
replica_table_options into_table(const std::string& local_table);

}  // namespace edgecqrs::test

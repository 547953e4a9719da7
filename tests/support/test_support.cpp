#include "test_support.hpp"

#include <doctest/doctest.h>
#include <ftw.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace edgecqrs::test {

namespace {
int rm_entry(const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }
}  // namespace

temp_dir::temp_dir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/edgecqrs-" + tag + "-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  if (!std::getenv("EDGECQRS_KEEP_TMP")) ::nftw(path_.c_str(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

std::string source_path(const std::string& rel) {
  return std::string(EDGECQRS_TEST_SOURCE_DIR) + "/" + rel;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::uint64_t seed_or(std::uint64_t fallback) {
  const char* s = std::getenv("EDGECQRS_SEED");
  return s && *s ? std::strtoull(s, nullptr, 0) : fallback;
}

void exec_file(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  const std::string err = sqlite3_errmsg(db);
  sqlite3_close(db);
  REQUIRE_MESSAGE(rc == SQLITE_OK, path << ": " << sql << ": " << err);
}

table_options stream_of(const std::string& table) {
  table_options o;
  o.table = table;
  o.cqrs_id = table;
  return o;
}

replica_table_options into_table(const std::string& local_table) {
  replica_table_options t;
  t.local_table = local_table;
  return t;
}

}  // namespace edgecqrs::test

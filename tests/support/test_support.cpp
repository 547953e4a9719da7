#include "test_support.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <ftw.h>
#include <unistd.h>

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

std::string source_path(const std::string& rel) { return std::string(EDGECQRS_TEST_SOURCE_DIR) + "/" + rel; }

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

}  // namespace edgecqrs::test

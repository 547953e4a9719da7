// Small I/O helpers shared by the sub-commands: whole-file reads ('-' = stdin) and a progress
// line on stderr that is shown only on a terminal and without --quiet.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

namespace edgecqrs::cli {

inline std::error_code read_all(const std::string& path, std::vector<std::uint8_t>& out) {
  out.clear();
  std::FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
  if (!f) return {errno, std::generic_category()};
  std::uint8_t buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  bool err = std::ferror(f);
  if (f != stdin) std::fclose(f);
  if (err) return {EIO, std::generic_category()};
  return {};
}

class progress {
 public:
  progress(const char* what, bool quiet) : what_(what), on_(!quiet && ::isatty(2)) {}
  ~progress() { done(); }
  void update(std::uint64_t n, std::uint64_t total = 0) {
    if (!on_ || (n - last_ < step_ && n != total)) return;
    last_ = n;
    if (total)
      std::fprintf(stderr, "\r%s: %llu / %llu (%d%%)", what_, (unsigned long long)n,
                   (unsigned long long)total, int(100.0 * n / total));
    else
      std::fprintf(stderr, "\r%s: %llu", what_, (unsigned long long)n);
    shown_ = true;
  }
  void done() {
    if (shown_) std::fputc('\n', stderr);
    shown_ = false;
  }

 private:
  const char* what_;
  bool on_;
  bool shown_ = false;
  std::uint64_t last_ = 0;
  std::uint64_t step_ = 1000;
};

}  // namespace edgecqrs::cli

// Corpus replay driver: runs LLVMFuzzerTestOneInput over every file of the given files or
// directories, so the fuzz target runs as an ordinary test without libFuzzer.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

static int run_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", p.c_str());
    return 1;
  }
  std::vector<std::uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(buf.data(), buf.size());
  return 0;
}

int main(int argc, char** argv) {
  std::size_t runs = 0;
  int errors = 0;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (const auto& entry : fs::directory_iterator(arg)) {
        if (!entry.is_regular_file()) continue;
        errors += run_file(entry.path());
        ++runs;
      }
    } else {
      errors += run_file(arg);
      ++runs;
    }
  }
  std::printf("replayed %zu inputs\n", runs);
  // An empty corpus would make the test assert nothing.
  return errors || runs == 0 ? 1 : 0;
}

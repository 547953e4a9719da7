// Durability: a writer killed with SIGKILL at random instants, then the database reopened:
// every committed row is in the outbox (nothing published here), nothing uncommitted is.
#include <doctest/doctest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <vector>
#include <thread>

#include "edgecqrs/codec.hpp"
#include "edgecqrs/master.hpp"
#include "master_fixture.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace edgecqrs;

namespace {

// Highest id the child reported as committed, read from its stdout pipe.
long read_reported(int fd, std::string buf) {
  long last = 0;
  char tmp[4096];
  ssize_t n;
  while ((n = ::read(fd, tmp, sizeof tmp)) > 0) buf.append(tmp, static_cast<std::size_t>(n));
  std::size_t pos = 0;
  while (true) {
    std::size_t nl = buf.find('\n', pos);
    if (nl == std::string::npos) break;
    last = std::stol(buf.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return last;
}

}  // namespace

TEST_CASE("kill -9 during a write loop loses nothing committed, keeps nothing uncommitted") {
  test::temp_dir dir("kill");
  std::string db_path = dir.file("master.db");
  std::uint64_t seed = test::seed_or(20261123);
  std::uint64_t s = seed;
  auto rnd = [&s] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  const int kills = 20;
  long next_id = 1, reported_total = 0, max_reported = 0;
  std::int64_t rows = 0;
  for (int k = 0; k < kills; ++k) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    std::string start = std::to_string(next_id);
    // Under a cross build the child is a foreign binary: start it through the emulator.
    std::vector<char*> args;
#ifdef EDGECQRS_TEST_EMULATOR
    for (const char* a : {EDGECQRS_TEST_EMULATOR}) args.push_back(const_cast<char*>(a));
#endif
    args.push_back(const_cast<char*>(EDGECQRS_KILL_CHILD));
    args.push_back(db_path.data());
    args.push_back(start.data());
    args.push_back(nullptr);
    pid_t pid = 0;
    REQUIRE(posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    // Random instant during the write loop: 0-40 ms after the child's first commit (the start
    // time varies a lot, e.g. under sanitizers).
    std::string head_line;
    char ch = 0;
    while (::read(fds[0], &ch, 1) == 1) {
      head_line += ch;
      if (ch == '\n') break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rnd() % 40000));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    long reported = read_reported(fds[0], head_line);
    ::close(fds[0]);
    INFO("child status " << status << (WIFEXITED(status) ? " exited " : " signalled ")
                         << (WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)));
    REQUIRE(WIFSIGNALED(status));
    if (reported) {
      reported_total += (reported - next_id + 1);
      max_reported = reported;
    }

    // Reopen and check: rows of the table == keys of the outbox events, seqs gap-free.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(db_path.c_str(), &db) == SQLITE_OK);
    std::set<std::int64_t> table_rows, event_rows;
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT id FROM row", -1, &q, nullptr) == SQLITE_OK) {
      while (sqlite3_step(q) == SQLITE_ROW) table_rows.insert(sqlite3_column_int64(q, 0));
    }
    sqlite3_finalize(q);
    q = nullptr;
    std::uint64_t expect_seq = 1;
    if (sqlite3_prepare_v2(db, "SELECT first_seq, n_events, body FROM edgecqrs_outbox WHERE kind=0 "
                           "ORDER BY first_seq", -1, &q, nullptr) == SQLITE_OK) {
      while (sqlite3_step(q) == SQLITE_ROW) {
        auto first = static_cast<std::uint64_t>(sqlite3_column_int64(q, 0));
        CHECK(first == expect_seq);
        std::vector<std::uint8_t> msg(64);
        std::size_t w = 0;
        REQUIRE_FALSE(encode_message_head(1, first, 1, false, msg.data(), msg.size(), w));
        msg.resize(w);
        auto* b = static_cast<const std::uint8_t*>(sqlite3_column_blob(q, 2));
        msg.insert(msg.end(), b, b + sqlite3_column_bytes(q, 2));
        message m;
        REQUIRE_FALSE(decode_message(msg.data(), msg.size(), m));
        CHECK(m.events.size() == static_cast<std::size_t>(sqlite3_column_int64(q, 1)));
        for (auto& e : m.events) {
          CHECK(e.kind == event_kind::save);
          CHECK(e.row_version == 1);
          event_rows.insert(e.values[0].as_integer());
        }
        expect_seq += m.events.size();
      }
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    CHECK(table_rows == event_rows);
    for (long id = 1; id <= max_reported; ++id) CHECK(table_rows.count(id) == 1);
    rows = static_cast<std::int64_t>(table_rows.size());
    next_id = table_rows.empty() ? 1 : *table_rows.rbegin() + 1;
  }
  MESSAGE("kill test: seed " << seed << ", kills " << kills << ", rows reported committed "
                             << reported_total << ", rows found " << rows
                             << " (all with their outbox events, none extra)");
  std::printf("kill test: kills %d, rows reported committed %ld, rows found %lld\n", kills,
              reported_total, static_cast<long long>(rows));
  CHECK(rows >= reported_total);
  CHECK(rows > 0);
}

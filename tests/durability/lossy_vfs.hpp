// A SQLite VFS that models what a power cut loses: every write stays in memory until its file
// is synced (xSync), so the real file holds exactly what is durable; unsynced writes are shared
// by every handle on the file, like the page cache. cut(part) is the power
// cut for the files whose path contains `part`: their unsynced writes are discarded and
// every later write, sync, truncate or delete of them is ignored, as if the process had died
// with the machine. restore() turns the power back on (close every connection of the cut files
// first, and remove their -shm file: a reboot loses shared memory).
//
// Registered as the default VFS while a lossy_vfs object lives, so a library that opens its
// own database (master::open) uses it too. Test code only; not thread-safe across objects
// (one at a time), but the file methods take a lock, so several threads may use connections.
#pragma once

#include <cstdint>
#include <string>

namespace edgecqrs::test {

class lossy_vfs {
 public:
  lossy_vfs();
  ~lossy_vfs();
  lossy_vfs(const lossy_vfs&) = delete;
  lossy_vfs& operator=(const lossy_vfs&) = delete;

  void cut(const std::string& path_part);  // cuts every file whose path contains path_part
  void restore();

  // Counters over every file this VFS opened.
  std::uint64_t syncs() const;           // xSync calls that made writes durable
  std::uint64_t bytes_lost() const;      // unsynced bytes discarded by cut()
};

}  // namespace edgecqrs::test

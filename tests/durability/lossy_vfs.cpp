#include "lossy_vfs.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace edgecqrs::test {
namespace {

struct global_state {
  std::mutex mu;
  sqlite3_vfs* real = nullptr;
  sqlite3_vfs vfs{};
  std::string cut_part;  // files whose path contains it are cut; empty: power is on
  std::uint64_t syncs = 0;
  std::uint64_t bytes_lost = 0;
};
global_state g;

// Unsynced state of one file, shared by every handle open on it (as the OS page cache is).
// The real file holds only what was synced (or written back at close while the power was on).
struct file_state {
  int handles = 0;
  std::map<sqlite3_int64, std::string> pending;  // offset -> bytes, non-overlapping
  bool truncated = false;                        // a truncate is pending
  sqlite3_int64 trunc_min = 0;   // real bytes at or after this offset are gone
  sqlite3_int64 trunc_size = 0;  // the size set by the last truncate
};
std::map<std::string, file_state> files;

struct lossy_file {
  sqlite3_file base;  // first: SQLite sees this
  sqlite3_file* real;
  std::string* path;
  file_state* st;
};

bool is_cut(const lossy_file* f) {
  return !g.cut_part.empty() && f->path->find(g.cut_part) != std::string::npos;
}
bool is_cut_path(const char* p) {
  return !g.cut_part.empty() && p && std::string(p).find(g.cut_part) != std::string::npos;
}

sqlite3_int64 logical_size(lossy_file* f, int& rc) {
  sqlite3_int64 real_size = 0;
  rc = f->real->pMethods->xFileSize(f->real, &real_size);
  sqlite3_int64 size = f->st->truncated ? f->st->trunc_size : real_size;
  if (!f->st->pending.empty()) {
    auto last = std::prev(f->st->pending.end());
    size = std::max<sqlite3_int64>(size, last->first + static_cast<sqlite3_int64>(last->second.size()));
  }
  return size;
}

void drop(lossy_file* f) {
  for (auto& p : f->st->pending) g.bytes_lost += p.second.size();
  f->st->pending.clear();
  f->st->truncated = false;
}

int flush(lossy_file* f) {
  int rc = SQLITE_OK;
  if (f->st->truncated) {
    rc = f->real->pMethods->xTruncate(f->real, f->st->trunc_min);
    if (rc == SQLITE_OK && f->st->trunc_size > f->st->trunc_min)
      rc = f->real->pMethods->xTruncate(f->real, f->st->trunc_size);
    if (rc != SQLITE_OK) return rc;
    f->st->truncated = false;
  }
  for (auto& p : f->st->pending) {
    rc = f->real->pMethods->xWrite(f->real, p.second.data(), static_cast<int>(p.second.size()),
                                   p.first);
    if (rc != SQLITE_OK) return rc;
  }
  f->st->pending.clear();
  return SQLITE_OK;
}

int x_close(sqlite3_file* file) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  int rc;
  {
    std::lock_guard<std::mutex> lk(g.mu);
    // Power on: the OS writes the data back eventually. Power cut: it never reaches the disk.
    if (--f->st->handles == 0) {
      if (is_cut(f)) drop(f); else flush(f);
      files.erase(*f->path);
    }
    rc = f->real->pMethods->xClose(f->real);
  }
  delete f->path;
  return rc;
}

int x_read(sqlite3_file* file, void* buf, int amt, sqlite3_int64 off) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  std::lock_guard<std::mutex> lk(g.mu);
  int rc = f->real->pMethods->xRead(f->real, buf, amt, off);
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  auto* out = static_cast<unsigned char*>(buf);
  const sqlite3_int64 end = off + amt;
  if (f->st->truncated && f->st->trunc_min < end) {
    sqlite3_int64 from = std::max(off, f->st->trunc_min);
    std::memset(out + (from - off), 0, static_cast<std::size_t>(end - from));
  }
  auto it = f->st->pending.upper_bound(off);
  if (it != f->st->pending.begin()) --it;
  for (; it != f->st->pending.end() && it->first < end; ++it) {
    sqlite3_int64 ps = it->first, pe = ps + static_cast<sqlite3_int64>(it->second.size());
    sqlite3_int64 s = std::max(ps, off), e = std::min(pe, end);
    if (s < e)
      std::memcpy(out + (s - off), it->second.data() + (s - ps), static_cast<std::size_t>(e - s));
  }
  int src = SQLITE_OK;
  sqlite3_int64 size = logical_size(f, src);
  if (src != SQLITE_OK) return src;
  if (end > size) {
    if (size > off) std::memset(out + (size - off), 0, static_cast<std::size_t>(end - size));
    else std::memset(out, 0, static_cast<std::size_t>(amt));
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

int x_write(sqlite3_file* file, const void* buf, int amt, sqlite3_int64 off) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  std::lock_guard<std::mutex> lk(g.mu);
  if (is_cut(f)) return SQLITE_OK;  // the machine is off: nothing reaches any disk
  sqlite3_int64 start = off, end = off + amt;
  // Entries overlapping [off, end) merge with the write into one contiguous entry.
  auto first = f->st->pending.upper_bound(off);
  if (first != f->st->pending.begin()) {
    auto prev = std::prev(first);
    if (prev->first + static_cast<sqlite3_int64>(prev->second.size()) > off) first = prev;
  }
  auto last = first;
  while (last != f->st->pending.end() && last->first < end) {
    start = std::min(start, last->first);
    end = std::max(end, last->first + static_cast<sqlite3_int64>(last->second.size()));
    ++last;
  }
  std::string merged(static_cast<std::size_t>(end - start), '\0');
  for (auto it = first; it != last; ++it)
    std::memcpy(&merged[static_cast<std::size_t>(it->first - start)], it->second.data(),
                it->second.size());
  std::memcpy(&merged[static_cast<std::size_t>(off - start)], buf, static_cast<std::size_t>(amt));
  f->st->pending.erase(first, last);
  f->st->pending.emplace(start, std::move(merged));
  return SQLITE_OK;
}

int x_truncate(sqlite3_file* file, sqlite3_int64 size) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  std::lock_guard<std::mutex> lk(g.mu);
  if (is_cut(f)) return SQLITE_OK;
  if (!f->st->truncated) {
    f->st->truncated = true;
    f->st->trunc_min = size;
  } else {
    f->st->trunc_min = std::min(f->st->trunc_min, size);
  }
  f->st->trunc_size = size;
  // Pending data past the new end is gone.
  for (auto it = f->st->pending.begin(); it != f->st->pending.end();) {
    sqlite3_int64 pe = it->first + static_cast<sqlite3_int64>(it->second.size());
    if (it->first >= size) {
      it = f->st->pending.erase(it);
    } else {
      if (pe > size) it->second.resize(static_cast<std::size_t>(size - it->first));
      ++it;
    }
  }
  return SQLITE_OK;
}

int x_sync(sqlite3_file* file, int flags) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  std::lock_guard<std::mutex> lk(g.mu);
  if (is_cut(f)) return SQLITE_OK;
  int rc = flush(f);
  if (rc != SQLITE_OK) return rc;
  ++g.syncs;
  return f->real->pMethods->xSync(f->real, flags);
}

int x_file_size(sqlite3_file* file, sqlite3_int64* size) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  std::lock_guard<std::mutex> lk(g.mu);
  int rc = SQLITE_OK;
  *size = logical_size(f, rc);
  return rc;
}

sqlite3_file* real_of(sqlite3_file* file) { return reinterpret_cast<lossy_file*>(file)->real; }

int x_lock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xLock(real_of(f), l); }
int x_unlock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xUnlock(real_of(f), l); }
int x_check_reserved(sqlite3_file* f, int* out) {
  return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
int x_file_control(sqlite3_file* file, int op, void* arg) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  if (op == SQLITE_FCNTL_SIZE_HINT || op == SQLITE_FCNTL_CHUNK_SIZE) {
    // Size hints would grow the real file behind the model's back; the model does not need them.
    return SQLITE_OK;
  }
  return f->real->pMethods->xFileControl(f->real, op, arg);
}
int x_sector_size(sqlite3_file* f) { return real_of(f)->pMethods->xSectorSize(real_of(f)); }
int x_device_characteristics(sqlite3_file* f) {
  return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
int x_shm_map(sqlite3_file* f, int pg, int pgsz, int extend, void volatile** p) {
  return real_of(f)->pMethods->xShmMap(real_of(f), pg, pgsz, extend, p);
}
int x_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}
void x_shm_barrier(sqlite3_file* f) { real_of(f)->pMethods->xShmBarrier(real_of(f)); }
int x_shm_unmap(sqlite3_file* file, int delete_flag) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  bool cut;
  {
    std::lock_guard<std::mutex> lk(g.mu);
    cut = is_cut(f);
  }
  return f->real->pMethods->xShmUnmap(f->real, cut ? 0 : delete_flag);
}

// Version 2: shared memory for WAL, no memory-mapped I/O (every read goes through x_read).
const sqlite3_io_methods io_methods = {
    2,           x_close,         x_read,         x_write,       x_truncate,
    x_sync,      x_file_size,     x_lock,         x_unlock,      x_check_reserved,
    x_file_control, x_sector_size, x_device_characteristics,
    x_shm_map,   x_shm_lock,      x_shm_barrier,  x_shm_unmap,   nullptr,
    nullptr};

int x_open(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  auto* f = reinterpret_cast<lossy_file*>(file);
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(f + 1);
  int rc = g.real->xOpen(g.real, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (f->real->pMethods) f->real->pMethods->xClose(f->real);
    return rc;
  }
  // Temporary files (no name) get a key of their own.
  f->path = new std::string(name ? name : "temp:" + std::to_string(reinterpret_cast<std::uintptr_t>(f)));
  {
    std::lock_guard<std::mutex> lk(g.mu);
    f->st = &files[*f->path];
    ++f->st->handles;
  }
  f->base.pMethods = &io_methods;
  return SQLITE_OK;
}

int x_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  {
    std::lock_guard<std::mutex> lk(g.mu);
    if (is_cut_path(name)) return SQLITE_OK;
  }
  return g.real->xDelete(g.real, name, sync_dir);
}
int x_access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return g.real->xAccess(g.real, name, flags, out);
}
int x_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return g.real->xFullPathname(g.real, name, n, out);
}

}  // namespace

lossy_vfs::lossy_vfs() {
  g.real = sqlite3_vfs_find(nullptr);
  g.vfs = *g.real;
  g.vfs.zName = "edgecqrs-lossy";
  g.vfs.szOsFile = static_cast<int>(sizeof(lossy_file)) + g.real->szOsFile;
  g.vfs.pNext = nullptr;
  g.vfs.xOpen = x_open;
  g.vfs.xDelete = x_delete;
  g.vfs.xAccess = x_access;
  g.vfs.xFullPathname = x_full_pathname;
  g.cut_part.clear();
  g.syncs = g.bytes_lost = 0;
  sqlite3_vfs_register(&g.vfs, 1);
}

lossy_vfs::~lossy_vfs() {
  sqlite3_vfs_unregister(&g.vfs);
  sqlite3_vfs_register(g.real, 1);
}

void lossy_vfs::cut(const std::string& path_part) {
  std::lock_guard<std::mutex> lk(g.mu);
  g.cut_part = path_part;
}

void lossy_vfs::restore() {
  std::lock_guard<std::mutex> lk(g.mu);
  g.cut_part.clear();
}

std::uint64_t lossy_vfs::syncs() const {
  std::lock_guard<std::mutex> lk(g.mu);
  return g.syncs;
}

std::uint64_t lossy_vfs::bytes_lost() const {
  std::lock_guard<std::mutex> lk(g.mu);
  return g.bytes_lost;
}

}  // namespace edgecqrs::test

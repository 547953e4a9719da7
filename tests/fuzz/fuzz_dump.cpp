// Fuzz target: the dump-file reader of `edgecqrs load` (docs/operations.md). The input is a
// dump file: an RFC 8742 CBOR sequence ["edgecqrs-dump", 1, schema] then sync messages. It is
// read through the CLI's own reader (cbor_seq_reader, from an in-memory file) with a small
// item bound so the "too large" path is reachable, and applied to a replica the way run_load
// does it (schema on the schema topic, each sync message on the direct topic).
// Asserts: every item the reader returns is exactly the input's bytes at its offset, offsets
// only grow and items tile the input; a clean end consumed everything; an error has a reason;
// the reader's buffer stays bounded; the replica keeps
// working (a valid sync event applies afterwards, never failing for a database reason).
#include <sqlite3.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "items_replica.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_dump: %s\n", what);
  std::abort();
}

// The item bound of the reader: small, so inputs of a few KiB reach the "too large" path.
constexpr std::size_t max_item = 1024;

struct state : edgecqrs::fuzz::items_replica {
  // A sync event of the schema the dump carried (when it was accepted) must apply or be
  // refused for a reason of its own, never for a database failure.
  void probe(std::uint32_t tag) {
    edgecqrs::message m = next_probe(tag);
    m.target = "gw1";
    const auto b = edgecqrs::test::encode(m);
    if (b.empty()) fail("encode probe");
    if (database_failure(r->on_message("edgecqrs/v1/d/gw1/items", b.data(), b.size())))
      fail("a valid sync event failed for a database reason after a dump");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static state* st = new state();
  if (size > 65536) return 0;
  // The reader opens a path, as `edgecqrs load -i FILE` does: an in-memory file (memfd)
  // holds the input and is opened by its /proc/self/fd name.
  static const int fd = memfd_create("edgecqrs-dump", 0);
  if (fd < 0 || ftruncate(fd, 0) != 0) fail("memfd");
  for (std::size_t done = 0; done < size;) {
    const ssize_t w = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (w <= 0) fail("memfd write");
    done += static_cast<std::size_t>(w);
  }
  edgecqrs::cli::cbor_seq_reader in(max_item);
  if (in.open("/proc/self/fd/" + std::to_string(fd))) fail("open");

  const std::uint8_t* item = nullptr;
  std::size_t len = 0;
  std::uint64_t off = 0, expect_off = 0;
  std::error_code ec;
  std::uint32_t tag = 0;
  bool have_schema = false;
  const std::string schema_topic = "edgecqrs/v1/s/items";
  const std::string direct_topic = "edgecqrs/v1/d/gw1/items";
  int r = 0;
  for (std::size_t index = 0; index < 4096; ++index) {
    r = in.next(item, len, off, ec);
    if (r != 1) break;
    // The reader hands back exactly the file's bytes, in order, with no gap or overlap.
    if (off != expect_off || len == 0 || off + len > size ||
        std::memcmp(item, data + off, len) != 0)
      fail("reader returned bytes that are not the input's at their offset");
    // Bounded memory: the reader buffers at most its bound plus one 64 KiB read (an item that
    // arrived whole in one read is returned even above the bound; the decoder's own size limit
    // refuses it then).
    if (len > max_item + 65536) fail("reader returned an item beyond its buffer bound");
    expect_off = off + len;
    if (index == 0) {
      const std::uint8_t* sb = nullptr;
      std::size_t sn = 0;
      edgecqrs::schema sch;
      if (!edgecqrs::cli::dump_header_schema(item, len, sb, sn) ||
          edgecqrs::decode_schema(sb, sn, sch))
        break;
      if (sch.cqrs_id != "items") break;  // run_load: a stream the config does not list
      if (st->r->on_message(schema_topic, sb, sn)) break;
      tag = sch.schema_tag;
      have_schema = true;
      continue;
    }
    edgecqrs::message m;
    if (edgecqrs::decode_message(item, len, m)) continue;   // skipped, counted as bad
    if (m.first_seq != 0 || m.schema_tag != tag) continue;  // not a sync of the dump's schema
    (void)st->r->on_message(direct_topic, item, len);
  }
  if (r == 0 && expect_off != size) fail("clean end before the end of the input");
  if (r < 0 && !ec) fail("reader error without a reason");
  st->clk.advance(1000);
  (void)st->r->poll();
  if (have_schema) st->probe(tag);
  st->collect_asks();  // the replica's requests: the transport keeps nothing between inputs
  return 0;
}

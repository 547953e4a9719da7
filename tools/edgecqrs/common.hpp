// Helpers shared by the database sub-commands: opening masters and replicas the way the daemon
// does, SQLite statements, values <-> JSON, durations, and the streaming CBOR sequence reader.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "config.hpp"
#include "edgecqrs/master.hpp"
#include "edgecqrs/replica.hpp"
#include "edgecqrs/value.hpp"

namespace edgecqrs::cli {

// Text taken from databases or the wire, made safe for a terminal: control characters (C0, DEL
// and C1) become \xNN / \u00NN and a backslash is doubled, so a hostile column name or CQRS_ID
// cannot send escape sequences. Every human-readable output goes through it.
std::string printable(std::string_view s);

// Prints "edgecqrs <cmd>: <text>" on stderr, the text passed through printable().
void errorf(const char* cmd, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// A prepared statement that finalizes itself.
class stmt {
 public:
  stmt() = default;
  ~stmt() { sqlite3_finalize(s_); }
  stmt(const stmt&) = delete;
  stmt& operator=(const stmt&) = delete;
  bool prepare(sqlite3* db, const std::string& sql) {
    sqlite3_finalize(s_);
    s_ = nullptr;
    return sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr) == SQLITE_OK;
  }
  sqlite3_stmt* get() const { return s_; }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// A plain connection (status, diff-master): read-only unless asked otherwise.
struct db_handle {
  sqlite3* db = nullptr;
  ~db_handle() { sqlite3_close(db); }
};
bool open_db(const char* cmd, const std::string& path, bool readonly, db_handle& out);
bool has_table(sqlite3* db, const char* name);
std::string quote_ident(const std::string& name);

value column_value(sqlite3_stmt* s, int i);
void bind_value(sqlite3_stmt* s, int i, const value& v);

// Key values as JSON: integers, reals (always with a fraction or exponent), text, null, and
// BLOBs as {"b64": "..."}.
nlohmann::json value_to_json(const value& v);
bool json_to_value(const nlohmann::json& j, value& out);

// "90", "90s", "15m", "2h", "7d" -> milliseconds; false when malformed.
bool parse_duration_ms(const std::string& text, std::int64_t& out);

// --where parameters: each "--param" value as SQL literal type: integer, real, or text
// (prefix "text:" forces text, "null" is NULL).
value parse_param(const std::string& text);

// Master side: opens the master database and registers the stream as the application last
// did (its definition in edgecqrs_registration: table, columns or serializer_sql, tracked
// columns, produce), else `table` (default: the CQRS_ID) with `columns` (empty: all). Errors
// are printed.
struct master_target {
  std::string db_path, cqrs_id, table;
  std::vector<std::string> columns;
  std::string serializer_sql;
  std::vector<std::string> tracked;
  bool produce = true;
};
bool open_master(const char* cmd, const master_target& t, std::unique_ptr<master>& out);
// Completes `t` from the stream's registered definition in `db`, if any. False (printed) when
// the CLI cannot reproduce it: registered with a filter or serializer callback, or --table /
// --columns given other than the registered ones.
bool registered_definition(const char* cmd, sqlite3* db, master_target& t);

// Replica side: parses the config file, opens the database (`db_override` replaces the
// config's) and registers every table. Errors are printed with the config position.
bool load_config(const char* cmd, const std::string& path, consume_config& cfg);
bool open_replica(const char* cmd, const consume_config& cfg, const std::string& db_override,
                  std::unique_ptr<replica>& out);
replica_options replica_options_from(const consume_config& cfg);
const table_config* find_table(const consume_config& cfg, const std::string& cqrs_id);

// Reads a CBOR sequence item by item from a file or stdin, with a bounded buffer.
// A dump file's first item is ["edgecqrs-dump", 1, schema]: on a match, `s`/`sn` get the schema
// item's bytes (inside p..p+n).
bool dump_header_schema(const std::uint8_t* p, std::size_t n, const std::uint8_t*& s,
                        std::size_t& sn);

class cbor_seq_reader {
 public:
  explicit cbor_seq_reader(std::size_t max_item) : max_item_(max_item) {}
  ~cbor_seq_reader();
  std::error_code open(const std::string& path);
  // 1: an item in [data, data+size) at byte `offset`; 0: clean end; -1: error in `ec`
  // (not well-formed, truncated, too large or I/O), the stream cannot continue.
  int next(const std::uint8_t*& data, std::size_t& size, std::uint64_t& offset,
           std::error_code& ec);

 private:
  bool fill();
  std::FILE* f_ = nullptr;
  bool own_ = false, eof_ = false, io_error_ = false;
  std::size_t max_item_;
  std::vector<std::uint8_t> buf_;
  std::size_t start_ = 0;       // first unread byte in buf_
  std::uint64_t consumed_ = 0;  // bytes before buf_[start_]
};

}  // namespace edgecqrs::cli

// Helpers shared by the database sub-commands (see common.hpp).
#include "common.hpp"

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstring>
#include <fstream>
#include <sstream>

#include "edgecqrs/cbor_seq.hpp"
#include "edgecqrs/errors.hpp"

namespace edgecqrs::cli {

std::string printable(std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    // C1 controls (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8; some terminals act on them.
    bool c1 =
        c == 0xC2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xE0) == 0x80;
    if (c < 0x20 || c == 0x7F || c1) {
      unsigned char b = c1 ? static_cast<unsigned char>(s[++i]) : c;
      out += c1 ? "\\u00" : "\\x";
      out += hex[b >> 4];
      out += hex[b & 15];
    } else if (c == '\\') {
      out += "\\\\";
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void errorf(const char* cmd, const char* fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::string msg(buf,
                  n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
  std::fprintf(stderr, "edgecqrs %s: %s\n", cmd, printable(msg).c_str());
}

bool open_db(const char* cmd, const std::string& path, bool readonly, db_handle& out) {
  int flags = readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  if (sqlite3_open_v2(path.c_str(), &out.db, flags, nullptr) != SQLITE_OK) {
    errorf(cmd, "%s: cannot open database: %s", path.c_str(),
           out.db ? sqlite3_errmsg(out.db) : "out of memory");
    return false;
  }
  sqlite3_busy_timeout(out.db, 5000);
  return true;
}

bool has_table(sqlite3* db, const char* name) {
  stmt q;
  if (!q.prepare(db, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1")) return false;
  sqlite3_bind_text(q.get(), 1, name, -1, SQLITE_STATIC);
  return sqlite3_step(q.get()) == SQLITE_ROW;
}

std::string quote_ident(const std::string& name) {
  std::string r = "\"";
  for (char c : name) {
    if (c == '"') r += '"';
    r += c;
  }
  return r + "\"";
}

value column_value(sqlite3_stmt* s, int i) {
  switch (sqlite3_column_type(s, i)) {
    case SQLITE_INTEGER:
      return value::integer(sqlite3_column_int64(s, i));
    case SQLITE_FLOAT:
      return value::real(sqlite3_column_double(s, i));
    case SQLITE_TEXT:
      return value::text({reinterpret_cast<const char*>(sqlite3_column_text(s, i)),
                          static_cast<std::size_t>(sqlite3_column_bytes(s, i))});
    case SQLITE_BLOB: {
      const void* p = sqlite3_column_blob(s, i);
      return value::blob(p, static_cast<std::size_t>(sqlite3_column_bytes(s, i)));
    }
    default:
      return value::null();
  }
}

void bind_value(sqlite3_stmt* s, int i, const value& v) {
  switch (v.type()) {
    case value_type::integer:
      sqlite3_bind_int64(s, i, v.as_integer());
      break;
    case value_type::real:
      sqlite3_bind_double(s, i, v.as_real());
      break;
    case value_type::text:
      sqlite3_bind_text(s, i, v.bytes().data(), static_cast<int>(v.bytes().size()),
                        SQLITE_TRANSIENT);
      break;
    case value_type::blob:
      sqlite3_bind_blob(s, i, v.bytes().data(), static_cast<int>(v.bytes().size()),
                        SQLITE_TRANSIENT);
      break;
    default:
      sqlite3_bind_null(s, i);
      break;
  }
}

namespace {
const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64encode(std::string_view in) {
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned n =
        (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    for (int k = 18; k >= 0; k -= 6) out += b64chars[(n >> k) & 63];
  }
  if (i < in.size()) {
    unsigned n = (unsigned char)in[i] << 16;
    if (i + 1 < in.size()) n |= (unsigned char)in[i + 1] << 8;
    out += b64chars[(n >> 18) & 63];
    out += b64chars[(n >> 12) & 63];
    out += i + 1 < in.size() ? b64chars[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool b64decode(const std::string& in, std::string& out) {
  out.clear();
  if (in.size() % 4) return false;
  unsigned n = 0;
  int bits = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '=') {
      if (i + 2 < in.size()) return false;
      break;
    }
    const char* p = std::strchr(b64chars, c);
    if (!p || !c) return false;
    n = n << 6 | unsigned(p - b64chars);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((n >> bits) & 0xff);
    }
  }
  return true;
}
}  // namespace

nlohmann::json value_to_json(const value& v) {
  switch (v.type()) {
    case value_type::integer:
      return v.as_integer();
    case value_type::real: {
      if (!std::isfinite(v.as_real()))
        return {{"real", std::isnan(v.as_real()) ? "NaN"
                         : v.as_real() > 0       ? "Infinity"
                                                 : "-Infinity"}};
      return v.as_real();
    }
    case value_type::text:
      return std::string(v.bytes());
    case value_type::blob:
      return {{"b64", b64encode(v.bytes())}};
    default:
      return nullptr;
  }
}

bool json_to_value(const nlohmann::json& j, value& out) {
  if (j.is_null())
    out = value::null();
  else if (j.is_number_integer()) {
    if (j.is_number_unsigned() && j.get<std::uint64_t>() > std::uint64_t(INT64_MAX)) return false;
    out = value::integer(j.get<std::int64_t>());
  } else if (j.is_number_float())
    out = value::real(j.get<double>());
  else if (j.is_string())
    out = value::text(j.get<std::string>());
  else if (j.is_object() && j.size() == 1 && j.contains("b64") && j["b64"].is_string()) {
    std::string bytes;
    if (!b64decode(j["b64"].get<std::string>(), bytes)) return false;
    out = value::blob(bytes);
  } else if (j.is_object() && j.size() == 1 && j.contains("real") && j["real"].is_string()) {
    std::string s = j["real"].get<std::string>();
    if (s == "NaN")
      out = value::real(std::nan(""));
    else if (s == "Infinity")
      out = value::real(HUGE_VAL);
    else if (s == "-Infinity")
      out = value::real(-HUGE_VAL);
    else
      return false;
  } else
    return false;
  return true;
}

bool parse_duration_ms(const std::string& text, std::int64_t& out) {
  if (text.empty()) return false;
  std::size_t i = 0;
  std::int64_t n = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    if (n > INT64_MAX / 10 - 10) return false;
    n = n * 10 + (text[i++] - '0');
  }
  if (i == 0) return false;
  std::string unit = text.substr(i);
  std::int64_t mul;
  if (unit.empty() || unit == "s")
    mul = 1000;
  else if (unit == "ms")
    mul = 1;
  else if (unit == "m")
    mul = 60000;
  else if (unit == "h")
    mul = 3600000;
  else if (unit == "d")
    mul = 86400000;
  else
    return false;
  if (n > INT64_MAX / mul) return false;
  out = n * mul;
  return true;
}

value parse_param(const std::string& text) {
  if (text == "null") return value::null();
  if (text.rfind("text:", 0) == 0) return value::text(text.substr(5));
  if (!text.empty()) {
    char* end = nullptr;
    errno = 0;
    long long i = std::strtoll(text.c_str(), &end, 10);
    if (errno == 0 && *end == '\0') return value::integer(i);
    errno = 0;
    double d = std::strtod(text.c_str(), &end);
    if (errno == 0 && *end == '\0') return value::real(d);
  }
  return value::text(text);
}

namespace {

// Parses a list of quoted identifiers joined by commas ("a","b""c"), as edgecqrs_registration
// stores them.
std::vector<std::string> ident_list(const char* p) {
  std::vector<std::string> out;
  while (p && *p == '"') {
    std::string n;
    for (++p; *p; ++p) {
      if (*p == '"' && p[1] != '"') break;
      if (*p == '"') ++p;
      n += *p;
    }
    out.push_back(std::move(n));
    if (*p) ++p;
    if (*p == ',') ++p;
  }
  return out;
}

std::string join_names(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& n : v) s += (s.empty() ? "" : ",") + n;
  return s;
}

bool same_name(const std::string& a, const std::string& b) {
  return sqlite3_stricmp(a.c_str(), b.c_str()) == 0;
}

}  // namespace

bool registered_definition(const char* cmd, sqlite3* db, master_target& t) {
  if (!has_table(db, "edgecqrs_registration")) return true;  // before definitions were kept
  stmt q;
  if (!q.prepare(db,
                 "SELECT tbl, columns, serializer_sql, tracked, produce, filter, serializer FROM "
                 "edgecqrs_registration WHERE cqrs_id=?1")) {
    errorf(cmd, "%s: %s", t.db_path.c_str(), sqlite3_errmsg(db));
    return false;
  }
  sqlite3_bind_text(q.get(), 1, t.cqrs_id.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(q.get()) != SQLITE_ROW) return true;  // never registered: as given
  auto text = [&](int i) {
    const unsigned char* v = sqlite3_column_text(q.get(), i);
    return std::string(v ? reinterpret_cast<const char*>(v) : "");
  };
  const char* why = sqlite3_column_int(q.get(), 5)   ? "a filter callback"
                    : sqlite3_column_int(q.get(), 6) ? "a serializer callback"
                                                     : nullptr;
  if (why) {
    errorf(cmd,
           "stream '%s' is registered with %s, which the CLI cannot run (it would send rows or "
           "values the application does not): sync it from the application (master::sync)",
           t.cqrs_id.c_str(), why);
    return false;
  }
  std::string table = text(0);
  if (!t.table.empty() && !same_name(t.table, table)) {
    errorf(cmd, "stream '%s' is registered on table '%s', not '%s'", t.cqrs_id.c_str(),
           table.c_str(), t.table.c_str());
    return false;
  }
  std::vector<std::string> cols = ident_list(text(1).c_str());
  bool same = t.columns.empty() || t.columns.size() == cols.size();
  for (std::size_t i = 0; same && i < t.columns.size(); ++i) same = same_name(t.columns[i], cols[i]);
  if (!same) {
    errorf(cmd,
           "stream '%s' is registered with columns %s, not %s: another list would publish another "
           "schema (omit --columns)",
           t.cqrs_id.c_str(), cols.empty() ? "from its serializer_sql" : join_names(cols).c_str(),
           join_names(t.columns).c_str());
    return false;
  }
  t.table = table;
  t.columns = cols;
  t.serializer_sql = text(2);
  t.tracked = ident_list(text(3).c_str());
  t.produce = sqlite3_column_int(q.get(), 4) != 0;
  return true;
}

bool open_master(const char* cmd, const master_target& target, std::unique_ptr<master>& out) {
  master_target t = target;
  {
    // master::open creates a missing file: an operator's typo must not make an empty database.
    std::FILE* f = std::fopen(t.db_path.c_str(), "rb");
    if (!f) {
      errorf(cmd, "%s: cannot open database: %s", t.db_path.c_str(), std::strerror(errno));
      return false;
    }
    std::fclose(f);
  }
  master_config mc;
  if (auto ec = master::open(t.db_path, mc, nullptr, out)) {
    errorf(cmd, "%s: cannot open master database: %s", t.db_path.c_str(), ec.message().c_str());
    return false;
  }
  if (!registered_definition(cmd, out->db(), t)) {
    out.reset();
    return false;
  }
  table_options o;
  o.cqrs_id = t.cqrs_id;
  o.table = t.table.empty() ? t.cqrs_id : t.table;
  o.columns = t.columns;
  o.serializer_sql = t.serializer_sql;
  o.tracked = t.tracked;
  o.produce = t.produce;
  if (auto ec = out->register_table(o)) {
    std::string detail = out->last_error_message();
    errorf(cmd, "%s: cannot register table '%s' as CQRS_ID '%s': %s%s%s", t.db_path.c_str(),
           o.table.c_str(), o.cqrs_id.c_str(), ec.message().c_str(), detail.empty() ? "" : ": ",
           detail.c_str());
    out.reset();
    return false;
  }
  return true;
}

bool load_config(const char* cmd, const std::string& path, consume_config& cfg) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    errorf(cmd, "%s: cannot read config: %s", path.c_str(), std::strerror(errno));
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string error;
  if (!parse_consume_config(ss.str(), path, cfg, error)) {
    errorf(cmd, "%s", error.c_str());
    return false;
  }
  return true;
}

replica_options replica_options_from(const consume_config& cfg) {
  replica_options o;
  o.name = cfg.name;
  o.topic_prefix = cfg.topic_prefix;
  o.max_retries = static_cast<std::uint32_t>(cfg.max_retries);
  o.retry_initial_ms = cfg.retry_base_ms;
  o.retry_max_ms = cfg.retry_max_ms;
  o.max_dead_letters = static_cast<std::size_t>(cfg.dead_letter_max_rows);
  o.reorder_window_ms = cfg.reorder_window_ms;
  if (cfg.workers > 1) o.shared_group = cfg.name;
  return o;
}

const table_config* find_table(const consume_config& cfg, const std::string& cqrs_id) {
  for (const auto& t : cfg.tables)
    if (t.cqrs_id == cqrs_id) return &t;
  return nullptr;
}

bool open_replica(const char* cmd, const consume_config& cfg, const std::string& db_override,
                  std::unique_ptr<replica>& out) {
  const std::string path = db_override.empty() ? cfg.database : db_override;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
      errorf(cmd, "%s: cannot open database: %s", path.c_str(), std::strerror(errno));
      return false;
    }
    std::fclose(f);
  }
  if (auto ec = replica::open(path, replica_options_from(cfg), out)) {
    errorf(cmd, "%s: cannot open replica database: %s", path.c_str(), ec.message().c_str());
    return false;
  }
  for (const auto& t : cfg.tables) {
    replica_table_options o;
    o.local_table = t.table;
    o.mapping = t.mapping;
    o.unknown_columns =
        t.reject_unknown_columns ? unknown_column_policy::reject : unknown_column_policy::ignore;
    o.only_direct_syncs = t.only_direct_syncs;
    if (auto ec = out->register_table(t.cqrs_id, o)) {
      std::string detail = out->last_error();
      errorf(cmd, "%s: table '%s' (cqrs_id '%s'): %s%s%s", path.c_str(), t.table.c_str(),
             t.cqrs_id.c_str(), ec.message().c_str(), detail.empty() ? "" : ": ", detail.c_str());
      out.reset();
      return false;
    }
  }
  return true;
}

// ---- cbor_seq_reader ----

cbor_seq_reader::~cbor_seq_reader() {
  if (own_ && f_) std::fclose(f_);
}

std::error_code cbor_seq_reader::open(const std::string& path) {
  if (path == "-") {
    f_ = stdin;
    own_ = false;
  } else {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) return {errno, std::generic_category()};
    own_ = true;
  }
  return {};
}

bool cbor_seq_reader::fill() {
  if (eof_) return false;
  if (start_ > 0) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(start_));
    consumed_ += start_;
    start_ = 0;
  }
  std::size_t old = buf_.size();
  buf_.resize(old + 65536);
  std::size_t n = std::fread(buf_.data() + old, 1, 65536, f_);
  buf_.resize(old + n);
  if (n == 0) {
    eof_ = true;
    io_error_ = std::ferror(f_) != 0;
    return false;
  }
  return true;
}

int cbor_seq_reader::next(const std::uint8_t*& data, std::size_t& size, std::uint64_t& offset,
                          std::error_code& ec) {
  for (;;) {
    std::size_t avail = buf_.size() - start_;
    if (avail == 0 && !fill()) {
      if (io_error_) {
        ec = {EIO, std::generic_category()};
        offset = consumed_ + start_;
        return -1;
      }
      return 0;
    }
    avail = buf_.size() - start_;
    std::size_t len = 0;
    std::error_code e = cbor_item_size(buf_.data() + start_, avail, len);
    if (!e) {
      data = buf_.data() + start_;
      size = len;
      offset = consumed_ + start_;
      start_ += len;
      return 1;
    }
    if (e == make_error_code(errc::truncated) && avail <= max_item_) {
      if (fill()) continue;
      if (io_error_) e = {EIO, std::generic_category()};
    } else if (e == make_error_code(errc::truncated)) {
      e = make_error_code(errc::too_large);
    }
    ec = e;
    offset = consumed_ + start_;
    return -1;
  }
}

bool dump_header_schema(const std::uint8_t* p, std::size_t n, const std::uint8_t*& s,
                        std::size_t& sn) {
  static const char magic[] =
      "\x83\x6d"
      "edgecqrs-dump"
      "\x01";
  const std::size_t m = sizeof magic - 1;
  if (n <= m || std::memcmp(p, magic, m) != 0) return false;
  s = p + m;
  sn = n - m;
  return true;
}

}  // namespace edgecqrs::cli

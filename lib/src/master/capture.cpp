// Capture: SQLite's hooks record each changed key of a registered table in the dirty set
// (values in a per-transaction arena). Fed by the application's writes; drained by outbox.cpp.
#include "master/engine.hpp"

namespace edgecqrs::master_detail {

std::string engine::encode_key(const value_view* pk, std::size_t n) {
  std::string key;
  encode_key_into(pk, n, key);
  return key;
}

void engine::encode_key_into(const value_view* pk, std::size_t n, std::string& key) {
  std::uint8_t tmp[16];
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t w = 0;
    if (pk[i].type == value_type::text || pk[i].type == value_type::blob) {
      // Header then bytes: avoids a second buffer for long keys.
      std::uint8_t major = pk[i].type == value_type::text ? 0x60 : 0x40;
      std::uint64_t len = pk[i].size;
      if (len < 24) {
        key += static_cast<char>(major | len);
      } else {
        key += static_cast<char>(major | 27);
        for (int b = 7; b >= 0; --b) key += static_cast<char>((len >> (8 * b)) & 0xff);
      }
      key.append(static_cast<const char*>(pk[i].data), pk[i].size);
      continue;
    }
    // The bytes encode_value gives (inline: this runs for every captured change).
    detail::cbor_writer cw(tmp, sizeof tmp);
    if (pk[i].type == value_type::integer)
      cw.sint(pk[i].i);
    else if (pk[i].type == value_type::real)
      cw.real(pk[i].d);
    else
      cw.null();
    w = cw.overflow() ? 0 : cw.size();
    key.append(reinterpret_cast<const char*>(tmp), w);
  }
}

value_view engine::hook_view(const table_state& t, int col, sqlite3_value* v) const {
  if (!v) return value_view::null();
  switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER: {
      std::int64_t i = sqlite3_value_int64(v);
      if (t.real_affinity[static_cast<std::size_t>(col)])
        return value_view::real(static_cast<double>(i));
      return value_view::integer(i);
    }
    case SQLITE_FLOAT:
      return value_view::real(sqlite3_value_double(v));
    case SQLITE_TEXT: {
      const void* p = db_utf8 ? sqlite3_value_blob(v) : sqlite3_value_text(v);
      auto n = static_cast<std::size_t>(sqlite3_value_bytes(v));
      return value_view::text(std::string_view(static_cast<const char*>(p), n));
    }
    case SQLITE_BLOB: {
      const void* p = sqlite3_value_blob(v);
      return value_view::blob(p, static_cast<std::size_t>(sqlite3_value_bytes(v)));
    }
    default:
      return value_view::null();
  }
}

engine::dirty_row* engine::touch(table_state* t, const value_view* pk, bool existed_before,
                                 bool& fresh) {
  fresh = false;
  std::string& key = key_scratch;
  key.clear();
  encode_key_into(pk, t->pk_table_cols.size(), key);
  std::uint64_t h = key_hash(static_cast<std::int64_t>(t->index), key);
  std::size_t mask = dirty_slots.size() - 1;
  std::size_t pos = static_cast<std::size_t>(h) & mask;
  while (std::uint32_t slot = dirty_slots[pos]) {
    dirty_row& e = dirty[slot - 1];
    if (dirty_hashes[slot - 1] == h && e.t == t && key_of(e) == std::string_view(key)) return &e;
    pos = (pos + 1) & mask;
  }
  if (n_dirty >= cfg.max_rows_per_transaction) {
    dirty_overflow = true;
    return nullptr;
  }
  dirty_slots[pos] = static_cast<std::uint32_t>(n_dirty + 1);
  dirty_hashes.push_back(h);
  if ((n_dirty + 1) * 2 > dirty_slots.size()) {
    // Keep the load under one half: rebuild at twice the size.
    std::vector<std::uint32_t> bigger(dirty_slots.size() * 2);
    std::size_t m2 = bigger.size() - 1;
    for (std::size_t i = 0; i < dirty_hashes.size(); ++i) {
      std::size_t p2 = static_cast<std::size_t>(dirty_hashes[i]) & m2;
      while (bigger[p2]) p2 = (p2 + 1) & m2;
      bigger[p2] = static_cast<std::uint32_t>(i + 1);
    }
    dirty_slots.swap(bigger);
  }
  // Entries are reused across transactions so their buffers keep their capacity (no
  // allocation per row in steady state); the pool shrinks when it grew large.
  if (n_dirty == dirty.size()) dirty.emplace_back();
  dirty_row& d = dirty[n_dirty++];
  d.t = t;
  d.key_off = cell_bytes.size();
  d.key_len = static_cast<std::uint32_t>(key.size());
  cell_bytes.insert(cell_bytes.end(), key.begin(), key.end());
  d.existed_before = existed_before;
  d.have_old = false;
  d.final_state = 0;
  d.pk_at = static_cast<std::uint32_t>(cells.size());
  for (std::size_t i = 0; i < t->pk_table_cols.size(); ++i) put_cell(pk[i]);
  fresh = true;
  return &d;
}

void engine::clear_dirty() {
  n_dirty = 0;
  if (dirty.size() > 4096) dirty.clear();
  dirty_hashes.clear();
  if (dirty_slots.size() > 4096)
    dirty_slots = std::vector<std::uint32_t>(1024);
  else
    std::fill(dirty_slots.begin(), dirty_slots.end(), 0u);
  dirty_overflow = false;
  rollback_to_seen = false;
  cached_bytes = 0;
  // Keep the arena's capacity for the next transaction, unless a big one grew it.
  if (cells.capacity() > (16u << 10))
    std::vector<value_view>().swap(cells);
  else
    cells.clear();
  if (cell_bytes.capacity() > (256u << 10))
    std::vector<std::uint8_t>().swap(cell_bytes);
  else
    cell_bytes.clear();
}

#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
void engine::set_final_present(dirty_row& d, const value_view* fin) {
  d.final_state = 0;
  if (!fin) return;
  std::size_t n = d.t->sel_table_cols.size();
  d.fin_at = static_cast<std::uint32_t>(cells.size());
  for (std::size_t i = 0; i < n; ++i) {
    cached_bytes += fin[i].size + sizeof(value_view);
    put_cell(fin[i]);
  }
  d.final_state = 1;
}

#endif

int engine::on_trace(unsigned type, void* ctx, void*, void* x) {
  if (type == SQLITE_TRACE_PROFILE) {
    // A statement that fails (constraint, SQLITE_FULL...) is undone by SQLite without telling
    // the hooks, while the transaction goes on; its change count is then 0. Conservative like
    // ROLLBACK TO: commit re-reads rows instead of trusting the cached final values.
    auto* m = static_cast<engine*>(ctx);
    if (m->stmt_hook_rows != 0 && sqlite3_changes(m->db) == 0) m->rollback_to_seen = true;
    m->stmt_hook_rows = 0;
    return 0;
  }
  if (type != SQLITE_TRACE_STMT || !x) return 0;
  // Conservative: any statement mentioning ROLLBACK (even in a comment or a literal) makes
  // commit re-read rows; a miss would publish values that ROLLBACK TO undid.
  // Runs at the start of every statement (each INSERT of a loop): texts already found clean
  // are remembered (compared whole, so a new statement at a reused address is rescanned).
  auto* m = static_cast<engine*>(ctx);
  const char* sql = static_cast<const char*>(x);
  // A trigger's invocation is reported as one comment line ("-- TRIGGER name", the guard
  // triggers' at every row): a single-line comment holds no statement.
  if (sql[0] == '-' && sql[1] == '-' && !std::strchr(sql, '\n')) return 0;
  // The last text found is compared first: a loop of one statement hits at once.
  if (std::strcmp(m->clean_sql[m->clean_hit].c_str(), sql) == 0) return 0;
  for (std::size_t k = 0; k < m->clean_sql.size(); ++k)
    if (k != m->clean_hit && std::strcmp(m->clean_sql[k].c_str(), sql) == 0) {
      m->clean_hit = k;
      return 0;
    }
  static const char kWord[] = "rollback";
  std::size_t len = 0;
  for (const char* p = sql; *p; ++p, ++len) {
    std::size_t i = 0;
    while (kWord[i] && (p[i] | 0x20) == kWord[i]) ++i;
    if (!kWord[i]) {
      m->rollback_to_seen = true;
      return 0;
    }
  }
  if (len <= 512) {
    m->clean_sql[m->clean_next].assign(sql, len);
    m->clean_hit = m->clean_next;
    m->clean_next = (m->clean_next + 1) % m->clean_sql.size();
  }
  return 0;
}

#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
void engine::on_preupdate(void* ctx, sqlite3* db, int op, const char* zdb, const char* ztab,
                          sqlite3_int64, sqlite3_int64) {
  auto* m = static_cast<engine*>(ctx);
  if (m->internal_write || std::strcmp(zdb, "main") != 0) return;
  table_state* t = m->lookup_table(ztab);
  if (!t || !t->produce) return;
  ++m->stmt_hook_rows;
  std::size_t npk = t->pk_table_cols.size();
  bool fresh = false;
  if (op == SQLITE_DELETE || op == SQLITE_UPDATE) {
    std::vector<value_view>& ok = m->hook_old;
    ok.resize(npk);
    for (std::size_t i = 0; i < npk; ++i) {
      sqlite3_value* v = nullptr;
      sqlite3_preupdate_old(db, t->pk_table_cols[i], &v);
      ok[i] = m->hook_view(*t, t->pk_table_cols[i], v);
    }
    dirty_row* old_row = m->touch(t, ok.data(), true, fresh);
    if (old_row && fresh && !t->compare_table_cols.empty()) {
      old_row->have_old = true;
      old_row->old_at = static_cast<std::uint32_t>(m->cells.size());
      for (int c : t->compare_table_cols) {
        sqlite3_value* v = nullptr;
        sqlite3_preupdate_old(db, c, &v);
        m->put_cell(m->hook_view(*t, c, v));
      }
    }
    // Gone unless the same key comes back below (UPDATE keeping its key).
    if (old_row) m->set_final_absent(*old_row);
  }
  if (op == SQLITE_INSERT || op == SQLITE_UPDATE) {
    // New values of the stream columns first (when they may be kept), then the key, taken
    // from them when the pk columns are among the stream columns.
    std::size_t nsel = t->sel_table_cols.size();
    std::vector<value_view>& nv = m->hook_new;
    nv.resize(nsel + npk);
    bool have_fin = t->cache_final && m->cached_bytes <= max_cached_bytes;
    for (std::size_t i = 0; have_fin && i < nsel; ++i) {
      sqlite3_value* v = nullptr;
      if (sqlite3_preupdate_new(db, t->sel_table_cols[i], &v) != SQLITE_OK)
        have_fin = false;
      else
        nv[i] = m->hook_view(*t, t->sel_table_cols[i], v);
    }
    value_view* nk = nv.data() + nsel;
    for (std::size_t i = 0; i < npk; ++i) {
      int at = t->pk_sel_pos[i];
      if (have_fin && at >= 0) {
        nk[i] = nv[static_cast<std::size_t>(at)];
        continue;
      }
      sqlite3_value* v = nullptr;
      sqlite3_preupdate_new(db, t->pk_table_cols[i], &v);
      nk[i] = m->hook_view(*t, t->pk_table_cols[i], v);
    }
    dirty_row* new_row = m->touch(t, nk, false, fresh);
    if (new_row) m->set_final_present(*new_row, have_fin ? nv.data() : nullptr);
  }
}

#endif

#ifndef EDGECQRS_HAVE_PREUPDATE_HOOK
void engine::on_update(void* ctx, int op, const char* zdb, const char* ztab, sqlite3_int64 rowid) {
  auto* m = static_cast<engine*>(ctx);
  if (m->internal_write || std::strcmp(zdb, "main") != 0) return;
  table_state* t = m->find_table(ztab);
  if (!t || !t->produce) return;
  value_view k = value_view::integer(rowid);
  bool fresh = false;
  m->touch(t, &k, op != SQLITE_INSERT, fresh);
}

void engine::fn_key_gone(sqlite3_context* ctx, int, sqlite3_value** argv) {
  auto* m = static_cast<engine*>(sqlite3_user_data(ctx));
  auto ix = static_cast<std::size_t>(sqlite3_value_int64(argv[0]));
  if (m->internal_write || ix >= m->tables.size() || !m->tables[ix]->produce) return;
  value_view k = value_view::integer(sqlite3_value_int64(argv[1]));
  bool fresh = false;
  m->touch(m->tables[ix].get(), &k, true, fresh);
}

#endif

void engine::fn_guard(sqlite3_context* ctx, int, sqlite3_value**) { sqlite3_result_int(ctx, 1); }

int engine::on_commit(void* ctx) {
  auto* m = static_cast<engine*>(ctx);
  if (m->committing || m->internal_write) return 0;
  if (m->n_dirty == 0 && !m->dirty_overflow) return 0;
  // A commit that bypasses master::commit() would publish nothing: refuse it.
  ++m->unmanaged_refused;
  return 1;
}

void engine::on_rollback(void* ctx) {
  auto* m = static_cast<engine*>(ctx);
  if (!m->internal_write) m->clear_dirty();
}

int engine::on_authorize(void* ctx, int action, const char* a1, const char*, const char* zdb,
                         const char*) {
  auto* m = static_cast<engine*>(ctx);
  if (action == SQLITE_DELETE && a1 && (!zdb || std::strcmp(zdb, "main") == 0) && m->find_table(a1))
    return SQLITE_IGNORE;
  return SQLITE_OK;
}

engine::table_state* engine::lookup_table(const char* ztab) {
  if (ztab == last_name && last_table && std::strcmp(last_table->table.c_str(), ztab) == 0)
    return last_table;
  table_state* t = find_table(ztab);
  if (t) {
    last_name = ztab;
    last_table = t;
  }
  return t;
}

// ============================================================================ hooks

void engine::install_hooks() {
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  sqlite3_preupdate_hook(db, &engine::on_preupdate, this);
#else
  sqlite3_update_hook(db, &engine::on_update, this);
  sqlite3_create_function_v2(db, "edgecqrs_key_gone", 2, SQLITE_UTF8 | SQLITE_DIRECTONLY, this,
                             &engine::fn_key_gone, nullptr, nullptr, nullptr);
#endif
  // The guard triggers' function (registration.cpp): innocuous, so that triggers may call it
  // with trusted_schema off.
  sqlite3_create_function_v2(db, guard_function, 0,
                             SQLITE_UTF8 | SQLITE_INNOCUOUS, nullptr, &engine::fn_guard, nullptr,
                             nullptr, nullptr);
  sqlite3_commit_hook(db, &engine::on_commit, this);
  sqlite3_rollback_hook(db, &engine::on_rollback, this);
  sqlite3_set_authorizer(db, &engine::on_authorize, this);
#ifdef EDGECQRS_HAVE_PREUPDATE_HOOK
  sqlite3_trace_v2(db, SQLITE_TRACE_STMT | SQLITE_TRACE_PROFILE, &engine::on_trace, this);
#endif
}
}  // namespace edgecqrs::master_detail

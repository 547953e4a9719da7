// tests/vectors/invalid.txt: every row must be rejected with exactly its errc, and the output
// object must come back reset (never half-filled).
#include <doctest/doctest.h>

#include <map>
#include <sstream>
#include <string>

#include "codec_test_util.hpp"
#include "edgecqrs/errors.hpp"
#include "test_support.hpp"

using namespace edgecqrs;
using namespace edgecqrs::test;

namespace {

const std::map<std::string, errc>& errc_names() {
  static const std::map<std::string, errc> names = {
      {"truncated", errc::truncated},
      {"trailing_bytes", errc::trailing_bytes},
      {"not_well_formed", errc::not_well_formed},
      {"indefinite_length", errc::indefinite_length},
      {"tag_not_allowed", errc::tag_not_allowed},
      {"wrong_type", errc::wrong_type},
      {"bad_value", errc::bad_value},
      {"integer_out_of_range", errc::integer_out_of_range},
      {"invalid_utf8", errc::invalid_utf8},
      {"duplicate_key", errc::duplicate_key},
      {"unknown_key", errc::unknown_key},
      {"unsupported_format", errc::unsupported_format},
      {"bad_message", errc::bad_message},
      {"bad_event", errc::bad_event},
      {"bad_schema", errc::bad_schema},
      {"bad_control", errc::bad_control},
      {"too_large", errc::too_large},
      {"too_deep", errc::too_deep},
      {"too_many_items", errc::too_many_items},
      {"string_too_long", errc::string_too_long},
      {"too_many_events", errc::too_many_events},
      {"too_many_values", errc::too_many_values},
      {"empty_input", errc::empty_input},
  };
  return names;
}

struct row {
  int line = 0;
  std::string decoder = "message";
  bytes input;
  errc expected = errc::ok;
  decode_limits limits;
  std::string comment;
};

bool set_limit(decode_limits& l, const std::string& word) {
  const auto eq = word.find('=');
  if (word.rfind("max_", 0) != 0 || eq == std::string::npos) return false;
  const std::string name = word.substr(0, eq);
  const std::size_t v = std::stoul(word.substr(eq + 1));
  if (name == "max_message_bytes") l.max_message_bytes = v;
  else if (name == "max_depth") l.max_depth = v;
  else if (name == "max_items") l.max_items = v;
  else if (name == "max_string_bytes") l.max_string_bytes = v;
  else if (name == "max_events") l.max_events = v;
  else if (name == "max_values") l.max_values = v;
  else return false;
  return true;
}

// HEX may be split into several tokens for readability: everything before the errc token.
std::vector<row> load_rows() {
  std::istringstream in(read_file(source_path("vectors/invalid.txt")));
  std::vector<row> rows;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string tok, hex;
    row r;
    r.line = n;
    bool found = false;
    while (ls >> tok) {
      std::string name = tok;
      std::string decoder = "message";
      if (auto slash = tok.find('/'); slash != std::string::npos) {
        decoder = tok.substr(0, slash);
        name = tok.substr(slash + 1);
      }
      if (auto it = errc_names().find(name); it != errc_names().end()) {
        r.expected = it->second;
        r.decoder = decoder;
        found = true;
        break;
      }
      if (tok != "-") hex += tok;
    }
    REQUIRE_MESSAGE(found, "invalid.txt line " << n << ": no errc name");
    bool leading = true;
    while (ls >> tok) {
      if (leading && set_limit(r.limits, tok)) continue;
      leading = false;
      r.comment += (r.comment.empty() ? "" : " ") + tok;
    }
    r.input = from_hex(hex);
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace

TEST_CASE("invalid.txt: each row is rejected with exactly its error") {
  const auto rows = load_rows();
  CHECK(rows.size() >= 30);
  std::map<errc, int> covered;
  for (const auto& r : rows) {
    CAPTURE(r.line);
    CAPTURE(r.comment);
    std::error_code ec;
    if (r.decoder == "message") {
      message m;
      m.first_seq = 99;
      m.events.resize(1);
      ec = decode_message(r.input.data(), r.input.size(), m, r.limits);
      CHECK(m.events.empty());
      CHECK(m.first_seq == 0);
    } else if (r.decoder == "schema") {
      schema s;
      s.cqrs_id = "stale";
      ec = decode_schema(r.input.data(), r.input.size(), s, r.limits);
      CHECK(s.cqrs_id.empty());
    } else {
      REQUIRE(r.decoder == "control");
      control_request c;
      c.replica = "stale";
      ec = decode_control(r.input.data(), r.input.size(), c, r.limits);
      CHECK(c.replica.empty());
    }
    CHECK_MESSAGE(ec == make_error_code(r.expected),
                  "got " << ec.message() << ", want " << make_error_code(r.expected).message());
    CHECK(!ec.message().empty());
    ++covered[r.expected];
  }
  // Every decode error has at least one row.
  // (No structured bindings: clang cannot capture them in doctest's message lambdas.)
  for (const auto& kv : errc_names())
    CHECK_MESSAGE(covered[kv.second] > 0, "no row for " << kv.first);
}

TEST_CASE("every decode error has its own readable message") {
  std::map<std::string, std::string> seen;
  for (const auto& kv : errc_names()) {
    const std::string msg = make_error_code(kv.second).message();
    CHECK(!msg.empty());
    CHECK_MESSAGE(seen.emplace(msg, kv.first).second, kv.first << " shares its message");
  }
}

// `edgecqrs decode`: print events (a file or stdin holding one message, a CBOR sequence of
// messages, or a dump file) as readable JSON, one per line.
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "edgecqrs/cbor_seq.hpp"
#include "edgecqrs/codec.hpp"
#include "edgecqrs/errors.hpp"
#include "io.hpp"

namespace edgecqrs::cli {
namespace {

int run(const std::string& input) {
  std::vector<std::uint8_t> bytes;
  if (auto ec = read_all(input, bytes)) {
    std::fprintf(stderr, "edgecqrs decode: cannot read %s: %s\n", input.c_str(),
                 ec.message().c_str());
    return 2;
  }
  schema sch;
  bool have_schema = false;
  int bad = 0;
  std::size_t pos = 0, index = 0;
  while (pos < bytes.size()) {
    std::size_t len = 0;
    if (auto ec = cbor_item_size(bytes.data() + pos, bytes.size() - pos, len)) {
      std::fprintf(stderr, "edgecqrs decode: %s: item %zu at byte %zu: %s (cannot continue)\n",
                   input.c_str(), index, pos, ec.message().c_str());
      return 1;
    }
    const std::uint8_t* item = bytes.data() + pos;
    message m;
    const std::uint8_t* s = nullptr;
    std::size_t sn = 0;
    if (auto ec = decode_message(item, len, m); !ec) {
      std::printf("%s\n", to_json(m, have_schema ? &sch : nullptr).c_str());
    } else if (dump_header_schema(item, len, s, sn) && !decode_schema(s, sn, sch)) {
      have_schema = true;
      std::printf("{\"dump\":{\"cqrs_id\":%s,\"schema_tag\":%u,\"columns\":%zu}}\n",
                  nlohmann::json(sch.cqrs_id).dump().c_str(), sch.schema_tag, sch.columns.size());
    } else if (schema s2; !decode_schema(item, len, s2)) {
      sch = std::move(s2);
      have_schema = true;
      std::printf("{\"schema\":{\"cqrs_id\":%s,\"schema_tag\":%u,\"columns\":%zu}}\n",
                  nlohmann::json(sch.cqrs_id).dump().c_str(), sch.schema_tag, sch.columns.size());
    } else if (control_request c; !decode_control(item, len, c)) {
      std::printf("{\"control\":{\"op\":%d,\"replica\":%s,\"from_seq\":%llu,\"to_seq\":%llu}}\n",
                  int(c.op), nlohmann::json(c.replica).dump().c_str(),
                  (unsigned long long)c.from_seq, (unsigned long long)c.to_seq);
    } else {
      std::fprintf(stderr, "edgecqrs decode: %s: item %zu at byte %zu: %s\n", input.c_str(), index,
                   pos, ec.message().c_str());
      ++bad;
    }
    pos += len;
    ++index;
  }
  return bad ? 1 : 0;
}

}  // namespace

void register_decode(CLI::App& app, run_state& st) {
  auto* cmd = app.add_subcommand(
      "decode", "Print events (message, CBOR sequence or dump file) as JSON lines");
  auto input = std::make_shared<std::string>("-");
  cmd->add_option("input", *input, "File to read, '-' for stdin")->capture_default_str();
#ifdef EDGECQRS_HAVE_PAHO
  auto sub = std::make_shared<std::vector<std::string>>();
  auto count = std::make_shared<std::uint64_t>(0);
  auto* so = cmd->add_option("--subscribe", *sub,
                             "Live from a broker: URL TOPIC (filter, e.g. 'edgecqrs/v1/#')")
                 ->expected(2)
                 ->type_name("URL TOPIC");
  cmd->add_option("-n,--count", *count,
                  "With --subscribe: stop after this many messages (0: until SIGINT)")
      ->needs(so);
  cmd->callback([&st, input, sub, count] {
    if (!sub->empty()) {
      if (*input != "-") {
        std::fprintf(stderr,
                     "edgecqrs decode: give either an input file or --subscribe, not both\n");
        st.status = 2;
        return;
      }
      st.status = decode_subscribe((*sub)[0], (*sub)[1], *count, st.quiet);
    } else {
      st.status = run(*input);
    }
  });
#else
  cmd->callback([&st, input] { st.status = run(*input); });
#endif
}

}  // namespace edgecqrs::cli

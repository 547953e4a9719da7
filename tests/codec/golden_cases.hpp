// The golden vectors of tests/vectors/: each case is the decoded struct and how its bytes are
// produced (encode_message/_schema/_control, or the master's hot-path pieces for batches).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "codec_test_util.hpp"

namespace edgecqrs::test {

enum class golden_kind { message, schema, control };

struct golden_case {
  std::string name;
  golden_kind kind = golden_kind::message;
  message msg;
  schema sch;
  control_request ctl;
  // Produces the expected bytes; empty: the whole-struct encoder of `kind`.
  std::function<bytes()> encode_fn;
};

const std::vector<golden_case>& golden_cases();

// The 4-field reading row of docs/wire-format.md §2.3.
message save_reading_message();

}  // namespace edgecqrs::test

// CBOR sequences (RFC 8742): finding item boundaries in a concatenation of CBOR items, as in dump
// files and `edgecqrs decode` input. Validates well-formedness only (not edgecqrs semantics).
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <system_error>

#include "edgecqrs/export.hpp"

namespace edgecqrs {

// Size in bytes of the first complete CBOR item in [data, data + size).
// Errors: errc::empty_input, errc::truncated, errc::not_well_formed, errc::too_deep (nesting beyond
// max_depth), errc::too_many_items (beyond max_items), errc::indefinite_length.
EDGECQRS_API std::error_code cbor_item_size(const std::uint8_t* data, std::size_t size,
                                            std::size_t& item_size, std::size_t max_depth = 16,
                                            std::size_t max_items = 1 << 20) noexcept;

}  // namespace edgecqrs

// The roofline's read (int8.h's read_checksum): the wrapping sum of n 64-bit words, read
// as four sequential streams (like a GEMV reading four weight rows) into independent
// sums, so that neither one prefetch stream nor one chain of adds limits the rate. A
// template on the vector "Ops" of each instruction-set file (read_avx2.cpp,
// read_avx512.cpp; the portable loop in read.cpp), compiled with that file's flags: the
// read must use the widest loads the CPU has, as the kernels do, or it measures the load
// ports rather than the memory (from one core's L2, in a C++ loop, 0.9 MB took 12.3 us
// in 16-byte loads and 6.0 us in 64-byte ones).
#pragma once

#include <cstdint>

namespace tinylm::int8::read {

// Ops: V, kWords (words per vector), zero(), load(p), add(a, b), sum(v) (of its words).
template <class O>
uint64_t sum_words(const uint64_t* data, int64_t n) {
  using V = typename O::V;
  const int64_t q = n / 4 / O::kWords * O::kWords;  // each stream's words, whole vectors
  V a0 = O::zero(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < q; i += O::kWords) {
    a0 = O::add(a0, O::load(data + i));
    a1 = O::add(a1, O::load(data + q + i));
    a2 = O::add(a2, O::load(data + 2 * q + i));
    a3 = O::add(a3, O::load(data + 3 * q + i));
  }
  uint64_t total = O::sum(O::add(O::add(a0, a1), O::add(a2, a3)));
  for (int64_t i = 4 * q; i < n; ++i) total += data[i];
  return total;
}

}  // namespace tinylm::int8::read

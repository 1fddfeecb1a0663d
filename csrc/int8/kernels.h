// The per-instruction-set int8 kernels (one per file, each compiled with its own flags by
// build_isa.py). Only the dispatchers (gemm.cpp, read.cpp) and the tests call these
// directly.
#pragma once

#include "int8.h"

namespace tinylm::int8 {

void gemm_ref(const Problem& p, int64_t n_begin, int64_t n_end);  // gemm_ref.cpp

#if defined(__x86_64__) || defined(_M_X64)
void gemm_avx2(const Problem& p, int64_t n_begin, int64_t n_end);        // gemm_avx2.cpp
void gemm_avxvnni(const Problem& p, int64_t n_begin, int64_t n_end);     // gemm_avxvnni.cpp
void gemm_avx512vnni(const Problem& p, int64_t n_begin, int64_t n_end);  // gemm_avx512vnni.cpp
// One row of quantize_rows with AVX2 (gemm_avx2.cpp), bit-identical to the portable
// code, and the sum of its q; returns false, writing nothing, for a row with NaN/inf or
// a max below kMinAmax.
bool quantize_row_avx2(const float* x, int64_t K, int8_t* q, float* scale, int32_t* sum);
// read_checksum's read of n words in 32- and 64-byte loads (read.h)
uint64_t read_words_avx2(const uint64_t* data, int64_t n);    // read_avx2.cpp
uint64_t read_words_avx512(const uint64_t* data, int64_t n);  // read_avx512.cpp
#endif

#if defined(__aarch64__) || defined(__arm__)
void gemm_neon(const Problem& p, int64_t n_begin, int64_t n_end);          // gemm_neon.cpp
void gemm_neon_dotprod(const Problem& p, int64_t n_begin, int64_t n_end);  // gemm_neon_dotprod.cpp
#endif

#if defined(__aarch64__)
void gemm_neon_i8mm(const Problem& p, int64_t n_begin, int64_t n_end);  // gemm_neon_i8mm.cpp
#endif

}  // namespace tinylm::int8

// The only file that knows Python. Every array that crosses into C++ is checked here
// (dtype, shape, contiguity) and refused with a ValueError naming the argument, so no
// input from Python can crash the process; the GIL is released around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "cpu.h"
#include "engine/engine.h"
#include "half.h"
#include "int8/int8.h"
#include "threads.h"

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------- argument checks

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

[[noreturn]] void bad_arg(const std::string& name, const std::string& problem) {
  throw py::value_error("argument '" + name + "': " + problem);
}

// `ndim` dimensions, C-contiguous, at least one element.
void require_layout(const py::array& a, const char* name, int ndim) {
  if (a.ndim() != ndim)
    bad_arg(name, "expected " + std::to_string(ndim) + " dimensions, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    bad_arg(name, "array is not C-contiguous (use numpy.ascontiguousarray)");
  if (a.size() == 0) bad_arg(name, "array is empty, shape " + shape_str(a));
}

// Checks that `obj` is a C-contiguous numpy array of dtype T with `ndim` dimensions and
// at least one element, and returns it without copying.
template <typename T>
py::array_t<T> checked(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj)) bad_arg(name, "expected a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    bad_arg(name, "expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                      std::string(py::str(a.dtype())) + " (convert with .astype)");
  require_layout(a, name, ndim);
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

void require_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) bad_arg(name, "array is read-only");
}

void require_dim(const py::array& a, const char* name, int axis, py::ssize_t expected,
                 const std::string& why) {
  if (a.shape(axis) != expected)
    bad_arg(name, "shape " + shape_str(a) + ": dimension " + std::to_string(axis) + " must be " +
                      std::to_string(expected) + " (" + why + ")");
}

// ---------------------------------------------------------------- runtime information

void bind_runtime(py::module_& m) {
  m.def("cpu_features", &tinylm::cpu_feature_names, "Features this CPU supports.");
  m.def("available_isas", &tinylm::available_isas,
        "Instruction-set levels this CPU can execute, lowest first.");
  m.def("active_isa", &tinylm::active_isa, "The instruction-set level the kernels use now.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        try {
          tinylm::set_isa(name);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("name"), "Caps the kernels at an instruction-set level (like TINYLM_ISA).");
  m.def("num_threads", &tinylm::num_threads, "Threads the kernels use.");
  m.def("set_num_threads", &tinylm::set_num_threads, py::arg("n"),
        "Sets the kernels' thread count; n < 1 means one per core, at most MAX_THREADS.");
  m.attr("MAX_THREADS") = tinylm::kMaxThreads;
}

// ---------------------------------------------------------------- attention kernels
// (csrc/attention/)

template <typename T>
void require_aligned(const py::array_t<T>& a, const char* name) {
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)
    bad_arg(name, "data is not aligned to its element size (copy it with numpy.array)");
}

// Output arrays of the attention kernels come from a small cache of recently freed
// buffers. Training calls the kernels with the same shapes in every layer and step, and a
// fresh multi-megabyte array costs a page fault (and the kernel zeroing a page) per 4 KB
// on first touch: on short sequences that is as much time as the attention itself.
class OutputCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 16;    // smaller: ordinary numpy arrays
  static constexpr size_t kMaxCached = size_t(1) << 27;   // keep at most 128 MB of free buffers
  static constexpr size_t kHeader = 64;                   // the size, then 64-byte-aligned data

  static OutputCache& get() {
    static OutputCache* cache = new OutputCache;  // leaked: capsules may outlive statics
    return *cache;
  }

  float* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = free_.size(); i-- > 0;)  // the most recently freed first
        if (size_of(free_[i]) == bytes) {
          char* base = free_[i];
          free_.erase(free_.begin() + std::ptrdiff_t(i));
          cached_ -= bytes;
          return reinterpret_cast<float*>(base + kHeader);
        }
    }
    char* base = static_cast<char*>(std::aligned_alloc(64, kHeader + (bytes + 63) / 64 * 64));
    if (base == nullptr) throw std::bad_alloc();
    *reinterpret_cast<size_t*>(base) = bytes;
    return reinterpret_cast<float*>(base + kHeader);
  }

  void give(void* data) {
    char* base = static_cast<char*>(data) - kHeader;
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(base);
    cached_ += size_of(base);
    while (cached_ > kMaxCached) {  // drop the oldest
      cached_ -= size_of(free_.front());
      std::free(free_.front());
      free_.erase(free_.begin());
    }
  }

 private:
  static size_t size_of(const char* base) { return *reinterpret_cast<const size_t*>(base); }
  std::mutex mutex_;
  std::vector<char*> free_;
  size_t cached_ = 0;
};

// A new C-contiguous float32 array (contents uninitialized) for a kernel to fill.
py::array_t<float> new_output(std::vector<py::ssize_t> shape) {
  size_t count = 1;
  for (py::ssize_t n : shape) count *= size_t(n);
  if (count * sizeof(float) < OutputCache::kMinBytes) return py::array_t<float>(shape);
  float* data = OutputCache::get().take(count * sizeof(float));
  py::capsule owner(data, [](void* p) { OutputCache::get().give(p); });
  return py::array_t<float>(shape, data, owner);
}

// A float32, C-contiguous, aligned, non-empty array with `ndim` dimensions (also the
// float32 form of a cache or a conversion's array).
py::array_t<float> attention_arg(const py::handle& obj, const char* name, int ndim) {
  auto a = checked<float>(obj, name, ndim);
  require_aligned(a, name);
  return a;
}

// numpy's float16 in this machine's byte order: pybind11 has no C++ half type, so the
// kernels take such arrays as uint16_t.
bool is_half(const py::array& a) {
  constexpr int kNpyHalf = 23;  // NPY_HALF
  const uint16_t probe = 1;
  const char native = *reinterpret_cast<const char*>(&probe) == 1 ? '<' : '>';
  const char order = a.dtype().byteorder();
  return a.dtype().num() == kNpyHalf && (order == '=' || order == native);
}

// A float16 array with `ndim` dimensions, C-contiguous, aligned, non-empty.
py::array checked_half(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj)) bad_arg(name, "expected a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!is_half(a))
    bad_arg(name, "expected dtype float16 in this machine's byte order, got " +
                      std::string(py::str(a.dtype())) + " (convert with .astype(numpy.float16))");
  require_layout(a, name, ndim);
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(uint16_t) != 0)
    bad_arg(name, "data is not aligned to its element size (copy it with numpy.array)");
  return a;
}

// A key/value cache: float32 or float16, with `ndim` dimensions, as checked above.
py::array cache_arg(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj)) bad_arg(name, "expected a numpy array");
  const auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() == 'f' && a.itemsize() == 2) return checked_half(obj, name, ndim);
  return attention_arg(obj, name, ndim);
}

// src and dst of a float16 <-> float32 conversion: checked as above (any shape, the same
// number of elements), dst writeable.
std::pair<py::array, py::array> conversion_args(const py::object& src_, bool src_half,
                                                const py::object& dst_, bool dst_half) {
  auto arg = [](const py::object& o, const char* name, bool half) -> py::array {
    if (!py::isinstance<py::array>(o)) bad_arg(name, "expected a numpy array");
    const int ndim = int(py::reinterpret_borrow<py::array>(o).ndim());
    return half ? checked_half(o, name, ndim) : py::array(attention_arg(o, name, ndim));
  };
  auto src = arg(src_, "src", src_half), dst = arg(dst_, "dst", dst_half);
  if (src.size() != dst.size())
    bad_arg("dst", "has " + std::to_string(dst.size()) + " elements, src " +
                       std::to_string(src.size()));
  require_writeable(dst, "dst");
  return {src, dst};
}

void require_same_dtype(const py::array& a, const char* name, const py::array& like,
                        const char* like_name) {
  if (is_half(a) != is_half(like))
    bad_arg(name, "dtype " + std::string(py::str(a.dtype())) + " must equal the dtype of '" +
                      like_name + "' (" + std::string(py::str(like.dtype())) + ")");
}

void require_same_shape(const py::array& a, const char* name, const py::array& like,
                        const char* like_name) {
  bool same = a.ndim() == like.ndim();
  for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == like.shape(i);
  if (!same)
    bad_arg(name, "shape " + shape_str(a) + " must equal the shape of '" + like_name + "' " +
                      shape_str(like));
}

// q [B,H,T,D] and k, v [B,Hkv,T,D] -> the kernel's dimensions.
tinylm::attention::Dims attention_dims(const py::array& q, const py::array& k,
                                       const py::array& v) {
  require_dim(k, "k", 0, q.shape(0), "batch of q");
  require_dim(k, "k", 2, q.shape(2), "sequence length of q");
  require_dim(k, "k", 3, q.shape(3), "head_dim of q");
  require_same_shape(v, "v", k, "k");
  if (q.shape(1) % k.shape(1) != 0)
    bad_arg("k", "shape " + shape_str(k) + ": its " + std::to_string(k.shape(1)) +
                     " kv heads must divide the " + std::to_string(q.shape(1)) +
                     " heads of q");
  if (q.shape(3) > tinylm::attention::kMaxHeadDim)
    bad_arg("q", "head_dim " + std::to_string(q.shape(3)) + " is above the supported " +
                     std::to_string(tinylm::attention::kMaxHeadDim));
  return {q.shape(0), q.shape(1), k.shape(1), q.shape(2), q.shape(3)};
}

template <typename Fn>
void run_kernel(Fn&& fn) {
  try {
    py::gil_scoped_release release;
    fn();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// Int8 keys (attention.h's Int8Keys) as a pair (codes, scales): codes uint8 [lead...,
// capacity / 16, head_dim / 4, 16, 4] and scales float32 [lead..., capacity], capacity
// and head_dim rounded up (tinylm/kvcache.py's layout).
struct Int8KeysArg {
  py::array_t<uint8_t> codes;
  py::array_t<float> scales;
  // the view the kernels take (the engine writes through it; attention only reads)
  tinylm::attention::Int8Keys view() const {
    return {const_cast<uint8_t*>(codes.data()), const_cast<float*>(scales.data())};
  }
};

Int8KeysArg int8_keys_arg(const py::handle& k, const std::vector<int64_t>& lead,
                          const std::string& lead_names, int64_t capacity, int64_t head_dim) {
  namespace A = tinylm::attention;
  if (!py::isinstance<py::tuple>(k) || py::len(k) != 2)
    bad_arg("k_cache", "int8 keys are a pair (codes, scales)");
  auto pair = py::reinterpret_borrow<py::tuple>(k);
  const int n = int(lead.size());
  Int8KeysArg keys{checked<uint8_t>(pair[0], "k_cache codes", n + 4),
                   checked<float>(pair[1], "k_cache scales", n + 1)};
  const int64_t P = A::key_positions(capacity);
  std::vector<int64_t> code_shape = lead, scale_shape = lead;
  for (int64_t d : {P / A::kKeyBlock, A::key_row_bytes(head_dim) / 4, A::kKeyBlock, int64_t(4)})
    code_shape.push_back(d);
  scale_shape.push_back(P);
  for (int axis = 0; axis < n + 4; ++axis)
    require_dim(keys.codes, "k_cache codes", axis, code_shape[size_t(axis)],
                "[" + lead_names + ", capacity / 16, head_dim / 4, 16, 4], both rounded up");
  for (int axis = 0; axis < n + 1; ++axis)
    require_dim(keys.scales, "k_cache scales", axis, scale_shape[size_t(axis)],
                "[" + lead_names + ", capacity rounded up to 16]");
  require_aligned(keys.scales, "k_cache scales");
  return keys;
}

// attention_decode over int8 keys (attention.h's Int8Keys): k_ a pair (codes, scales).
py::array_t<float> attention_decode_int8_keys(const py::array_t<float>& q, const py::object& k_,
                                              const py::object& v_, int64_t length) {
  namespace A = tinylm::attention;
  auto vc = checked_half(v_, "v_cache", 3);
  const int64_t H = q.shape(0), D = q.shape(1), Hkv = vc.shape(0), C = vc.shape(1);
  require_dim(vc, "v_cache", 2, D, "head_dim of q");
  if (Hkv < 1 || H % Hkv != 0)
    bad_arg("v_cache", "shape " + shape_str(vc) + ": its kv heads must divide the " +
                           std::to_string(H) + " heads of q");
  if (D > A::kMaxHeadDim)
    bad_arg("q", "head_dim " + std::to_string(D) + " is above the supported " +
                     std::to_string(A::kMaxHeadDim));
  const Int8KeysArg keys = int8_keys_arg(k_, {Hkv}, "kv heads", C, D);
  if (length < 1 || length > C)
    bad_arg("length", std::to_string(length) + " is outside [1, " + std::to_string(C) +
                          "] (the cache capacity)");
  const A::DecodeDims d{H, Hkv, C, length, D};
  auto out = new_output({H, D});
  float* o = out.mutable_data();
  const auto* values = static_cast<const uint16_t*>(vc.data());
  run_kernel([&] { A::decode(d, q.data(), keys.view(), values, o); });
  return out;
}

void bind_attention(py::module_& m) {
  m.def(
      "attention_forward",
      [](py::object q_, py::object k_, py::object v_) {
        auto q = attention_arg(q_, "q", 4), k = attention_arg(k_, "k", 4),
             v = attention_arg(v_, "v", 4);
        const auto d = attention_dims(q, k, v);
        auto out = new_output({d.batch, d.heads, d.seq, d.head_dim});
        auto lse = new_output({d.batch, d.heads, d.seq});
        float* o = out.mutable_data();
        float* l = lse.mutable_data();
        run_kernel([&] { tinylm::attention::forward(d, q.data(), k.data(), v.data(), o, l); });
        return py::make_tuple(out, lse);
      },
      py::arg("q"), py::arg("k"), py::arg("v"),
      "Causal attention forward. q [B,H,T,D], k and v [B,Hkv,T,D] float32 -> (out "
      "[B,H,T,D], lse [B,H,T]).");
  m.def(
      "attention_backward",
      [](py::object q_, py::object k_, py::object v_, py::object out_, py::object lse_,
         py::object dout_) {
        auto q = attention_arg(q_, "q", 4), k = attention_arg(k_, "k", 4),
             v = attention_arg(v_, "v", 4), out = attention_arg(out_, "out", 4),
             lse = attention_arg(lse_, "lse", 3), dout = attention_arg(dout_, "dout", 4);
        const auto d = attention_dims(q, k, v);
        require_same_shape(out, "out", q, "q");
        require_same_shape(dout, "dout", q, "q");
        for (int axis = 0; axis < 3; ++axis)
          require_dim(lse, "lse", axis, q.shape(axis), "[B, H, T] of q");
        auto dq = new_output({d.batch, d.heads, d.seq, d.head_dim});
        auto dk = new_output({d.batch, d.kv_heads, d.seq, d.head_dim});
        auto dv = new_output({d.batch, d.kv_heads, d.seq, d.head_dim});
        float *gq = dq.mutable_data(), *gk = dk.mutable_data(), *gv = dv.mutable_data();
        run_kernel([&] {
          tinylm::attention::backward(d, q.data(), k.data(), v.data(), out.data(), lse.data(),
                                      dout.data(), gq, gk, gv);
        });
        return py::make_tuple(dq, dk, dv);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dout"),
      "Causal attention backward from the forward's out and lse -> (dq, dk, dv).");
  m.def(
      "attention_decode",
      [](py::object q_, py::object k_, py::object v_, int64_t length) {
        auto q = attention_arg(q_, "q", 2);
        if (py::isinstance<py::tuple>(k_)) return attention_decode_int8_keys(q, k_, v_, length);
        auto kc = cache_arg(k_, "k_cache", 3), vc = cache_arg(v_, "v_cache", 3);
        require_dim(kc, "k_cache", 2, q.shape(1), "head_dim of q");
        require_same_shape(vc, "v_cache", kc, "k_cache");
        require_same_dtype(vc, "v_cache", kc, "k_cache");
        if (q.shape(0) % kc.shape(0) != 0)
          bad_arg("k_cache", "shape " + shape_str(kc) + ": its " + std::to_string(kc.shape(0)) +
                                 " kv heads must divide the " + std::to_string(q.shape(0)) +
                                 " heads of q");
        if (length < 1 || length > kc.shape(1))
          bad_arg("length", std::to_string(length) + " is outside [1, " +
                                std::to_string(kc.shape(1)) + "] (the cache capacity)");
        if (q.shape(1) > tinylm::attention::kMaxHeadDim)
          bad_arg("q", "head_dim " + std::to_string(q.shape(1)) + " is above the supported " +
                           std::to_string(tinylm::attention::kMaxHeadDim));
        const tinylm::attention::DecodeDims d{q.shape(0), kc.shape(0), kc.shape(1), length,
                                              q.shape(1)};
        auto out = new_output({d.heads, d.head_dim});
        float* o = out.mutable_data();
        run_kernel([&] {
          if (is_half(kc))
            tinylm::attention::decode(d, q.data(), static_cast<const uint16_t*>(kc.data()),
                                      static_cast<const uint16_t*>(vc.data()), o);
          else
            tinylm::attention::decode(d, q.data(), static_cast<const float*>(kc.data()),
                                      static_cast<const float*>(vc.data()), o);
        });
        return out;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("length"),
      "One query per head against cache positions [0, length). q [H,D] float32, k_cache and "
      "v_cache [Hkv, capacity, D], both float32 or both float16, or k_cache int8 keys (codes "
      "uint8 [Hkv, capacity / 16, D / 4, 16, 4], scales float32 [Hkv, capacity], capacity "
      "and D rounded up; tinylm/kvcache.py) with v_cache float16 -> out [H,D].");
  m.def("attention_path", &tinylm::attention::active_path,
        "The attention implementation the active ISA level selects.");
}

// ---------------------------------------------------------------- int8 kernels
// (csrc/int8/)

// The kernels accumulate in int32: K * 127 * 127 must fit, which holds up to K = 65536.
constexpr py::ssize_t kInt8MaxK = 65536;

void require_int8_k(const py::array& a, const char* name) {
  if (a.shape(1) > kInt8MaxK)
    bad_arg(name, "shape " + shape_str(a) + ": K = " + std::to_string(a.shape(1)) +
                      " exceeds " + std::to_string(kInt8MaxK) +
                      " (int32 accumulation of 127*127 products would overflow)");
}

// -128 breaks the AVX2 sign trick and the NEON int16 pair sums (see csrc/int8/int8.h).
void require_no_minus128(const py::array_t<int8_t>& a, const char* name) {
  const int8_t* p = a.data();
  for (py::ssize_t i = 0; i < a.size(); ++i)
    if (p[i] == -128)
      bad_arg(name, "contains -128 at flat index " + std::to_string(i) +
                        "; int8 operands must lie in [-127, 127] (symmetric quantization)");
}

void bind_int8(py::module_& m) {
  m.def(
      "int8_quantize_rows",
      [](const py::handle& x_obj) {
        auto x = checked<float>(x_obj, "x", 2);
        const py::ssize_t M = x.shape(0), K = x.shape(1);
        py::array_t<int8_t> q({M, K});
        py::array_t<float> scale(M);
        {
          py::gil_scoped_release release;
          tinylm::int8::quantize_rows(x.data(), M, K, q.mutable_data(), K, scale.mutable_data());
        }
        return py::make_tuple(q, scale);
      },
      py::arg("x"),
      "Symmetric per-row int8 quantization of float32 x [M, K]: returns (q int8 [M, K], "
      "scale float32 [M]) with q = rint(x * 127 / max|row|) in [-127, 127], "
      "x ~= q * scale.");
  m.def(
      "int8_gemm_i32",
      [](const py::handle& a_obj, const py::handle& b_obj) {
        auto a = checked<int8_t>(a_obj, "a", 2);
        auto b = checked<int8_t>(b_obj, "b", 2);
        require_dim(b, "b", 1, a.shape(1), "b is [N, K] with the K of a [M, K]");
        require_int8_k(a, "a");
        require_no_minus128(a, "a");
        require_no_minus128(b, "b");
        const py::ssize_t M = a.shape(0), N = b.shape(0), K = a.shape(1);
        py::array_t<int32_t> c({M, N});
        {
          py::gil_scoped_release release;
          tinylm::int8::gemm_i32(a.data(), b.data(), c.mutable_data(), M, N, K);
        }
        return c;
      },
      py::arg("a"), py::arg("b"),
      "Exact int32 c = a @ b.T for int8 a [M, K] and b [N, K] (values in [-127, 127]) on "
      "the active instruction-set path; for testing every path against the reference.");
  m.def(
      "int8_linear",
      [](const py::handle& x_obj, const py::handle& w_obj, const py::handle& s_obj,
         const py::object& out_obj) {
        auto x = checked<float>(x_obj, "x", 2);
        auto w = checked<int8_t>(w_obj, "weight", 2);
        auto s = checked<float>(s_obj, "scale", 1);
        require_dim(w, "weight", 1, x.shape(1), "weight is [N, K] with the K of x [M, K]");
        require_dim(s, "scale", 0, w.shape(0), "one scale per weight row");
        require_int8_k(x, "x");
        const py::ssize_t M = x.shape(0), N = w.shape(0), K = x.shape(1);
        py::array_t<float> out;
        if (out_obj.is_none()) {
          out = py::array_t<float>({M, N});
        } else {
          out = checked<float>(out_obj, "out", 2);
          require_dim(out, "out", 0, M, "one row per row of x");
          require_dim(out, "out", 1, N, "one column per weight row");
          require_writeable(out, "out");
        }
        {
          py::gil_scoped_release release;
          tinylm::int8::linear(x.data(), M, K, w.data(), s.data(), N, out.mutable_data());
        }
        return out;
      },
      py::arg("x"), py::arg("weight"), py::arg("scale"), py::arg("out") = py::none(),
      "y [M, N] = dequant(q(x) . weight.T): float32 x [M, K] quantized per row, int8 "
      "weight [N, K] (values in [-127, 127], not re-checked here) with float32 scale [N].");
  m.def("int8_path", &tinylm::int8::active_kernel,
        "The int8 kernel the active instruction-set level selects (e.g. 'avx512vnni').");
  m.def(
      "int8_kernels",
      [] {
        std::vector<std::string> names;
        for (const auto& k : tinylm::int8::kernels()) names.push_back(k.name);
        return names;
      },
      "The int8 kernels compiled into this build, best first.");
  m.def(
      "int8_read_checksum",
      [](const py::handle& a_obj) {
        auto a = checked<uint64_t>(a_obj, "data", 1);
        py::gil_scoped_release release;
        return tinylm::int8::read_checksum(a.data(), a.size());
      },
      py::arg("data"),
      "Wrapping sum of a uint64 array, read with the kernels' threads (measures the "
      "streaming read bandwidth in benchmarks/bench_int8.py).");
  m.def("int8_read_path", [] { return std::string(tinylm::int8::read_path()); },
        "The loads int8_read_checksum uses at the active level: avx512, avx2 or portable.");
}


// ---------------------------------------------------------------- inference engine
// (csrc/engine/)

// The C++ engine plus references to every array it reads or writes (memory-mapped
// weights, the cache), so none of them can be freed while the engine lives.
struct EngineHandle {
  std::unique_ptr<tinylm::engine::Engine> engine;
  std::vector<py::object> keep_alive;
};

// A float32 vector of n elements (a norm's weights).
const float* engine_vector(const py::handle& obj, const std::string& name, int64_t n,
                           std::vector<py::object>& keep) {
  auto a = checked<float>(obj, name.c_str(), 1);
  require_dim(a, name.c_str(), 0, n, "d_model");
  keep.push_back(a);
  return a.data();
}

// A float32 matrix, or a (int8 panels, float32 scales) pair for an int8 one of `cols`
// columns: panels [ceil(rows / 16), ceil(cols / 4), 16, 4] (csrc/engine/gemv_panels.h),
// one scale a row. Shapes are checked against the config by the engine itself
// (validate()).
tinylm::engine::Matrix engine_matrix(const py::handle& obj, const std::string& name, int64_t cols,
                                     std::vector<py::object>& keep) {
  tinylm::engine::Matrix m;
  if (py::isinstance<py::tuple>(obj)) {
    auto t = obj.cast<py::tuple>();
    if (t.size() != 2) bad_arg(name, "an int8 matrix is a (panels, scales) pair");
    auto q = checked<int8_t>(t[0], name.c_str(), 4);
    auto s = checked<float>(t[1], (name + " scales").c_str(), 1);
    if (cols > kInt8MaxK)
      bad_arg(name, std::to_string(cols) + " columns exceed " + std::to_string(kInt8MaxK) +
                        " (int32 accumulation of 127*127 products would overflow)");
    const int64_t rows = s.shape(0);
    const py::ssize_t want[4] = {(rows + 15) / 16, (cols + 3) / 4, 16, 4};
    for (int axis = 0; axis < 4; ++axis)
      require_dim(q, name.c_str(), axis, want[axis],
                  "panels [ceil(rows / 16), ceil(cols / 4), 16, 4] for " + std::to_string(rows) +
                      " rows (scales) and " + std::to_string(cols) + " columns");
    m.q = q.data();
    m.scale = s.data();
    m.rows = rows;
    m.cols = cols;
    keep.push_back(q);
    keep.push_back(s);
  } else {
    auto a = checked<float>(obj, name.c_str(), 2);
    m.f32 = a.data();
    m.rows = a.shape(0);
    m.cols = a.shape(1);
    keep.push_back(a);
  }
  return m;
}

int64_t config_int(const py::dict& cfg, const char* key) {
  if (!cfg.contains(key)) bad_arg("config", std::string("missing '") + key + "'");
  return cfg[key].cast<int64_t>();
}

std::unique_ptr<EngineHandle> make_engine(const py::dict& cfg_d, const py::handle& embed,
                                          const py::handle& final_norm, const py::list& layers,
                                          const py::handle& k_obj, const py::handle& v_obj,
                                          const py::handle& cos_obj, const py::handle& sin_obj) {
  namespace E = tinylm::engine;
  auto h = std::make_unique<EngineHandle>();
  auto& keep = h->keep_alive;
  E::Config c{config_int(cfg_d, "vocab_size"), config_int(cfg_d, "d_model"),
              config_int(cfg_d, "n_layer"),    config_int(cfg_d, "n_head"),
              config_int(cfg_d, "n_kv_head"),  config_int(cfg_d, "d_ff"),
              config_int(cfg_d, "context"),    cfg_d.contains("norm_eps") ? cfg_d["norm_eps"].cast<float>() : 1e-5f};
  if (c.n_layer < 1 || c.n_head < 1 || c.d_model < 1 || c.d_model % c.n_head)
    bad_arg("config", "n_layer, n_head and d_model must be positive, d_model a multiple of n_head");
  E::Weights w;
  w.embed = engine_matrix(embed, "embed", c.d_model, keep);
  w.final_norm = engine_vector(final_norm, "final_norm", c.d_model, keep);
  if (int64_t(layers.size()) != 9 * c.n_layer)
    bad_arg("layers", "expected 9 tensors per layer (norm, q, k, v, o, norm, gate, up, down), "
                      "got " + std::to_string(layers.size()) + " for " + std::to_string(c.n_layer) + " layers");
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "layer " + std::to_string(i) + " ";
    auto at = [&](int j) { return layers[size_t(9 * i + j)]; };
    E::Layer L;
    L.attn_norm = engine_vector(at(0), p + "input_layernorm", c.d_model, keep);
    L.q = engine_matrix(at(1), p + "q_proj", c.d_model, keep);
    L.k = engine_matrix(at(2), p + "k_proj", c.d_model, keep);
    L.v = engine_matrix(at(3), p + "v_proj", c.d_model, keep);
    L.o = engine_matrix(at(4), p + "o_proj", c.d_model, keep);
    L.mlp_norm = engine_vector(at(5), p + "post_attention_layernorm", c.d_model, keep);
    L.gate = engine_matrix(at(6), p + "gate_proj", c.d_model, keep);
    L.up = engine_matrix(at(7), p + "up_proj", c.d_model, keep);
    L.down = engine_matrix(at(8), p + "down_proj", c.d_ff, keep);
    w.layers.push_back(L);
  }
  const int64_t D = c.d_model / c.n_head;
  E::State state{};
  // a float32 model's keys, or an int8 model's (codes, scales)
  const bool int8_keys = py::isinstance<py::tuple>(k_obj);
  auto vc = cache_arg(v_obj, "v_cache", 4);
  const int64_t cache_shape[4] = {c.n_layer, c.n_kv_head, c.context, D};
  for (int axis = 0; axis < 4; ++axis)
    require_dim(vc, "v_cache", axis, cache_shape[axis], "[n_layer, n_kv_head, context, head_dim]");
  require_writeable(vc, "v_cache");
  keep.push_back(vc);
  if (int8_keys) {
    if (!is_half(vc)) bad_arg("v_cache", "with int8 keys the values must be float16");
    Int8KeysArg keys =
        int8_keys_arg(k_obj, {c.n_layer, c.n_kv_head}, "n_layer, n_kv_head", c.context, D);
    require_writeable(keys.codes, "k_cache codes");
    require_writeable(keys.scales, "k_cache scales");
    state.k_codes = keys.codes.mutable_data();
    state.k_scales = keys.scales.mutable_data();
    state.v_half = static_cast<uint16_t*>(vc.mutable_data());
    keep.push_back(keys.codes);
    keep.push_back(keys.scales);
  } else {
    auto kc = attention_arg(k_obj, "k_cache", 4);
    require_same_dtype(vc, "v_cache", kc, "k_cache");
    for (int axis = 0; axis < 4; ++axis)
      require_dim(kc, "k_cache", axis, cache_shape[axis],
                  "[n_layer, n_kv_head, context, head_dim]");
    require_writeable(kc, "k_cache");
    state.k_cache = kc.mutable_data();
    state.v_cache = static_cast<float*>(vc.mutable_data());
    keep.push_back(kc);
  }
  auto cs = checked<float>(cos_obj, "cos", 2), sn = checked<float>(sin_obj, "sin", 2);
  for (auto* t : {&cs, &sn}) {
    const char* name = t == &cs ? "cos" : "sin";
    require_dim(*t, name, 0, c.context, "[context, head_dim / 2]");
    require_dim(*t, name, 1, D / 2, "[context, head_dim / 2]");
  }
  keep.push_back(cs);
  keep.push_back(sn);
  state.cos = cs.data();
  state.sin = sn.data();
  try {
    h->engine = std::make_unique<E::Engine>(c, std::move(w), state);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  return h;
}

void bind_engine(py::module_& m) {
  namespace E = tinylm::engine;
  py::class_<EngineHandle>(m, "Engine",
                           "The native decode step over memory-mapped weights and a shared "
                           "KV cache (see tinylm/engine.py, NativeEngine).")
      .def(py::init(&make_engine), py::arg("config"), py::arg("embed"), py::arg("final_norm"),
           py::arg("layers"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cos"),
           py::arg("sin"),
           "config: dict of the model's sizes; embed and each matrix a float32 array or an "
           "(int8 panels, float32 scales) pair (tinylm.quant.to_panels); layers: 9 tensors "
           "per layer in tinylm.model.LAYER_PARAMS order; k_cache, v_cache [n_layer, "
           "n_kv_head, context, head_dim] float32, or for an int8 model k_cache a pair "
           "(codes uint8 [n_layer, "
           "n_kv_head, context / 16, head_dim / 4, 16, 4], scales float32 [n_layer, n_kv_head, "
           "context rounded up to 16]; tinylm/kvcache.py) and v_cache float16 (all written in "
           "place); cos, sin [context, head_dim / 2].")
      .def(
          "step",
          [](EngineHandle& h, int32_t token, int64_t pos) {
            py::array_t<float> logits(h.engine->config().vocab_size);
            float* out = logits.mutable_data();
            run_kernel([&] { h.engine->step(token, pos, out); });
            return logits;
          },
          py::arg("token"), py::arg("pos"),
          "Runs token at position pos (cache holds [0, pos)); returns logits [vocab].")
      .def(
          "prefill",
          [](EngineHandle& h, const py::handle& ids_obj, int64_t pos, bool all_logits) {
            auto ids_array = checked<int32_t>(ids_obj, "ids", 1);
            // a copy: checked and then read with the GIL released, the ids must not change
            const std::vector<int32_t> ids(ids_array.data(), ids_array.data() + ids_array.size());
            const int64_t T = int64_t(ids.size()), V = h.engine->config().vocab_size;
            py::array_t<float> logits = all_logits ? py::array_t<float>({T, V}) : py::array_t<float>(V);
            float* out = logits.mutable_data();
            run_kernel([&] { h.engine->prefill(ids.data(), T, pos, out, all_logits); });
            return logits;
          },
          py::arg("ids"), py::arg("pos"), py::arg("all_logits") = false,
          "Runs tokens ids (int32) at positions [pos, pos + len(ids)) in one batched pass "
          "(int8 weights); returns the last one's logits [vocab] (all of them [T, vocab] with "
          "all_logits).")
      .def(
          "decode",
          [](EngineHandle& h, int32_t token, int64_t pos, int64_t max_tokens, double temperature,
             int64_t top_k, double top_p, double repetition_penalty, uint64_t rng_state,
             const std::vector<int32_t>& history, int32_t stop_token, int64_t window) {
            E::Sampling s;
            s.temperature = temperature;
            s.top_k = top_k;
            s.top_p = top_p;
            s.repetition_penalty = repetition_penalty;
            if (!(temperature >= 0) || top_k < 0 || !(top_p > 0 && top_p <= 1) ||
                !(repetition_penalty >= 1))
              bad_arg("sampling", "temperature >= 0, top_k >= 0, 0 < top_p <= 1, "
                                  "repetition_penalty >= 1 (check with tinylm.sampling)");
            if (max_tokens < 1) bad_arg("max_tokens", "must be at least 1");
            std::vector<int32_t> out(static_cast<size_t>(max_tokens));
            E::Engine::Decoded r;
            run_kernel([&] {
              r = h.engine->decode(token, pos, max_tokens, s, &rng_state, history.data(),
                                   int64_t(history.size()), stop_token, window, out.data());
            });
            out.resize(size_t(r.picks));
            return py::make_tuple(py::cast(out), rng_state, r.length, r.slides, r.slide_seconds);
          },
          py::arg("token"), py::arg("pos"), py::arg("max_tokens"), py::arg("temperature"),
          py::arg("top_k"), py::arg("top_p"), py::arg("repetition_penalty"),
          py::arg("rng_state"), py::arg("history"), py::arg("stop_token"), py::arg("window") = 0,
          "Runs token at pos, picks the next token as tinylm.sampling.Sampler does, runs "
          "it, ... up to max_tokens picks; stops after a pick equal to stop_token. history: "
          "the tokens so far, ending with `token` (for the repetition penalty and the "
          "window). When the cache is full the call ends (window 0) or, with int8 weights "
          "and window > 0, slides: the newest `window` tokens are prefilled at positions "
          "0.. and the next token picked from their logits. Returns (picks, new rng_state, "
          "the cache's length, slides, seconds spent sliding).")
      .def_property_readonly(
          "native_seconds", [](const EngineHandle& h) { return h.engine->native_seconds(); },
          "Seconds spent inside step() and decode()'s steps (not its slides) so far.")
      .def_property(
          "max_threads", [](const EngineHandle& h) { return h.engine->max_threads(); },
          [](EngineHandle& h, int n) { h.engine->set_max_threads(n); },
          "Threads a step uses at most (the pool's size caps it): one per MB of weights "
          "unless set.");
  m.def(
      "engine_gemv",
      [](const py::handle& x_obj, const py::list& mats) {
        auto x = checked<float>(x_obj, "x", 1);
        std::vector<py::object> keep;
        std::vector<E::Matrix> ms;
        std::vector<py::array_t<float>> outs;
        if (mats.size() < 1 || mats.size() > 8) bad_arg("matrices", "give 1 to 8 matrices");
        for (size_t i = 0; i < mats.size(); ++i) {
          const std::string name = "matrices[" + std::to_string(i) + "]";
          ms.push_back(engine_matrix(mats[i], name, x.shape(0), keep));
          if (ms.back().cols != x.shape(0) || ms.back().is_int8() != ms.front().is_int8())
            bad_arg("matrices", "every matrix must be [N, len(x)], all float32 or all int8");
          outs.emplace_back(ms.back().rows);
        }
        std::vector<E::Product> ps;
        for (size_t i = 0; i < ms.size(); ++i) ps.push_back({&ms[i], outs[i].mutable_data()});
        run_kernel([&] { E::gemv(x.data(), ps.data(), int(ps.size())); });
        return outs;
      },
      py::arg("x"), py::arg("matrices"),
      "The decode step's fused matrix-vector product: [W @ x for W in matrices], each W a "
      "float32 array or an (int8 panels, scales) pair (tinylm.quant.to_panels; tests).");
  m.def("engine_gemv_path", &E::active_gemv, "The float32 GEMV kernel the active ISA selects.");
  m.def("engine_gemv_int8_path", &E::active_gemv_int8,
        "The int8 decode GEMV kernel the active ISA selects.");
  m.def(
      "engine_sample",
      [](const py::handle& logits_obj, double temperature, int64_t top_k, double top_p,
         double repetition_penalty, uint64_t rng_state, const std::vector<int32_t>& history) {
        auto logits = checked<float>(logits_obj, "logits", 1);
        E::Sampling s;
        s.temperature = temperature;
        s.top_k = top_k;
        s.top_p = top_p;
        s.repetition_penalty = repetition_penalty;
        E::SampleScratch scratch;
        const int32_t next = E::sample(logits.data(), logits.shape(0), s, &rng_state,
                                       history.data(), int64_t(history.size()), scratch);
        return py::make_tuple(next, rng_state);
      },
      py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
      py::arg("repetition_penalty"), py::arg("rng_state"), py::arg("history"),
      "The native sampler alone on float32 logits: (token, new rng_state). Generation "
      "picks the token after each prefill with it; the sampling values are checked by "
      "tinylm.sampling.check_sampling when a Sampler is made.");
  m.def("engine_seed_state", &E::seed_state, py::arg("seed"), "splitmix64 seeding (tests).");
  m.def(
      "engine_weigh",
      [](const py::handle& x_obj, double top, double inverse_temperature, double unit) {
        auto x = checked<double>(x_obj, "x", 1);
        for (py::ssize_t i = 0; i < x.shape(0); ++i)
          if (x.data()[i] > top)  // (the sampler's top is the largest logit)
            throw std::invalid_argument("engine_weigh takes x <= top (or NaN)");
        if (!(inverse_temperature > 0) || !(unit > 0 && unit <= 0x1p52))
          throw std::invalid_argument(
              "engine_weigh takes inverse_temperature > 0 and 0 < unit <= 2^52");
        py::array_t<uint64_t> out(x.shape(0));
        E::weigh(x.data(), x.shape(0), top, inverse_temperature, unit, out.mutable_data());
        return out;
      },
      py::arg("x"), py::arg("top"), py::arg("inverse_temperature"), py::arg("unit"),
      "The native sampler's weights floor(weight_exp((x - top) * inverse_temperature) * unit "
      "+ 0.5) for float64 x <= top, with the active level's kernel (tests).");
  m.def(
      "floats_to_halves",
      [](py::object src_, py::object dst_) {
        auto [src, dst] = conversion_args(src_, false, dst_, true);
        tinylm::floats_to_halves(static_cast<const float*>(src.data()),
                                 static_cast<uint16_t*>(dst.mutable_data()), src.size());
      },
      py::arg("src"), py::arg("dst"),
      "dst[...] = src rounded to float16 as the decode engine rounds (as numpy's astype); "
      "src float32 and dst float16, C-contiguous, the same size.");
  m.def(
      "halves_to_floats",
      [](py::object src_, py::object dst_) {
        auto [src, dst] = conversion_args(src_, true, dst_, false);
        tinylm::halves_to_floats(static_cast<const uint16_t*>(src.data()),
                                 static_cast<float*>(dst.mutable_data()), src.size());
      },
      py::arg("src"), py::arg("dst"),
      "dst[...] = src widened to float32; src float16 and dst float32, C-contiguous, the "
      "same size.");
  m.def(
      "engine_rng_next",
      [](uint64_t state, int n) {
        std::vector<uint64_t> out;
        for (int i = 0; i < n; ++i) out.push_back(E::rng_next(&state));
        return out;
      },
      py::arg("state"), py::arg("n"), "n numbers of xorshift64* from a state (tests).");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tinylm's native kernels (attention, int8 matrix multiply) and CPU dispatch.";
  try {
    tinylm::init_isa_from_env();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  bind_runtime(m);
  bind_attention(m);
  bind_int8(m);
  bind_engine(m);
}

// The only file that knows Python. Every array that crosses into C++ is checked here
// (dtype, shape, contiguity) and refused with a ValueError naming the argument, so no
// input from Python can crash the process; the GIL is released around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu.h"
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

// Checks that `obj` is a C-contiguous numpy array of dtype T with `ndim` dimensions and
// at least one element, and returns it without copying.
template <typename T>
py::array_t<T> checked(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj)) bad_arg(name, "expected a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    bad_arg(name, "expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                      std::string(py::str(a.dtype())) + " (convert with .astype)");
  if (a.ndim() != ndim)
    bad_arg(name, "expected " + std::to_string(ndim) + " dimensions, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    bad_arg(name, "array is not C-contiguous (use numpy.ascontiguousarray)");
  if (a.size() == 0) bad_arg(name, "array is empty, shape " + shape_str(a));
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

template <typename T>
void require_writeable(const py::array_t<T>& a, const char* name) {
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
        "Sets the kernels' thread count; n < 1 means one per core.");
}

// ---------------------------------------------------------------- attention kernels
// (csrc/attention/)

void bind_attention(py::module_& m) {}

// ---------------------------------------------------------------- int8 kernels
// (csrc/int8/)

void bind_int8(py::module_& m) {}

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
}

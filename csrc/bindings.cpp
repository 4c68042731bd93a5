// medhash_sdk._hamming: the only pybind11 file. Checks every argument (ValueError/TypeError
// that name the fix, never a crash), releases the GIL around the scan, and dispatches to the
// SIMD level chosen at import (MEDHASH_SIMD may force a lower one, for tests).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>

#include "hamming.h"

namespace py = pybind11;

namespace {

std::atomic<int> g_level{medhash::LEVEL_PORTABLE};
int g_best_level = medhash::LEVEL_PORTABLE;

int parse_level(const std::string& name) {
    for (int l = medhash::LEVEL_PORTABLE; l <= medhash::LEVEL_AVX512; ++l)
        if (name == medhash::level_name(l)) return l;
    if (name == "avx512") return medhash::LEVEL_AVX512;
    return -1;
}

std::string levels_list() {
    std::string s;
    for (int l = medhash::LEVEL_PORTABLE; l <= g_best_level; ++l) {
        if (!s.empty()) s += ", ";
        s += std::string("'") + medhash::level_name(l) + "'";
    }
    return s;
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// A C-contiguous uint8 2-D array, or a TypeError/ValueError saying how to make one.
py::array check_codes(const py::handle& obj, const char* what) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(what) + " must be a numpy uint8 array of packed codes, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))) +
                             ": pass np.asarray(" + what + ", dtype=np.uint8)");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<uint8_t>()))
        throw py::type_error(std::string(what) + " must have dtype uint8 (packed bits, nbits // 8 bytes a code), got " +
                             dtype_name(a) + ": pack bits with medhash_sdk.codes.pack_codes or convert with .astype(np.uint8)");
    if (a.ndim() != 2)
        throw py::value_error(std::string(what) + " must be 2-D (rows, nbytes), got " + std::to_string(a.ndim()) +
                              "-D: reshape a single code with " + what + "[None, :]");
    if (a.shape(1) <= 0)
        throw py::value_error(std::string(what) + " must have at least one byte a code (shape (rows, nbytes) with nbytes >= 1)");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous: pass np.ascontiguousarray(" + what + ")");
    return a;
}

int64_t check_int(const py::handle& obj, const char* what, int64_t minimum) {
    if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr()))
        throw py::type_error(std::string(what) + " must be an int, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    PyObject* index = PyNumber_Index(obj.ptr());  // NULL (error set) for e.g. numpy bools
    if (index == nullptr) {
        PyErr_Clear();
        throw py::type_error(std::string(what) + " must be an int, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
    const long long v = PyLong_AsLongLong(py::reinterpret_steal<py::object>(index).ptr());
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error(std::string(what) + " is too large");
    }
    if (v < minimum)
        throw py::value_error(std::string(what) + " must be >= " + std::to_string(minimum) + ", got " + std::to_string(v));
    return static_cast<int64_t>(v);
}

py::tuple search(const py::object& codes_obj, const py::object& queries_obj, const py::object& k_obj,
                 const py::object& threads_obj, const py::object& allow_obj, const py::object& multi_obj) {
    py::array codes = check_codes(codes_obj, "codes");
    py::array queries = check_codes(queries_obj, "queries");
    if (queries.shape(1) != codes.shape(1))
        throw py::value_error("queries have " + std::to_string(queries.shape(1)) + " bytes a code but codes have " +
                              std::to_string(codes.shape(1)) + ": both must come from the same model (nbits // 8 bytes)");
    const int64_t k = check_int(k_obj, "k", 1);
    const int64_t threads = check_int(threads_obj, "threads", 1);
    if (threads > 4096) throw py::value_error("threads must be <= 4096, got " + std::to_string(threads));
    const int64_t n = codes.shape(0), nq = queries.shape(0), nbytes = codes.shape(1);
    if (nbytes * 8 > (int64_t{1} << 24))
        throw py::value_error("codes of more than 2**24 bits are not supported");

    py::array allow;
    const uint8_t* allow_ptr = nullptr;
    if (!allow_obj.is_none()) {
        if (!py::isinstance<py::array>(allow_obj))
            throw py::type_error("allow must be None or a numpy bool/uint8 array of shape (n,), got " +
                                 std::string(py::str(py::type::of(allow_obj).attr("__name__"))) +
                                 ": pass np.asarray(allow, dtype=bool)");
        allow = py::reinterpret_borrow<py::array>(allow_obj);
        if (!allow.dtype().is(py::dtype::of<bool>()) && !allow.dtype().is(py::dtype::of<uint8_t>()))
            throw py::type_error("allow must have dtype bool or uint8 (nonzero = the row may be returned), got " +
                                 dtype_name(allow) + ": convert with allow.astype(bool)");
        if (allow.ndim() != 1 || allow.shape(0) != n)
            throw py::value_error("allow must have shape (" + std::to_string(n) + ",), one flag per code row, got " +
                                  std::string(py::str(allow.attr("shape"))));
        if (!(allow.flags() & py::array::c_style))
            throw py::value_error("allow must be contiguous: pass np.ascontiguousarray(allow)");
        allow_ptr = static_cast<const uint8_t*>(allow.data());
    }
    if (k > (int64_t{1} << 40) / std::max<int64_t>(1, nq))
        throw py::value_error("k * number of queries is too large to allocate the result");

    const medhash::MultiIndex* multi = nullptr;
    if (!multi_obj.is_none()) {
        if (!py::isinstance<medhash::MultiIndex>(multi_obj))
            throw py::type_error("multi_index must be None or a MultiIndex from build_multi_index(), got " +
                                 std::string(py::str(py::type::of(multi_obj).attr("__name__"))));
        multi = multi_obj.cast<const medhash::MultiIndex*>();
        if (multi->nbytes != nbytes)
            throw py::value_error("multi_index was built for " + std::to_string(multi->nbytes * 8) +
                                  "-bit codes but codes have " + std::to_string(nbytes * 8) + " bits: rebuild it");
        if (multi->n > n)
            throw py::value_error("multi_index covers " + std::to_string(multi->n) + " rows but codes have only " +
                                  std::to_string(n) + ": rows were removed since it was built; rebuild it");
    }
    py::array_t<int64_t> rows({nq, k});
    py::array_t<int32_t> dists({nq, k});
    medhash::SearchJob job{static_cast<const uint8_t*>(codes.data()), n, nbytes,
                           static_cast<const uint8_t*>(queries.data()), nq, k, allow_ptr,
                           rows.mutable_data(), dists.mutable_data()};
    const int level = g_level.load(std::memory_order_relaxed);
    {
        py::gil_scoped_release release;
        if (multi != nullptr)
            medhash::search_multi(job, *multi, static_cast<int>(threads), level);
        else
            medhash::search(job, static_cast<int>(threads), level);
    }
    return py::make_tuple(rows, dists);
}

std::unique_ptr<medhash::MultiIndex> build_multi_index(const py::object& codes_obj, const py::object& substrings_obj,
                                                       const py::object& threads_obj, const py::object& copy_codes_obj) {
    py::array codes = check_codes(codes_obj, "codes");
    const int64_t n = codes.shape(0), nbytes = codes.shape(1), nbits = nbytes * 8;
    const int64_t threads = check_int(threads_obj, "threads", 1);
    if (!py::isinstance<py::bool_>(copy_codes_obj))
        throw py::type_error("copy_codes must be True or False, got " +
                             std::string(py::str(py::type::of(copy_codes_obj).attr("__name__"))));
    const bool copy_codes = copy_codes_obj.cast<bool>();
    if (n >= (int64_t{1} << 32))
        throw py::value_error("a multi-index holds at most 2**32 - 1 rows (row numbers are uint32), got " +
                              std::to_string(n) + ": search this index with the scan");
    if (nbits > int64_t{medhash::kMaxSubstrings} * medhash::kMaxSubstringBits)
        throw py::value_error("a multi-index supports codes of at most " +
                              std::to_string(medhash::kMaxSubstrings * medhash::kMaxSubstringBits) + " bits, got " +
                              std::to_string(nbits) + ": search this index with the scan");
    const auto [lo, hi] = medhash::substring_range(nbits);
    int64_t m = 0;
    if (substrings_obj.is_none()) {
        m = medhash::choose_substrings(nbits, n);
    } else {
        m = check_int(substrings_obj, "substrings", 1);
        if (m < lo || m > hi)
            throw py::value_error("substrings must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                                  " for " + std::to_string(nbits) + "-bit codes (each at most " +
                                  std::to_string(medhash::kMaxSubstringBits) + " bits), got " + std::to_string(m) +
                                  ": or pass None to choose from the code size and the number of rows");
    }
    auto mi = std::make_unique<medhash::MultiIndex>();
    {
        py::gil_scoped_release release;
        medhash::build_multi_index(*mi, static_cast<const uint8_t*>(codes.data()), n, nbytes, static_cast<int>(m),
                                   static_cast<int>(std::min<int64_t>(threads, 4096)), copy_codes);
        medhash::calibrate_multi_index(*mi, static_cast<const uint8_t*>(codes.data()), g_level.load());
    }
    return mi;
}

void remove_multi_index_rows(medhash::MultiIndex& mi, const py::object& codes_obj, const py::object& rows_obj) {
    py::array codes = check_codes(codes_obj, "codes");
    if (codes.shape(1) != mi.nbytes || codes.shape(0) < mi.n)
        throw py::value_error("codes must be the " + std::to_string(mi.nbytes) + "-byte codes the tables were built "
                              "over (at least " + std::to_string(mi.n) + " rows), got shape (" +
                              std::to_string(codes.shape(0)) + ", " + std::to_string(codes.shape(1)) + ")");
    auto rows = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(rows_obj);
    if (!rows || rows.ndim() != 1) throw py::type_error("rows must be a 1-D array of row numbers");
    const int64_t* r = rows.data();
    const int64_t count = rows.shape(0), n = codes.shape(0);
    for (int64_t i = 0; i < count; ++i)
        if (r[i] < 0 || r[i] >= n || (i > 0 && r[i] <= r[i - 1]))
            throw py::value_error("rows must be sorted, unique row numbers of codes (0 .. " + std::to_string(n - 1) + ")");
    py::gil_scoped_release release;
    medhash::remove_multi_index_rows(mi, static_cast<const uint8_t*>(codes.data()), r, count);
}

std::string set_simd_level(const std::string& name) {
    const int l = parse_level(name);
    if (l < 0)
        throw py::value_error("unknown SIMD level '" + name + "': use one of " + levels_list());
    if (l > g_best_level)
        throw py::value_error("SIMD level '" + name + "' is not supported by this CPU: use one of " + levels_list());
    return medhash::level_name(g_level.exchange(l));
}

}  // namespace

PYBIND11_MODULE(_hamming, m) {
    m.doc() = "Exact Hamming search over packed binary codes (counting top-k, run-time SIMD dispatch).";
    g_best_level = medhash::detect_level();
    int level = g_best_level;
    if (const char* env = std::getenv("MEDHASH_SIMD")) {
        const std::string want(env);
        if (!want.empty()) {
            const int l = parse_level(want);
            if (l < 0) {
                PyErr_WarnEx(PyExc_RuntimeWarning,
                             ("MEDHASH_SIMD='" + want + "' is not a SIMD level (use one of " + levels_list() +
                              "); using '" + medhash::level_name(level) + "'").c_str(), 1);
            } else {
                level = std::min(l, g_best_level);  // never above what the CPU can run
            }
        }
    }
    g_level.store(level);

    py::class_<medhash::MultiIndex>(m, "MultiIndex",
                                    "Multi-index hashing tables over rows [0, rows) of a codes array (see build_multi_index).")
        .def_property_readonly("substrings", [](const medhash::MultiIndex& mi) { return mi.m; })
        .def_property_readonly("rows", [](const medhash::MultiIndex& mi) { return mi.n; })
        .def_property_readonly("nbits", [](const medhash::MultiIndex& mi) { return mi.nbytes * 8; })
        .def_property_readonly("widths", [](const medhash::MultiIndex& mi) {
            py::tuple t(mi.len.size());
            for (size_t j = 0; j < mi.len.size(); ++j) t[j] = mi.len[j];
            return t;
        })
        .def_property_readonly("copied_codes", [](const medhash::MultiIndex& mi) { return !mi.codes.empty(); })
        .def_property_readonly("memory_bytes", &medhash::MultiIndex::memory_bytes)
        .def("remove_rows", &remove_multi_index_rows, py::arg("codes"), py::arg("rows"),
             "Take rows (sorted ascending, unique row numbers of codes, which still holds them) out of the "
             "tables, renumbering the rows above them as Index.remove() does.");
    m.def("build_multi_index", &build_multi_index, py::arg("codes"), py::arg("substrings") = py::none(),
          py::arg("threads") = 1, py::arg("copy_codes") = false,
          R"doc(Multi-index hashing tables over every row of codes (uint8 (n, nbytes), C-contiguous).

substrings: None (at most log2(n) bits each) or how many groups of bits to cut a code into,
each at most 32 bits. copy_codes: each table also keeps a copy of the codes in its own order
(nbytes more a row a table; faster queries). Pass the result to search(..., multi_index=...)
with the same codes, or with codes that have more rows appended (they are scanned).)doc");
    m.def("set_multi_index_patience", [](double v) {
        if (!(v >= 0.0 && v <= 1e6)) throw py::value_error("patience must be between 0 and 1e6, got " + std::to_string(v));
        return medhash::mih_patience().exchange(v);
    }, py::arg("patience"),
          "Fraction of a one-thread scan's time a query may spend in the multi-index before it gives "
          "up and scans (default 1.0); returns the previous value. For tests and benchmarks. Process-wide.");
    m.def("search", &search, py::arg("codes"), py::arg("queries"), py::arg("k"), py::arg("threads") = 1,
          py::arg("allow") = py::none(), py::arg("multi_index") = py::none(),
          R"doc(Exact k nearest codes by Hamming distance.

codes: uint8 (n, nbytes); queries: uint8 (nq, nbytes); k >= 1; threads >= 1;
allow: None or bool/uint8 (n,), rows where it is 0 are skipped inside the scan.
multi_index: None, or tables from build_multi_index() over the first rows of these codes:
queries are answered through them (exactly the same results) when they find the answer with
less work than a scan, else by the scan.
Returns (rows int64 (nq, k), distances int32 (nq, k)) sorted by distance, ties by smaller
row number; padded with row -1 and distance -1 when fewer than k rows qualify.)doc");
    m.def("simd_level", [] { return std::string(medhash::level_name(g_level.load())); },
          "The SIMD path searches run on now.");
    m.def("simd_levels", [] {
        py::list out;
        for (int l = medhash::LEVEL_PORTABLE; l <= g_best_level; ++l) out.append(medhash::level_name(l));
        return out;
    }, "The SIMD paths this CPU supports, lowest first.");
    m.def("set_split_bytes", [](const py::object& v) {
        const int64_t b = check_int(v, "min_bytes", 1);
        return medhash::min_split_bytes().exchange(b);
    }, py::arg("min_bytes"),
          "Bytes of codes each thread must get before a single query is split across threads "
          "(default 4 MiB); returns the previous value. For tests. Process-wide.");
    m.def("set_simd_level", &set_simd_level, py::arg("level"),
          "Force a SIMD path (for tests and benchmarks); returns the previous one. Process-wide.");
}

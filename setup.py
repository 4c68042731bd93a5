"""Builds the one compiled module, medhash_sdk._hamming, from csrc/.

Portable flags only: the SIMD path (AVX-512 VPOPCNTDQ, AVX2, popcnt, portable) is chosen at
run time inside the module, so one wheel serves every x86-64 CPU and aarch64 builds too.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "medhash_sdk._hamming",
        ["csrc/bindings.cpp"],
        include_dirs=["csrc"],
        depends=["csrc/hamming.h", "csrc/hamming_scalar.inc", "csrc/mih.h", "csrc/mih_query.inc", "csrc/threads.h", "csrc/topk.h"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})

"""Build the one native piece of torch_rc (everything else is in pyproject.toml).

``torch_rc._omp_launch`` runs TVM kernels' parallel loops on PyTorch's OpenMP threads (see
``torch_rc/_native/omp_launch.c``). It is optional: without a C compiler the install still
succeeds and TVM kernels use TVM's own thread pool (slower; ``torch_rc.explain`` says so).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "torch_rc._omp_launch",
            sources=["torch_rc/_native/omp_launch.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)

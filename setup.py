"""Build hook: compile proto/ into authz/admin/_pb with grpcio-tools before the Python files are collected.

Runs for a wheel (`pip install .`, `pip wheel .`) and for an editable install (`pip install -e .`),
both of which run ``build_py``. The generated modules are never committed (see .gitignore); edit
the .proto and reinstall (or run ``python setup.py build_py``) to regenerate them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ["mcp_authz/admin/v1/admin.proto"]
OUT = ROOT / "authz" / "admin" / "_pb"


def compile_protos() -> None:
    """protoc (from grpcio-tools) → admin_pb2.py, admin_pb2.pyi, admin_pb2_grpc.py in authz/admin/_pb.

    The files are generated under their proto path, then moved flat into the package; the gRPC
    module's absolute import of its messages becomes a relative one.
    """
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTOS:
            args = [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                proto,
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {proto}")
            package = proto.rsplit("/", 1)[0].replace("/", ".")
            stem = Path(proto).stem
            for generated in Path(tmp, Path(proto).parent).glob(f"{stem}_pb2*"):
                text = generated.read_text(encoding="utf-8")
                text = text.replace(f"from {package} import {stem}_pb2 ", f"from . import {stem}_pb2 ")
                OUT.mkdir(parents=True, exist_ok=True)
                (OUT / generated.name).write_text(text, encoding="utf-8")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})

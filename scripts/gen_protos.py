"""Generate the Python protobuf/gRPC modules and their mypy stubs from proto/.

One script, used by `make proto` and by the staleness test: the generated files are committed,
and tests/test_generated_code.py fails when they differ from what this script produces.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
#: The stamps of the generator's own version: a fresh install takes the newest grpcio-tools, so
#: they change without any change of proto/ and are not what the staleness check is about.
_VERSION_STAMPS = re.compile(
    rb"^(# Protobuf Python Version: |GRPC_GENERATED_VERSION = ).*$"
    rb"|ValidateProtobufRuntimeVersion\([^)]*\)",
    re.MULTILINE,
)


def _unstamped(data: bytes) -> bytes:
    return _VERSION_STAMPS.sub(rb"\1<version>", data)


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc into out_dir and return the generated files, relative to out_dir."""
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    # protoc finds the mypy-protobuf plugins on PATH: use the ones next to this interpreter.
    bindir = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(s) for s in SOURCES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(
        p.relative_to(out_dir) for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        files = generate(out)
        stale = [
            f
            for f in files
            if not (PROTO_ROOT / f).exists()
            or _unstamped((PROTO_ROOT / f).read_bytes()) != _unstamped((out / f).read_bytes())
        ]
        if args.check:
            for f in stale:
                print(f"stale generated file: proto/{f} (run `make proto`)", file=sys.stderr)
            return 1 if stale else 0
        for f in stale:
            shutil.copyfile(out / f, PROTO_ROOT / f)
            print(f"proto/{f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

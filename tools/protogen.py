"""Regenerate the Python code of the wire contract: `make proto` (python -m tools.protogen).

protoc writes `gatehouse/v1/auth_pb2.py` (and its `.pyi`); the module has no imports of other
generated files, so it is copied flat into `services/contract/`. From the file's `service`
block this tool then writes the method table `auth_methods.py` (see services.contract.method).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tools.method_table import render_method_table

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILES = ("gatehouse/v1/auth.proto",)
DEFAULT_OUT = REPO_ROOT / "services" / "contract"


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc over the contract and write the modules into `out_dir`."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        for proto in PROTO_FILES:
            descriptor_set = Path(scratch) / "descriptor_set.pb"
            _protoc(proto, proto_root, Path(scratch), descriptor_set)
            stem = Path(proto).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi"):
                source = Path(scratch) / f"{stem}{suffix}"
                target = out_dir / source.name
                shutil.copyfile(source, target)
                written.append(target)
            table = render_method_table(descriptor_set.read_bytes(), proto)
            if table is not None:
                target = out_dir / f"{stem.name}_methods.py"
                target.write_text(table)
                written.append(target)
    return written


def _protoc(proto: str, proto_root: Path, out_dir: Path, descriptor_set: Path) -> None:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    args = [
        "protoc",
        f"-I{proto_root}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--descriptor_set_out={descriptor_set}",
        "--include_source_info",  # the rpcs' comments carry "Since protocol N."
        str(proto_root / proto),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto}; see its output above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--proto-root", type=Path, default=PROTO_ROOT)
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    for path in generate(options.out, options.proto_root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

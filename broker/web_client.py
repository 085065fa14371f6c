"""The JavaScript client, served to web pages: ``import { connect } from "/v1/client.js"``.

The client is the npm package in ``clients/js`` (its ``src/`` modules, no build step). The wheel
carries them as ``broker/static/client`` (pyproject's ``force-include``); a source checkout
serves them from ``clients/js/src`` directly. Served at ``/v1/<module>.js`` (``client.js`` and
the modules it imports), with the type declarations at ``/v1/client.d.ts`` and
``/v1/protocol.d.ts``.

MessagePack: the client imports ``./msgpack.js`` only when a page asks for
``encoding: "msgpack"``. For pages, ``/v1/msgpack.js`` re-exports the ESM build of the
``@msgpack/msgpack`` npm package, vendored in ``broker/vendor/msgpack`` and served under
``/v1/msgpack/``. ``python -m broker.web_client --vendor`` refreshes that copy from
``clients/js/node_modules`` (a test fails while it differs from the locked version).

Files are read once, in a worker thread, and kept in memory; they are a few tens of KiB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Final

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Response

_HERE: Final = Path(__file__).resolve().parent
#: The client's modules inside an installed wheel, else in the source checkout.
CLIENT_DIR: Final = (
    _HERE / "static" / "client"
    if (_HERE / "static" / "client" / "client.js").is_file()
    else _HERE.parent / "clients" / "js" / "src"
)
MSGPACK_DIR: Final = _HERE / "vendor" / "msgpack"
#: The modules of the client a page may load (msgpack.js is the Node.js variant: not served).
MODULES: Final = frozenset(
    {
        "client.js",
        "backoff.js",
        "codec.js",
        "emitter.js",
        "errors.js",
        "link.js",
        "requests.js",
        "subscribing.js",
        "subscription.js",
    }
)
DECLARATIONS: Final = frozenset({"client.d.ts", "protocol.d.ts"})
#: What the page's ``import("./msgpack.js")`` gets.
MSGPACK_SHIM: Final = (
    b"// MessagePack for the broker's client: the @msgpack/msgpack package's ESM build.\n"
    b'export { decode, encode } from "./msgpack/index.mjs";\n'
)

_JS: Final = "text/javascript; charset=utf-8"
_TS: Final = "application/typescript; charset=utf-8"
_HEADERS: Final = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

_cache: dict[Path, bytes] = {}


async def _read(path: Path) -> bytes:
    data = _cache.get(path)
    if data is None:
        try:
            data = await anyio.to_thread.run_sync(path.read_bytes)
        except OSError:
            raise HTTPException(status_code=404, detail="not found") from None
        _cache[path] = data
    return data


#: Static files, not API: left out of the OpenAPI document.
router = APIRouter(include_in_schema=False)


@router.get("/v1/msgpack.js")
async def msgpack_shim() -> Response:
    return Response(MSGPACK_SHIM, media_type=_JS, headers=_HEADERS)


@router.get("/v1/msgpack/{path:path}")
async def msgpack_module(path: str) -> Response:
    target = (MSGPACK_DIR / path).resolve()
    if not path.endswith(".mjs") or not target.is_relative_to(MSGPACK_DIR):
        raise HTTPException(status_code=404, detail="not found")
    return Response(await _read(target), media_type=_JS, headers=_HEADERS)


@router.get("/v1/{name}.js")
async def client_module(name: str) -> Response:
    if f"{name}.js" not in MODULES:
        raise HTTPException(status_code=404, detail="not found")
    return Response(await _read(CLIENT_DIR / f"{name}.js"), media_type=_JS, headers=_HEADERS)


@router.get("/v1/{name}.d.ts")
async def declarations(name: str) -> Response:
    if f"{name}.d.ts" not in DECLARATIONS:
        raise HTTPException(status_code=404, detail="not found")
    return Response(await _read(CLIENT_DIR / f"{name}.d.ts"), media_type=_TS, headers=_HEADERS)


def install(app: FastAPI) -> None:
    """Serve the client on ``app``."""
    app.include_router(router)


# --- vendoring ----------------------------------------------------------------------------------


def vendored_files(package_dir: Path) -> dict[str, bytes]:
    """The files to vendor from an installed ``@msgpack/msgpack``: its ESM modules, without
    their source-map comments (the maps are not shipped), and its licence."""
    files: dict[str, bytes] = {"LICENSE": (package_dir / "LICENSE").read_bytes()}
    esm = package_dir / "dist.esm"
    for module in sorted(esm.rglob("*.mjs")):
        lines = module.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(b"//# sourceMappingURL=")]
        files[module.relative_to(esm).as_posix()] = b"".join(kept)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.web_client")
    parser.add_argument(
        "--vendor",
        action="store_true",
        help="copy @msgpack/msgpack from clients/js/node_modules into broker/vendor/msgpack",
    )
    args = parser.parse_args(argv)
    if not args.vendor:
        parser.print_help()
        return 2
    source = _HERE.parent / "clients" / "js" / "node_modules" / "@msgpack" / "msgpack"
    if not source.is_dir():
        sys.stderr.write(f"{source} is missing: run `npm ci` in clients/js first\n")
        return 1
    shutil.rmtree(MSGPACK_DIR, ignore_errors=True)
    for name, data in vendored_files(source).items():
        target = MSGPACK_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

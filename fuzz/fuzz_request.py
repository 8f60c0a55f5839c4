"""Fuzz the full DUIS request path: bytes -> ``Processor.handle_duis`` -> signed response.

The property, for every input: ``handle_duis`` returns (never raises), with a
response code from the codes table, an HTTP status below 500, and a response
whose signature verifies with the DCC certificate and carries the same code.
The database is an in-memory SQLite loaded with the demo world, so refusals
are written to a real audit table (purged every 10,000 inputs).

Two input shapes share one entry point (the first byte chooses):

* raw bytes, seeded with signed requests and hostile documents, mutated;
* structure-aware: fuzz text placed into the fields of a request that is then
  *signed with a registered key*, so inputs get past the signature into the
  schema, ``read_request``, the rules and the database.

Engines: atheris (coverage-guided libFuzzer, when installed) or a built-in
mutation fuzzer (``--engine random``, reproducible with ``--seed``).
``scripts/fuzz --inputs 1000000`` is the documented long run.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

__all__ = ["main"]


def _load(engine: str) -> ModuleType:
    """Import the target; under atheris, instrumented so coverage guides the mutations."""
    if engine == "atheris":
        import atheris  # type: ignore[import-not-found]

        with atheris.instrument_imports(include=["hubreturns", "harness"]):
            import harness
    else:
        import harness
    return harness


def run_atheris(
    harness: ModuleType, target: Any, inputs: int, corpus: Path, extra: list[str]
) -> None:
    import atheris

    corpus.mkdir(parents=True, exist_ok=True)
    for n, body in enumerate(target.seeds):
        (corpus / f"seed-{n}").write_bytes(b"\x00" + body)
    rng = random.Random(0)  # noqa: S311
    for n in range(20):
        (corpus / f"structured-{n}").write_bytes(harness.structured_seed(rng))
    dictionary = corpus.parent / "duis.dict"
    dictionary.write_text("".join(f'"{_escape(t)}"\n' for t in harness.TOKENS), encoding="ascii")
    args: list[str] = [
        sys.argv[0],
        f"-runs={inputs}",
        f"-dict={dictionary}",
        "-max_len=70000",
        "-rss_limit_mb=4096",
        *extra,
        str(corpus),
    ]
    atheris.Setup(args, target.one)
    atheris.Fuzz()


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02X}" for b in token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=10_000, help="How many inputs to run.")
    parser.add_argument(
        "--engine",
        choices=["auto", "atheris", "random"],
        default="auto",
        help="atheris (coverage-guided) if installed, else the built-in mutation fuzzer.",
    )
    parser.add_argument("--seed", type=int, default=1, help="Seed of the built-in fuzzer.")
    parser.add_argument(
        "--corpus", type=Path, help="atheris corpus folder (default: a fresh temporary one)"
    )
    args, extra = parser.parse_known_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"

    def report(line: str) -> None:
        print(line, flush=True)

    harness = _load(engine)
    target = harness.Harness(Path(tempfile.mkdtemp(prefix="fuzz-")))
    started = time.monotonic()
    if engine == "atheris":
        corpus = args.corpus or Path(tempfile.mkdtemp(prefix="fuzz-corpus-")) / "corpus"
        run_atheris(harness, target, args.inputs, corpus, extra)
        return 0  # libFuzzer exits itself; a finding exits non-zero
    count = harness.run_random(target, args.inputs, args.seed, report)
    elapsed = time.monotonic() - started
    report(
        f"fuzz (engine random, seed {args.seed}): {count} inputs in {elapsed:.1f} s "
        f"({count / elapsed:.0f}/s), no unhandled exception, every response signed and < 500"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

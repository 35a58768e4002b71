"""The entry point every harness shares: ``--seeds DIR`` writes its seed
corpus (where it has a writer), anything else runs atheris over
``test_one_input``, coverage-guided. atheris is imported only here, so the
test suite imports the harnesses (tests/test_fuzz_bounded.py) without it."""

import sys


def run(test_one_input, write_seeds=None, default_corpus=None) -> None:
    if write_seeds is not None and sys.argv[1:2] == ["--seeds"]:
        write_seeds(sys.argv[2] if len(sys.argv) > 2 else default_corpus)
        return
    import atheris

    atheris.instrument_all()  # coverage for everything the harness imported
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

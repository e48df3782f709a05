# pi-image: build, demo and test entry points. `make demo` builds the five demo nodes from the
# bundled test base image; `make test` runs every test (CI calls it from .ci/run).
CARGO ?= cargo
BIN := target/release/pi-image
FIXTURE := tests/fixtures/ubuntu-20.04.5-replica.img.xz
DEMO_OUT ?= out/demo

.PHONY: all build demo test bench clean

all: build

build:
	$(CARGO) build --release --locked

demo: build
	$(BIN) nodes
	$(BIN) build --all --base $(FIXTURE) --out $(DEMO_OUT)
	$(BIN) inspect $(DEMO_OUT)/pi3.img | head -40

test:
	$(CARGO) test --locked --all-targets

# Fetch speed and memory on a generated ~1 GB image and the small test image served on
# loopback, flash speed and memory on a generated ~3 GB image and the small test image against
# dd and bmaptool, a raw build against cp + sync on the same two images, and release artifacts
# for five nodes against the naive per-node pipeline on a ~3 GB image (BENCH_SIZE_GB) (not
# tests). Each script prints its ratios and records them in bench/RESULTS.md.
bench:
	bench/fetch.sh
	bench/flash.sh
	bench/build.sh
	bench/release.sh

clean:
	$(CARGO) clean
	rm -rf out

# pi-image: build, demo and test entry points. `make demo` builds the five demo nodes from the
# bundled test base image; `make test` runs every test (CI calls it from .ci/run).
CARGO ?= cargo
BIN := target/release/pi-image
FIXTURE := tests/fixtures/ubuntu-20.04.5-replica.img.xz
DEMO_OUT ?= out/demo

.PHONY: all build demo test test-boot bench clean

all: build

build:
	$(CARGO) build --release --locked

demo: build
	$(BIN) nodes
	$(BIN) build --all --base $(FIXTURE) --out $(DEMO_OUT)
	$(BIN) inspect $(DEMO_OUT)/pi3.img | head -40

test:
	$(CARGO) test --locked --all-targets

# `pi-image preview` booting node images under QEMU (TCG): an SD node, an SSD node with
# decompress_kernel and a node whose root is missing (tests/preview_boot.rs, ignored by plain
# `cargo test`). 7-14 minutes on 2 cores; the bootable test base is built once (root,
# deb.debian.org) into ~/.cache/pi-image-tests by tests/fixtures/make-bootable-base.sh.
test-boot:
	$(CARGO) test --locked --test preview_boot -- --ignored --test-threads=1 --nocapture

# Fetch speed and memory on a generated ~1 GB image served on loopback, flash speed and memory
# on a generated ~3 GB image against dd and bmaptool, and release artifacts for five nodes
# against the naive per-node pipeline on a ~3 GB image (BENCH_SIZE_GB) (not tests).
bench:
	bench/fetch.sh
	bench/flash.sh
	bench/release.sh

clean:
	$(CARGO) clean
	rm -rf out

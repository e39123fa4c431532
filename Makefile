# Warbler — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
SWIFT ?= swift
APT_PACKAGES := librocksdb-dev liblz4-dev libjemalloc-dev pkg-config valgrind
SIM_SEEDS ?= 10000
SIM_STEPS ?= 5000

.PHONY: all deps build run test soak bench proto format format-check clean

all: build

# Installs the Debian packages Warbler links against, only when one is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Release builds optimise across module boundaries (Warbler's modules and the packages they use): generic code
# is specialised where it is called instead of going through run-time generic metadata — 6-9% more messages/s
# (docs/performance.md). A plain `swift build -c release` works too, and is slower.
RELEASE := -c release -Xswiftc -cross-module-optimization

build: deps
	$(SWIFT) build $(RELEASE)

# Builds in release mode and starts one node (a one-voter cluster): data in ./data, clients on 127.0.0.1:7400.
DATA ?= ./data
PORT ?= 7400
run: deps
	$(SWIFT) build $(RELEASE) --product warbler
	./.build/release/warbler serve --data $(DATA) --port $(PORT)

# The whole test suite (formatting, unit, golden-file scenarios, 300 simulation seeds, history checker).
test: deps format-check
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --parallel

# A long simulation soak: SIM_SEEDS seeds of 3 and 5 nodes (override on the command line).
soak:
	$(SWIFT) build $(RELEASE) --product warbler-sim
	./.build/release/warbler-sim raft --seed 1 --nodes 3 --steps $(SIM_STEPS) --count $(SIM_SEEDS)
	./.build/release/warbler-sim raft --seed 1 --nodes 5 --steps $(SIM_STEPS) --count $(SIM_SEEDS)

# The swift-nio formatting rules (.swift-format), as STYLE.md asks.
format-check:
	$(SWIFT) format lint --strict --recursive --parallel Sources Tests bench Package.swift

format:
	$(SWIFT) format --in-place --recursive --parallel Sources Tests bench Package.swift

# Regenerates the Swift of the client protocol from its .proto (the output is committed).
PROTOC_BUILD := .build-protoc
proto:
	@command -v protoc >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq protobuf-compiler; }
	$(SWIFT) package resolve
	$(SWIFT) build -c release --package-path .build/checkouts/swift-protobuf --scratch-path $(PROTOC_BUILD) \
		--product protoc-gen-swift
	protoc --plugin=protoc-gen-swift=$(PROTOC_BUILD)/release/protoc-gen-swift --swift_opt=Visibility=Public \
		--swift_out=Sources/WarblerWire/Generated --proto_path=Sources/WarblerWire/Proto \
		Sources/WarblerWire/Proto/warbler_client.proto Sources/WarblerWire/Proto/warbler_raft.proto Sources/WarblerWire/Proto/warbler_chat.proto Sources/WarblerWire/Proto/warbler_peer.proto

bench:
	$(SWIFT) build $(RELEASE)
	./.build/release/warbler-raft-bench
	./.build/release/warbler-micro-bench
	./.build/release/warbler-bench --spawn single --senders 32 --window 1 --seconds 10

clean:
	rm -rf .build

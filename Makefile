# The two commands of the README, and a few helpers.
.PHONY: run test build image fmt lint bench soak crash-soak api-fuzz clean-test

# One command: set up the host, build, build the guest image, start the
# server and show a sandbox running a command.
run:
	./scripts/quickstart.sh

# One command: every test (unit, fuzz smoke, end-to-end with real guests,
# Python client). Installs what it needs.
test:
	./scripts/test.sh

build:
	cargo build --release -p locale2b -p locale2b-agent

image: build
	./target/release/locale2b image build

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: build
	./target/release/locale2b bench

# Mixed load from 3 clients for 10 minutes, then leak checks (test: 1 minute).
soak: build
	./target/release/locale2b bench soak --minutes 10 --json target/soak.json

# Generated malformed requests over both OpenAPI documents against a real
# server and guest: no 5xx allowed (test: 80 examples per operation).
api-fuzz: build
	./scripts/api-fuzz.sh 300

# Kill -9 of the server at every crash point, 20 rounds (test: 1 round).
crash-soak:
	./scripts/crash-soak.sh 20

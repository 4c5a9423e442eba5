# ngx_http_sessions_module: build, run the demo, test, benchmark.
#
#   make deps    the Debian packages a fresh machine lacks (run as root; run/test/bench do it)
#   make build   build/sbin/nginx + build/modules/ngx_http_sessions_module.so
#   make run     the demo (nginx-conf/demo.conf) on http://127.0.0.1:8080, Ctrl-C stops it
#   make test    unit and integration tests
#   make bench   wrk: bare NGINX vs the module, one table
#   make fuzz    cargo-fuzz targets of sessions-core, FUZZ_SECONDS (60) each (needs nightly)
#   make debian  the module for Debian 12's packaged NGINX (needs nginx-dev)
#   make deb     the Debian package libnginx-mod-http-sessions (build/deb/*.deb)
#   make deb-deps  Debian's nginx, nginx-dev and dpkg-dev, no service started (as root)

CARGO   ?= cargo
BUILD   := $(CURDIR)/build
PROFILE := release
TARGET  := $(CURDIR)/target/$(PROFILE)

.PHONY: all deps deb-deps build run test bench fuzz clean lint debian deb

all: build

deps:
	@bash scripts/install-deps.sh

deb-deps:
	@bash scripts/install-deps.sh --debian-nginx

# Builds only: installing packages is `make deps` (run and test depend on it).
build:
	$(CARGO) build --$(PROFILE)
	@mkdir -p $(BUILD)/sbin $(BUILD)/modules $(BUILD)/logs
	@# build.rs records where nginx-sys built NGINX for this profile and feature set.
	@dir=$$(cat $(TARGET)/nginx-build-dir 2>/dev/null); \
	  if [ ! -x "$$dir/nginx" ]; then \
	    echo "no NGINX binary in '$$dir' ($(TARGET)/nginx-build-dir): is the vendored feature on?" >&2; exit 1; \
	  fi; \
	  cp -f "$$dir/nginx" $(BUILD)/sbin/nginx.tmp && mv -f $(BUILD)/sbin/nginx.tmp $(BUILD)/sbin/nginx
	@cp -f $(TARGET)/libngx_http_sessions_module.so $(BUILD)/modules/ngx_http_sessions_module.so.tmp
	@mv -f $(BUILD)/modules/ngx_http_sessions_module.so.tmp $(BUILD)/modules/ngx_http_sessions_module.so
	@echo "built $(BUILD)/sbin/nginx and $(BUILD)/modules/ngx_http_sessions_module.so"

run: deps build
	$(BUILD)/sbin/nginx -p $(BUILD) -c $(CURDIR)/nginx-conf/demo.conf -g 'daemon off;'

test: deps build
	$(CARGO) test --$(PROFILE) --workspace -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --$(PROFILE) --workspace --all-targets -- -D warnings

bench: deps build
	bash bench/run.sh

fuzz:
	bash scripts/fuzz.sh

debian:
	bash scripts/build-debian.sh

deb:
	bash scripts/build-deb.sh

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

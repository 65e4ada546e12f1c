# memcoord: `make demo` shows it working on a lab of tiny guests, `make test` runs every test on real parts.
# `sudo make install` is how admins install it (README: "Running it under systemd"); paths can be overridden,
# e.g. make install PREFIX=/opt/memcoord BINDIR=/usr/local/bin.
# Both install what they need first (Debian packages as root, then the project venv).

PYTHON ?= /usr/bin/python3
VENV ?= .venv
DEBS = python3 python3-venv python3-pip python3-libvirt python3-systemd \
       qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients \
       busybox-static linux-image-amd64 cpio gcc libc6-dev systemd-container debootstrap tmux \
       prometheus lintian

.PHONY: deps venv preflight test lint demo

deps:  ## Debian packages for the tests, the lab and the venv (as root)
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,plot]'
	touch $@

venv: $(VENV)/.installed

preflight: deps  ## root, libvirtd (started if absent), QEMU, nspawn and the tools the tests run: one line each
	$(PYTHON) scripts/preflight.py

test: deps preflight venv lint  ## every test, real libvirtd and guests included
	$(VENV)/bin/pytest -v

lint: venv  ## everything that ships or tests; mypy: strict on memcoord.core and memcoord.daemon ([tool.mypy])
	$(VENV)/bin/ruff check src tests lab bench scripts packaging/build-deb
	$(VENV)/bin/ruff format --check src tests lab bench scripts packaging/build-deb
	$(VENV)/bin/mypy

PREFIX ?= /opt/memcoord
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFIG ?= /etc/memcoord.toml
# From Debian, not PyPI: libvirt-python and systemd-python are source-only on PyPI and would need a compiler and
# the -dev packages. The venv sees these through --system-site-packages, so pip finds them already installed.
APT_PACKAGES = python3-venv python3-libvirt python3-systemd

.PHONY: install uninstall

install:
	@test "$$(id -u)" = 0 || { echo "make install: run it as root (sudo make install)" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES) \
	  || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES); }
	$(PYTHON) -m venv --system-site-packages $(PREFIX)
	$(PREFIX)/bin/pip install --no-cache-dir --disable-pip-version-check .
	$(PREFIX)/bin/memcoord --help >/dev/null
	ln -sfn $(PREFIX)/bin/memcoord $(BINDIR)/memcoord
# The unit runs as the system user memcoord; the group libvirt gives it libvirtd's read-write socket (polkit).
	getent passwd memcoord >/dev/null || adduser --quiet --system --group --no-create-home --home /nonexistent memcoord
	@if getent group libvirt >/dev/null; then adduser --quiet memcoord libvirt; \
	 else echo "no group libvirt (libvirt-daemon-system not installed): add memcoord to it once it exists" >&2; fi
	sed 's|/opt/memcoord|$(PREFIX)|g; s|/etc/memcoord.toml|$(CONFIG)|g' packaging/memcoord.service > $(UNITDIR)/memcoord.service.tmp
	chmod 0644 $(UNITDIR)/memcoord.service.tmp
	mv $(UNITDIR)/memcoord.service.tmp $(UNITDIR)/memcoord.service
	install -d $(PREFIX)/share/memcoord/prometheus $(PREFIX)/share/memcoord/systemd
	install -m 0644 packaging/prometheus/memcoord.rules.yml packaging/prometheus/grafana-dashboard.json \
	  packaging/prometheus/scrape-config.yml $(PREFIX)/share/memcoord/prometheus/
	install -m 0644 packaging/memcoord.service.d/metrics.conf $(PREFIX)/share/memcoord/systemd/
# The libvirt hook (make-room before a VM starts) is opt-in: installed here, linked into libvirt's hooks by the admin.
	install -D -m 0755 packaging/libvirt-hook/memcoord $(PREFIX)/share/memcoord/libvirt-hook/memcoord
	@if [ -e $(CONFIG) ]; then echo "keeping existing $(CONFIG)"; \
	 else install -m 0644 etc/memcoord.toml $(CONFIG) && echo "installed $(CONFIG)"; fi
	@if [ -d /run/systemd/system ]; then \
	   systemctl daemon-reload && systemctl try-restart memcoord.service && \
	   echo "next: systemctl enable --now memcoord"; \
	 else echo "systemd is not running: unit installed, not loaded"; fi

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall: run it as root (sudo make uninstall)" >&2; exit 1; }
	@if [ -d /run/systemd/system ]; then systemctl disable --now memcoord.service 2>/dev/null || true; fi
	rm -f $(UNITDIR)/memcoord.service
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; systemctl reset-failed memcoord.service 2>/dev/null || true; fi
	@if [ "$$(readlink $(BINDIR)/memcoord)" = "$(PREFIX)/bin/memcoord" ]; then rm -f $(BINDIR)/memcoord; fi
	rm -rf $(PREFIX)
	@echo "kept $(CONFIG) (delete it by hand if you want it gone)"

demo: deps venv  ## README command 1: 4 real guests, the real memcoord, a live table, a PNG in artifacts/demo/
	$(VENV)/bin/python -m lab.demo

# The Debian package (README: "Install"), built from a copy of the tree into dist/. `make deb` builds the package
# of this machine's release here (installing its Build-Depends); `make deb RELEASE=trixie` (or bookworm) builds that
# release's package in a fresh root of that release (debootstrap once, cached; systemd-nspawn). Debian 13: pybuild
# on Debian's libraries, no network. Debian 12: dh-virtualenv, PyPI at build time, not at install.
# DEB_VERSION=... builds another package version (for upgrade tests).
DEB_OUT ?= dist
DEB_ARGS = $(if $(RELEASE),--release $(RELEASE),--install-build-deps) $(if $(DEB_VERSION),--version $(DEB_VERSION))

.PHONY: deb man

deb:  ## dist/memcoord_<version>_<arch>.deb (as root)
	packaging/build-deb $(DEB_ARGS) $(DEB_OUT)

# memcoord(8), memcoord.toml(5), the bash completion and the journal catalog, generated from the code, into build/
# (`man -l build/man/memcoord.8`)
man: venv
	$(VENV)/bin/python -m memcoord.buildtime.manpage build/man
	$(VENV)/bin/python -m memcoord.buildtime.completion > build/memcoord.bash-completion
	$(VENV)/bin/python -m memcoord.buildtime.catalog > build/memcoord.catalog

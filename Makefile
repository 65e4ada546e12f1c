# memcoord Makefile. `sudo make install` on Debian 12 is the supported way to install (README: "Running it under
# systemd"). Paths can be overridden: make install PREFIX=/opt/memcoord BINDIR=/usr/local/bin.
PREFIX ?= /opt/memcoord
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFIG ?= /etc/memcoord.toml
PYTHON ?= /usr/bin/python3
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
	sed 's|/opt/memcoord|$(PREFIX)|g; s|/etc/memcoord.toml|$(CONFIG)|g' packaging/memcoord.service > $(UNITDIR)/memcoord.service.tmp
	chmod 0644 $(UNITDIR)/memcoord.service.tmp
	mv $(UNITDIR)/memcoord.service.tmp $(UNITDIR)/memcoord.service
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

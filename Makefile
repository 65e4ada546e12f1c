# memcoord: `make demo` shows it working on a lab of tiny guests, `make test` runs every test on real parts.
# Both install what they need first (Debian packages as root, then the project venv).

PYTHON ?= /usr/bin/python3
VENV ?= .venv
DEBS = python3 python3-venv python3-pip python3-libvirt python3-systemd \
       qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients \
       busybox-static linux-image-amd64 cpio gcc libc6-dev systemd-container debootstrap tmux

.PHONY: deps venv test lint

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

test: deps venv  ## every test, real libvirtd and guests included
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -v

lint: venv
	$(VENV)/bin/ruff check src tests bench lab
	$(VENV)/bin/ruff format --check src tests

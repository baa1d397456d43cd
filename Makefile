# The two Quickstart commands. Each makes .venv (Python 3.11, the pinned CPU
# requirements, md4 itself as an editable install with its md4-* commands)
# when it is missing or older than requirements*.txt / pyproject.toml.
#
#   make demo   trains MD4 on the bundled digits (offline, minutes on a CPU)
#   make test   runs the test suite
#   make venv   only sets up .venv
#
# Another interpreter: make demo PYTHON=/path/to/python3.12

PYTHON ?= python3.11
VENV ?= .venv
WORKDIR ?= ./expt/digits
STAMP := $(VENV)/.md4-installed
REQUIREMENTS := requirements.txt requirements_common.txt pyproject.toml

.PHONY: demo test venv

demo: $(STAMP)
	$(VENV)/bin/python md4/main.py --config=configs/md4/digits.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "" tests

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "make: $(PYTHON) was not found on PATH. md4 needs Python 3.11 (or newer):" \
	       "install it with its venv module (Debian/Ubuntu: apt-get install python3.11" \
	       "python3.11-venv), or name another one: make $(MAKECMDGOALS) PYTHON=python3.12" >&2; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); md4" \
	       "needs 3.11 or newer: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  echo "make: '$(PYTHON) -m venv' failed: the venv module is missing" \
	       "(Debian/Ubuntu: apt-get install python3.11-venv)." >&2; exit 1; }
	@echo "Installing the pinned requirements into $(VENV) (pip's log: $(VENV)/pip.log) ..."
	@$(VENV)/bin/python -m pip install -r requirements.txt > $(VENV)/pip.log 2>&1 || { \
	  missing=$$(grep -o 'the requirement [^ ]*' $(VENV)/pip.log | tail -1 | cut -d' ' -f3); \
	  if grep -qE 'from versions: none|NewConnectionError|Failed to establish|name resolution|Network is unreachable|Connection refused|ConnectTimeout|ProxyError' $(VENV)/pip.log; then \
	    echo "make: cannot install the pinned requirements: no network connection to the package" \
	         "index and no cached wheel for $${missing:-a requirement}. Connect to the network, or" \
	         "point pip at a folder of wheels (PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR make $(MAKECMDGOALS))." \
	         "pip's messages: $(VENV)/pip.log" >&2; \
	  else \
	    echo "make: pip could not install requirements.txt into $(VENV):" \
	         "$$(grep '^ERROR' $(VENV)/pip.log | tail -1) (pip's messages: $(VENV)/pip.log)" >&2; \
	  fi; exit 1; }
	@$(VENV)/bin/python -m pip install --no-deps --no-build-isolation -e . >> $(VENV)/pip.log 2>&1 || { \
	  echo "make: 'pip install -e .' failed in $(VENV); see $(VENV)/pip.log." >&2; exit 1; }
	@touch $(STAMP)
	@echo "$(VENV) is ready (md4-train, md4-sample, md4-evaluate, md4-prepare-openwebtext in $(VENV)/bin)."

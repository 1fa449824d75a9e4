# Build and install the diffedit tools, their man pages and the bundled demo model:
#
#   make                                   # swift build -c release
#   make install PREFIX=~/.local           # then: PATH=~/.local/bin:$PATH MANPATH=~/.local/share/man:
#   make uninstall PREFIX=~/.local
#
# PREFIX/bin            the tools
# PREFIX/share/man      their man pages (man1, man5)
# PREFIX/share/diffedit model/ (the demo model, used when no --model and no $DIFFEDIT_MODEL is
#                       given: the tools look for ../share/diffedit/model beside their bin/),
#                       scenes/ (the demo scenes), examples/Makefile and the recipes that run
#                       it on many machines (examples/slurm/, examples/parallel/)
#
# DESTDIR is prepended to every installed path (for packaging). BIN=DIR installs the tools already
# built in DIR instead of building a release (the tests install their debug build this way).
# SWIFT_BUILD_FLAGS are passed to swift build, e.g. --static-swift-stdlib for tools that do not
# need the Swift toolchain's runtime libraries at run time.

PREFIX ?= /usr/local
DESTDIR ?=
BIN ?=
SWIFT_BUILD_FLAGS ?=

TOOLS := tensor tokenize encode-text vae-encode vae-decode noise-diff-mask invert denoise composite unet-bench
MAN1 := $(wildcard man/man1/*.1)
MAN5 := $(wildcard man/man5/*.5)
ROOT := $(DESTDIR)$(PREFIX)
SHARE := $(ROOT)/share/diffedit
# Evaluated only when used: where the tools to install are.
BUILT = $(or $(BIN),$(shell swift build -c release $(SWIFT_BUILD_FLAGS) --show-bin-path))

.PHONY: all build install uninstall
all: build

build:
	swift build -c release $(SWIFT_BUILD_FLAGS)

install: $(if $(BIN),,build)
	@test -n '$(PREFIX)' || { echo 'make install: PREFIX is empty — give e.g. PREFIX=/usr/local' >&2; exit 1; }
	@for t in $(TOOLS); do test -x '$(BUILT)'/$$t || { echo "make install: $(BUILT)/$$t is missing — build first (make), or give BIN=DIR" >&2; exit 1; }; done
	install -d '$(ROOT)/bin' '$(ROOT)/share/man/man1' '$(ROOT)/share/man/man5' '$(SHARE)/scenes' '$(SHARE)/examples'
	for t in $(TOOLS); do install -m 755 '$(BUILT)'/$$t '$(ROOT)/bin/'$$t; done
	install -m 644 $(MAN1) '$(ROOT)/share/man/man1/'
	install -m 644 $(MAN5) '$(ROOT)/share/man/man5/'
	rm -rf '$(SHARE)/model'
	cp -R demo/model '$(SHARE)/model'
	chmod -R u+rwX,go+rX,go-w '$(SHARE)/model'
	install -m 644 demo/scenes/*.ppm demo/scenes/*.pgm '$(SHARE)/scenes/'
	install -m 644 examples/Makefile '$(SHARE)/examples/Makefile'
	install -m 755 examples/photo.sh '$(SHARE)/examples/photo.sh'
	install -d '$(SHARE)/examples/slurm' '$(SHARE)/examples/parallel'
	install -m 755 examples/slurm/submit.sh examples/slurm/diffedit-array.sbatch '$(SHARE)/examples/slurm/'
	install -m 755 examples/parallel/edit-over-ssh.sh '$(SHARE)/examples/parallel/'

uninstall:
	@test -n '$(PREFIX)' || { echo 'make uninstall: PREFIX is empty — give the PREFIX you installed to' >&2; exit 1; }
	rm -f $(foreach t,$(TOOLS),'$(ROOT)/bin/$(t)')
	rm -f $(foreach m,$(MAN1),'$(ROOT)/share/man/man1/$(notdir $(m))') $(foreach m,$(MAN5),'$(ROOT)/share/man/man5/$(notdir $(m))')
	rm -rf '$(SHARE)'

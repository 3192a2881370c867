"""The ``psc-seg`` command line: one module per command, composed in :mod:`psc_seg.cli.main`."""

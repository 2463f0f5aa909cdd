"""The ``tradestore`` command line: a thin layer over the library."""

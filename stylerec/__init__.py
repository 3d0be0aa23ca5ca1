"""The application layer: the ``stylerec`` command line, the demo, the HTTP service and
batch jobs. Nothing in the library imports it."""

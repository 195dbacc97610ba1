"""Stand-ins for the demo and the tests: the local broker launcher, the emulated ASAPP API, the
schema registry stand-in, sample events. The service never imports this package; only
``consumer.cli`` does (lazily, for ``demo``, ``emulate-api`` and ``produce-samples``), and the
demo builds the service through ``consumer.service``, never the CLI
(``tests/unit/test_imports.py``)."""

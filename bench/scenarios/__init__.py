"""One module per scenario (b3 … b7), each with ``baseline()``, ``unistock()`` and a ``run()``
registered with ``@scenario``. Fill in ``unistock()``; it raises NotImplementedError until then."""

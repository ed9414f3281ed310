"""One module per library: its jobs, how to push them, how to start its worker.

Every module has the same interface (see ``driver.py``):

* three jobs, ``noop``, ``sleep`` and ``stamp``, whose bodies are the functions of
  :mod:`libs.common` (so every library runs exactly the same work);
* ``worker_argv(concurrency)``: the command that starts one worker process, or
  ``run_worker(concurrency)`` for libraries started from Python;
* a ``Client`` with ``start()``, ``push(kind)``, ``push_many(kind, n)`` (``None`` for
  libraries without a bulk API) and ``close()``.

The modules are imported as ``libs.<name>`` with ``benchmarks/`` on ``sys.path``, so a
module named like its library (``libs/arq.py``) still imports the real ``arq``.
"""

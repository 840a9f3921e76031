"""The Gradio web demo: zero-shot classification and cross-modal search (``align-hf demo``).

- :mod:`~align_hf.demo.limits`: input limits and serving defaults.
- :mod:`~align_hf.demo.batching`: :class:`MicroBatcher`, merging concurrent requests into one forward pass.
- :mod:`~align_hf.demo.backend`: :class:`DemoBackend`, the validated work behind the tabs.
- :mod:`~align_hf.demo.ui`: the Gradio layout (:func:`build_demo`) and :func:`launch_demo`.
- :mod:`~align_hf.demo.setup`: model, index and backend for the CLI and the Space (:func:`create_backend`).

Nothing is imported here, so the CLI can read the defaults without loading torch or Gradio.
"""

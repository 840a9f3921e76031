"""The Gradio layout of the demo and how it is served.

:func:`build_demo` lays out the Blocks around a :class:`~align_hf.demo.backend.DemoBackend`;
:func:`launch_demo` serves it with safe defaults (127.0.0.1, no share link, bounded uploads,
analytics off).

Example::

    from align_hf.demo.ui import build_demo, launch_demo
    launch_demo(build_demo(backend))
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

# Gradio reads this when it is imported; nothing should phone home from a local demo.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from align_hf.demo.backend import DemoBackend, DemoInputError  # noqa: E402
from align_hf.demo.limits import DEFAULT_CONCURRENCY, DEFAULT_MAX_FILE_SIZE, MAX_RESULTS  # noqa: E402

logger = logging.getLogger(__name__)

NO_PRESET = "(type labels)"
NO_INDEX_NOTE = "No index with {} is loaded: start the demo with `--index DIR` (built by `align-hf index build`)."


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so a :class:`DemoInputError` reaches the user as is and any other failure
    shows only its type (the traceback goes to the server log)."""

    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except DemoInputError as err:
            raise gr.Error(str(err)) from err
        except Exception as err:
            logger.exception("demo request failed")
            raise gr.Error(f"Internal error ({type(err).__name__}); see the server log.") from err

    run.__name__ = fn.__name__
    return run


def image_input(elem_id: str) -> gr.Image:
    """An upload field handing the handler a file path (opened and validated by the backend)."""
    return gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id=elem_id)


def results_slider(elem_id: str, **kwargs: Any) -> gr.Slider:
    return gr.Slider(1, MAX_RESULTS, value=8, step=1, label="Results", elem_id=elem_id, **kwargs)


def results_gallery(elem_id: str) -> gr.Gallery:
    return gr.Gallery(
        label="Results (score · image)", columns=4, height="auto", format="png", interactive=False, elem_id=elem_id
    )


def index_examples(examples: list[str], target: gr.Image) -> None:
    """Clickable example images from the index, when it has any."""
    if examples:
        gr.Examples([[p] for p in examples], inputs=[target], label="Examples from the index")


def build_demo(
    backend: DemoBackend, title: str = "ALIGN: zero-shot classification and cross-modal search"
) -> gr.Blocks:
    """The Gradio Blocks app around ``backend``.

    API endpoints (for ``gradio_client``): ``/classify``, ``/text_to_image``, ``/image_to_text``,
    ``/composed`` and ``/about``.
    """

    def classify(image, labels, preset, templates):
        preset = None if preset in (None, "", NO_PRESET) else preset
        return backend.classify(image, labels, preset, templates)

    def text_to_image(query, k):
        return backend.gallery(backend.search_text_to_image(query, k))

    def image_to_text(image, k):
        return [[r.rank, round(r.score, 4), r.label] for r in backend.search_image_to_text(image, k)]

    def composed(image, text, minus, text_weight, k):
        return backend.gallery(backend.search_composed(image, text, minus, text_weight, k))

    def about():
        return backend.about_markdown()

    has_images = backend.index is not None and "image" in backend.index
    has_texts = backend.index is not None and "text" in backend.index
    examples = backend.example_images()
    # Preprocessing of uploads is ours (preprocess=False), so a non-image gets a clear message
    # instead of Gradio's generic error; Gradio still only hands us files from its upload cache.
    events = dict(preprocess=False, show_progress="minimal")

    with gr.Blocks(title="ALIGN demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nModel: **{backend.model_name}**")
        with gr.Tabs():
            with gr.Tab("Zero-shot classification", id="zero-shot"):
                with gr.Row():
                    with gr.Column():
                        zs_image = image_input("zs-image")
                        zs_labels = gr.Textbox(
                            value=backend.default_labels,
                            label="Labels (comma-separated)",
                            placeholder="cat, dog, car",
                            elem_id="zs-labels",
                        )
                        zs_preset = gr.Dropdown(
                            [NO_PRESET, *backend.label_presets],
                            value=NO_PRESET,
                            label="…or a preset label set (used when no labels are typed)",
                            elem_id="zs-preset",
                        )
                        zs_templates = gr.Dropdown(
                            list(backend.template_sets),
                            value=backend.default_templates,
                            label="Prompt templates (several = ensembling)",
                            elem_id="zs-templates",
                        )
                        zs_button = gr.Button("Classify", variant="primary", elem_id="zs-button")
                        index_examples(examples, zs_image)
                    zs_output = gr.Label(label="Probabilities", num_top_classes=5, elem_id="zs-output")
                zs_button.click(
                    guarded(classify),
                    [zs_image, zs_labels, zs_preset, zs_templates],
                    zs_output,
                    api_name="classify",
                    **events,
                )

            with gr.Tab("Text -> image search", id="text-to-image"):
                if not has_images:
                    gr.Markdown(NO_INDEX_NOTE.format("images"))
                with gr.Row():
                    ti_query = gr.Textbox(
                        label="Query", placeholder="a red circle on a white background", scale=4, elem_id="ti-query"
                    )
                    ti_k = results_slider("ti-k", scale=1)
                ti_button = gr.Button("Search", variant="primary", interactive=has_images, elem_id="ti-button")
                ti_gallery = results_gallery("ti-gallery")
                ti_button.click(
                    guarded(text_to_image), [ti_query, ti_k], ti_gallery, api_name="text_to_image", **events
                )
                ti_query.submit(
                    guarded(text_to_image), [ti_query, ti_k], ti_gallery, api_visibility="private", **events
                )

            with gr.Tab("Image -> text search", id="image-to-text"):
                if not has_texts:
                    gr.Markdown(NO_INDEX_NOTE.format("texts"))
                with gr.Row():
                    with gr.Column():
                        it_image = image_input("it-image")
                        it_k = results_slider("it-k")
                        it_button = gr.Button(
                            "Search captions", variant="primary", interactive=has_texts, elem_id="it-button"
                        )
                        index_examples(examples, it_image)
                    it_table = gr.Dataframe(
                        headers=["rank", "score", "caption"],
                        label="Captions",
                        interactive=False,
                        wrap=True,
                        elem_id="it-table",
                    )
                it_button.click(guarded(image_to_text), [it_image, it_k], it_table, api_name="image_to_text", **events)

            with gr.Tab("Image + text query", id="composed"):
                if not has_images:
                    gr.Markdown(NO_INDEX_NOTE.format("images"))
                gr.Markdown(
                    "The paper's composed query: `image + w * text - w * minus`, all unit embeddings, renormalised "
                    "(the paper weighs text x2)."
                )
                with gr.Row():
                    with gr.Column():
                        cq_image = image_input("cq-image")
                        cq_text = gr.Textbox(label="Add text", placeholder="blue", elem_id="cq-text")
                        cq_minus = gr.Textbox(label="Minus text (optional)", placeholder="red", elem_id="cq-minus")
                        cq_weight = gr.Slider(
                            0.0, 4.0, value=2.0, step=0.1, label="Text weight (image weight is 1)", elem_id="cq-weight"
                        )
                        cq_k = results_slider("cq-k")
                        cq_button = gr.Button("Search", variant="primary", interactive=has_images, elem_id="cq-button")
                        index_examples(examples, cq_image)
                    cq_gallery = results_gallery("cq-gallery")
                cq_button.click(
                    guarded(composed),
                    [cq_image, cq_text, cq_minus, cq_weight, cq_k],
                    cq_gallery,
                    api_name="composed",
                    **events,
                )

            with gr.Tab("About", id="about"):
                about_md = gr.Markdown(backend.about_markdown(), elem_id="about")
                about_button = gr.Button("Refresh", size="sm")
                about_button.click(about, None, about_md, api_name="about")
    return demo


def launch_demo(
    demo: gr.Blocks,
    host: str | None = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    queue_size: int = 64,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    open_browser: bool = False,
) -> tuple[Any, str, str | None]:
    """Serve the demo: local address only unless ``host`` says otherwise, no share link unless asked,
    bounded uploads and queue, no analytics, no server-side rendering, no MCP server.

    ``host=None`` lets Gradio decide (``GRADIO_SERVER_NAME``, which Hugging Face Spaces set to 0.0.0.0).
    Returns Gradio's ``(app, local_url, share_url)``.
    """
    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=queue_size)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        inbrowser=open_browser,
        show_error=False,  # gr.Error messages still reach users; other exceptions stay in the log
        ssr_mode=False,
        mcp_server=False,
        run_history=False,  # record nothing about users' calls
        pwa=False,
        # System fonts: the default Google fonts would be fetched from the internet by every browser.
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
    )


__all__ = ["build_demo", "guarded", "launch_demo"]

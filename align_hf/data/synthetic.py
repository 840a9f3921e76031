"""A deterministic synthetic corpus of scenes with noisy, alt-text-like captions.

Nothing can be downloaded at run time, so this corpus stands in for web alt-text: images of
coloured shapes (sizes, grid positions, counts, textured backgrounds) whose captions follow a
handful of alt-text styles, plus a configurable share of the noise real alt-text has:

- ``unrelated``: strings about something else (occasionally a long keyword-spam run),
- ``filename``: ``IMG_2041.jpg`` and friends,
- ``partial``: only some of the content (just the colour, just one of two objects),
- ``wrong``: a fluent description with the colour and/or shape wrong,
- ``boilerplate``: a few fixed strings shared by many images (what ALIGN's frequency filter removes).

Splits:

- ``train``: noisy captions; colour x shape combinations listed in ``unseen_class_names`` never
  occur in it, not even as one object among several.
- ``zeroshot``: one object per image, balanced over *all* colour x shape classes (seen and
  unseen), labelled in the JSON sidecar, for zero-shot classification with
  :data:`ZERO_SHOT_TEMPLATES` (which differ from every training caption style).
- ``retrieval``: held-out scenes of seen combinations with clean captions that give every
  object's size, colour, shape and position and the background, so instance-level retrieval
  is meaningful; the JSON sidecar also holds a second paraphrased caption.

Every sample is a pure function of ``(seed, split, index)``, so shards can be generated in any
order, by any number of processes, with identical results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from align_hf.data.render import COLOUR_RGB, SHAPES, TEXTURES, TONE_LEVELS, render_scene
from align_hf.data.vocab import build_vocab

logger = logging.getLogger(__name__)

COLOURS = tuple(COLOUR_RGB)
TONES = tuple(TONE_LEVELS)
SIZES = ("small", "medium", "large")
# Bounding-box diameter as a share of the image side.
SIZE_FRACTION = {"small": 0.24, "medium": 0.36, "large": 0.5}
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium",), "large": ("large", "big")}
# ALIGN keeps alt-texts of at most 20 unigrams; clean captions are built to fit.
MAX_CAPTION_WORDS = 20
MANIFEST_FORMAT = "align_hf.synthetic/1"  # the manifest a written corpus carries (see synthetic_files)
_WORD = re.compile(r"[^\W_]+")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top", "at the top center"),
    "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left", "at the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right side"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "at the bottom center"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses", "heart": "hearts"}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
SPLITS = ("train", "zeroshot", "retrieval")
NOISE_KINDS = ("unrelated", "filename", "partial", "wrong", "boilerplate")

# Zero-shot prompts: none of these phrasings is used by the training captions.
ZERO_SHOT_TEMPLATES = (
    "a photo of the {}.",
    "a drawing of the {}.",
    "a picture of one {}.",
    "the {} shape.",
    "an image showing the {}.",
)

# Web alt-text framings around a description (none is a zero-shot template).
FRAMES = ("photo of {}", "picture of {}", "image of {}", "drawing of {}", "{} - stock photo", "{}, digital drawing", "{} picture")
BOILERPLATE = (
    "click here to view the full size image",
    "image may contain: shape and graphic",
    "no description available for this image",
    "stock vector illustration, royalty free",
    "thumbnail for the product gallery page",
    "free download high quality image",
    "placeholder image for the article",
    "untitled design, page one",
)
NOISE_WORDS = (
    "sale", "summer", "wedding", "recipe", "car", "dog", "beach", "holiday", "download", "free", "best", "new",
    "home", "garden", "kitchen", "ideas", "cheap", "online", "shop", "fashion", "women", "men", "kids", "party",
    "birthday", "christmas", "travel", "hotel", "city", "night", "music", "video", "game", "logo", "vintage",
    "modern", "style", "decor", "furniture", "review", "price", "offer", "discount", "deal", "guide", "tips",
    "easy", "quick", "healthy", "food", "cake", "coffee", "tea", "flower", "tree", "mountain", "river", "sunset",
    "portrait", "family", "baby", "cat", "house", "apartment", "rent", "buy", "sell", "product", "brand",
    "official", "team", "sport", "football", "match", "news", "today", "week", "year", "event", "concert",
    "ticket", "book", "author", "cover", "poster", "print", "wallpaper", "hd", "4k", "inspiration", "craft",
    "diy", "tutorial", "pattern", "knitting", "bag", "shoes", "dress", "jacket", "watch", "phone", "case",
)
FILENAME_WORDS = ("img", "jpg", "jpeg", "png", "webp", "dsc", "photo", "image", "screenshot", "at", "untitled", "copy", "final", "edit")
# Words the training captions use around object phrases.
CAPTION_WORDS = (
    "a", "an", "and", "on", "in", "at", "the", "of", "with", "background", "illustration", "clip", "art", "icon",
    "graphic", "shapes", "shape", "group", "corner", "side", "middle", "something", "thing", "object", "colored",
    "photo", "picture", "image", "drawing", "stock", "digital",
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def class_names(colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES) -> list[str]:
    """Zero-shot class names ``"<colour> <shape>"``, colour-major."""
    return [f"{colour} {shape}" for colour in colours for shape in shapes]


def unseen_combinations(colours: Sequence[str], shapes: Sequence[str], count: int | None = None) -> list[tuple[str, str]]:
    """The (colour, shape) pairs withheld from training.

    One per colour by default, cycling through the shapes, so every colour and every shape is
    still seen in training with most partners (composition is learnable, not memorisable).
    """
    count = len(colours) if count is None else count
    if count > len(colours) * (len(shapes) - 1):
        raise ValueError("too many unseen combinations: every colour must keep at least one shape")
    pairs: list[tuple[str, str]] = []
    step = 0
    while len(pairs) < count:
        for i, colour in enumerate(colours):
            if len(pairs) == count:
                break
            shape = shapes[(i + step) % len(shapes)]
            if (colour, shape) not in pairs:
                pairs.append((colour, shape))
        step += 1
    return pairs


@dataclass(frozen=True)
class SyntheticConfig:
    """What the corpus contains. Defaults give 48 classes (8 colours x 6 shapes), 8 of them unseen.

    Args:
        image_size: side of the square images in pixels.
        num_train / zeroshot_per_class / num_retrieval: split sizes.
        noise: share of training captions replaced by noise (0..1).
        noise_weights: relative frequency of each noise kind (see module docstring).
        scene_weights: relative frequency of one object / two objects / a group of 2-4 alike.
        background_in_caption: probability a clean training caption mentions the background.
        position_in_caption: probability a clean caption of a single object gives its position.
            Below 1, more captions in a batch agree on everything but shape, so the contrastive
            loss has to learn shape to tell them apart.
        framing: probability a clean training caption is framed like web alt-text
            ("photo of ...", "... - stock photo"); see :data:`FRAMES`.
        zeroshot_sizes: object sizes used in the zero-shot split.
        colours / shapes: subsets of the available palette and shapes.
        num_unseen: combinations withheld from training (default: one per colour).
        seed: base seed; samples depend only on (seed, split, index).
        shard_size: samples per webdataset shard when writing.
    """

    image_size: int = 64
    num_train: int = 20000
    zeroshot_per_class: int = 10
    num_retrieval: int = 1000
    noise: float = 0.2
    noise_weights: dict = field(default_factory=lambda: {"unrelated": 0.25, "filename": 0.2, "partial": 0.2, "wrong": 0.2, "boilerplate": 0.15})
    scene_weights: dict = field(default_factory=lambda: {"single": 0.45, "pair": 0.35, "group": 0.2})
    background_in_caption: float = 0.6
    position_in_caption: float = 1.0
    framing: float = 0.3
    zeroshot_sizes: tuple = ("medium", "large")
    colours: tuple = COLOURS
    shapes: tuple = SHAPES
    num_unseen: int | None = None
    seed: int = 0
    shard_size: int = 1000
    supersample: int = 2

    def __post_init__(self):
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        unknown = [c for c in self.colours if c not in COLOUR_RGB] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; available: {COLOURS} x {SHAPES}")
        if set(self.noise_weights) - set(NOISE_KINDS):
            raise ValueError(f"noise kinds must be among {NOISE_KINDS}")
        if set(self.scene_weights) - {"single", "pair", "group"}:
            raise ValueError("scene kinds must be among single, pair, group")
        if len(self.colours) < 2 or len(self.shapes) < 2:
            raise ValueError("need at least two colours and two shapes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SyntheticConfig":
        values = dict(values)
        for name in ("zeroshot_sizes", "colours", "shapes"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass
class SyntheticSample:
    """One generated pair: ``image`` (RGB, image_size^2), the (possibly noisy) ``caption``, and ``meta``."""

    key: str
    image: Image.Image | None
    caption: str
    meta: dict[str, Any]


class SyntheticCorpus:
    """Generator of the synthetic corpus, usable in memory (``corpus.sample(split, i)``) or written to shards."""

    def __init__(self, config: SyntheticConfig | None = None):
        self.config = config or SyntheticConfig()
        cfg = self.config
        self.class_names = class_names(cfg.colours, cfg.shapes)
        self.unseen = unseen_combinations(cfg.colours, cfg.shapes, cfg.num_unseen)
        self.unseen_class_names = [f"{c} {s}" for c, s in self.unseen]
        self.seen_combinations = [(c, s) for c in cfg.colours for s in cfg.shapes if (c, s) not in self.unseen]
        self.seen_class_names = [f"{c} {s}" for c, s in self.seen_combinations]
        self.zeroshot_templates = ZERO_SHOT_TEMPLATES

    # ------------------------------------------------------------------ sizes and sampling

    def split_size(self, split: str) -> int:
        cfg = self.config
        sizes = {"train": cfg.num_train, "zeroshot": cfg.zeroshot_per_class * len(self.class_names), "retrieval": cfg.num_retrieval}
        if split not in sizes:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return sizes[split]

    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        # Separate streams for scene, pixels and caption: captions can be made without rendering.
        return np.random.default_rng([self.config.seed, SPLITS.index(split), index, stream])

    @staticmethod
    def _pick(rng: np.random.Generator, options: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        if weights is None:
            return options[int(rng.integers(len(options)))]
        probs = np.asarray(weights, dtype=np.float64)
        return options[int(rng.choice(len(options), p=probs / probs.sum()))]

    def _place(self, rng: np.random.Generator, size: str, cell: int) -> dict[str, float]:
        radius = SIZE_FRACTION[size] / 2 * rng.uniform(0.92, 1.08)
        margin = radius + 0.02
        row, col = divmod(cell, 3)
        jitter = 0.025
        x = margin + (col + 0.5) / 3 * (1 - 2 * margin) + rng.uniform(-jitter, jitter)
        y = margin + (row + 0.5) / 3 * (1 - 2 * margin) + rng.uniform(-jitter, jitter)
        return {"x": float(np.clip(x, margin, 1 - margin)), "y": float(np.clip(y, margin, 1 - margin)), "radius": float(radius)}

    def _object(self, rng: np.random.Generator, colour: str, shape: str, size: str, cell: int) -> dict[str, Any]:
        rgb = np.clip(np.asarray(COLOUR_RGB[colour]) + rng.integers(-16, 17, size=3), 0, 255)
        angle = 0.0 if shape in ("circle", "heart") else float(rng.uniform(-0.2, 0.2))
        return {
            "colour": colour, "shape": shape, "size": size, "position": POSITIONS[cell],
            "rgb": [int(v) for v in rgb], "angle": angle, **self._place(rng, size, cell),
        }

    def sample_scene(self, split: str, index: int) -> dict[str, Any]:
        """The scene of sample ``index`` of ``split``: kind, objects (with [0,1] geometry), background."""
        cfg = self.config
        rng = self._rng(split, index, 0)
        scene: dict[str, Any] = {"tone": self._pick(rng, TONES), "texture": self._pick(rng, TEXTURES)}
        if split == "zeroshot":
            label = index % len(self.class_names)
            colour, shape = self.class_names[label].split(" ")
            size = self._pick(rng, cfg.zeroshot_sizes)
            scene.update(kind="single", objects=[self._object(rng, colour, shape, size, int(rng.integers(9)))])
            scene.update(label=self.class_names[label], label_index=label, unseen=(colour, shape) in self.unseen)
            return scene
        kinds = list(cfg.scene_weights)
        kind = self._pick(rng, kinds, [cfg.scene_weights[k] for k in kinds])
        combos = self.seen_combinations
        if kind == "single":
            colour, shape = self._pick(rng, combos)
            objects = [self._object(rng, colour, shape, self._pick(rng, SIZES), int(rng.integers(9)))]
        elif kind == "pair":
            # Cells at least two apart on some axis, so two objects never overlap.
            cells = [(a, b) for a in range(9) for b in range(9) if a != b and max(abs(a // 3 - b // 3), abs(a % 3 - b % 3)) >= 2]
            first, second = self._pick(rng, cells)
            (c1, s1), (c2, s2) = self._pick(rng, combos), self._pick(rng, combos)
            objects = [
                self._object(rng, c1, s1, self._pick(rng, ("small", "medium")), first),
                self._object(rng, c2, s2, self._pick(rng, ("small", "medium")), second),
            ]
        else:
            count = int(rng.integers(2, 5))
            colour, shape = self._pick(rng, combos)
            cells = rng.permutation(9)[:count]
            objects = [self._object(rng, colour, shape, "small", int(cell)) for cell in cells]
        scene.update(kind=kind, objects=objects)
        return scene

    # ------------------------------------------------------------------ captions

    @staticmethod
    def _background_phrase(scene: dict[str, Any], short: bool = False) -> str:
        texture = "" if scene["texture"] == "plain" else scene["texture"] + " "
        return f"{texture}{scene['tone']} background" if short else f"on a {texture}{scene['tone']} background"

    @staticmethod
    def _size_word(obj: dict[str, Any], rng: np.random.Generator | None) -> str:
        options = SIZE_WORDS[obj["size"]]
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    def _object_phrase(self, obj: dict[str, Any], rng: np.random.Generator | None, with_size: bool = True) -> str:
        words = ([self._size_word(obj, rng)] if with_size else []) + [obj["colour"], obj["shape"]]
        return f"{article(words[0])} {' '.join(words)}"

    @staticmethod
    def _position_phrase(obj: dict[str, Any], rng: np.random.Generator | None) -> str:
        """``at the top left`` (canonical) or one of the longer variants."""
        if rng is None:
            return f"at the {obj['position']}"
        options = (f"at the {obj['position']}",) + POSITION_PHRASES[obj["position"]]
        return options[int(rng.integers(len(options)))]

    def _fit(self, *candidates: str) -> str:
        """First candidate within ALIGN's 20-unigram limit (the last one is short by construction)."""
        for text in candidates:
            if len(_WORD.findall(text)) <= MAX_CAPTION_WORDS:
                return text
        return candidates[-1]

    def describe(self, scene: dict[str, Any], rng: np.random.Generator | None = None) -> str:
        """Full description: every object's size, colour, shape and position, and the background.

        ``rng=None`` gives the canonical wording (at most 20 unigrams); with an RNG, synonyms
        and longer position phrases are drawn, falling back to shorter ones past 20 unigrams.
        """
        objects = scene["objects"]
        if scene["kind"] == "group":
            obj = objects[0]
            return f"{COUNT_WORDS[len(objects)]} {self._size_word(obj, rng)} {obj['colour']} {PLURALS[obj['shape']]} {self._background_phrase(scene)}"
        long = " and ".join(f"{self._object_phrase(o, rng)} {self._position_phrase(o, rng)}" for o in objects)
        short = " and ".join(f"{self._object_phrase(o, rng)} {self._position_phrase(o, None)}" for o in objects)
        if len(objects) == 1:
            return self._fit(f"{long} {self._background_phrase(scene)}", f"{short} {self._background_phrase(scene)}")
        return self._fit(f"{long}, {self._background_phrase(scene, short=True)}", f"{short}, {self._background_phrase(scene, short=True)}")

    def _clean_caption(self, scene: dict[str, Any], rng: np.random.Generator) -> str:
        """One of several alt-text styles describing the scene correctly (details may be omitted).

        A share of them is framed the way web alt-text often is ("photo of ...", "... - stock
        photo"): the framing words then carry no visual content, which is what lets prompt
        templates with such words work for zero-shot classification.
        """
        text = self._plain_caption(scene, rng)
        if rng.random() < self.config.framing and not text.startswith("illustration of"):
            frame = FRAMES[int(rng.integers(len(FRAMES)))]
            text = self._fit(frame.format(text), text)
        return text

    def _plain_caption(self, scene: dict[str, Any], rng: np.random.Generator) -> str:
        objects = scene["objects"]
        with_background = rng.random() < self.config.background_in_caption
        background = f" {self._background_phrase(scene)}" if with_background else ""
        style = int(rng.integers(4))
        if scene["kind"] == "group":
            obj = objects[0]
            count = COUNT_WORDS[len(objects)]
            plural = PLURALS[obj["shape"]]
            size = self._size_word(obj, rng)
            text = (
                f"{count} {size} {obj['colour']} {plural}",
                f"a group of {count} {obj['colour']} {plural}",
                f"{count} {obj['colour']} {plural}, clip art",
                f"illustration of {count} {size} {obj['colour']} {plural}",
            )[style]
            return text + background
        if scene["kind"] == "pair":
            if style == 3:
                a, b = (self._object_phrase(o, rng, with_size=False) for o in objects)
                return f"two shapes: {a} and {b}{background}"
            joiner = (" and ", ", ", " and ")[style]
            prefix = "illustration of " if style == 2 else ""
            long = joiner.join(f"{self._object_phrase(o, rng)} {self._position_phrase(o, rng)}" for o in objects)
            short = joiner.join(f"{self._object_phrase(o, rng)} {o['position']}" for o in objects)
            return self._fit(prefix + long + background, prefix + long, prefix + short)
        obj = objects[0]
        # Drawn only when configured, so corpora made with the default keep their exact captions.
        positioned = self.config.position_in_caption >= 1 or rng.random() < self.config.position_in_caption
        phrase = self._object_phrase(obj, rng) + (f" {self._position_phrase(obj, rng)}" if positioned else "")
        text = (
            phrase,
            f"{self._size_word(obj, rng)} {obj['colour']} {obj['shape']}" + (f", {obj['position']}" if positioned else ""),
            f"illustration of {phrase}",
            f"{obj['colour']} {obj['shape']} icon",
        )[style]
        return text + background

    def _noisy_caption(self, scene: dict[str, Any], rng: np.random.Generator, kind: str) -> str:
        objects = scene["objects"]
        if kind == "unrelated":
            # Mostly short junk; sometimes a keyword-spam run longer than ALIGN's 20-word limit.
            length = int(rng.integers(21, 31)) if rng.random() < 0.15 else int(rng.integers(2, 10))
            return " ".join(self._pick(rng, NOISE_WORDS) for _ in range(length))
        if kind == "filename":
            n = lambda digits: str(int(rng.integers(10 ** (digits - 1), 10**digits)))  # noqa: E731
            return self._pick(rng, (
                f"IMG_{n(4)}.jpg", f"DSC{n(5)}.JPG", f"image_{n(3)}.png", f"photo {n(4)}-{n(2)}-{n(2)}.jpeg",
                f"Screenshot {n(4)}-{n(2)}-{n(2)} at {n(2)}.{n(2)}.{n(2)}.png", f"untitled-{n(3)} copy final.webp",
            ))
        if kind == "partial":
            obj = objects[int(rng.integers(len(objects)))]
            return self._pick(rng, (
                obj["colour"], obj["shape"], f"{obj['colour']} shape", f"{article(obj['shape'])} {obj['shape']}",
                f"something {obj['colour']}", f"{obj['colour']} colored object",
                f"{self._object_phrase(obj, rng)} {self._position_phrase(obj, rng)}",
            ))
        if kind == "wrong":
            wrong = json.loads(json.dumps(scene))
            obj = wrong["objects"][int(rng.integers(len(objects)))]
            # Wrong colour, wrong shape or both, but always a combination seen in training, so
            # that not even wrong captions name an unseen combination.
            change = int(rng.integers(3))
            options = [
                (c, s) for c, s in self.seen_combinations
                if (c != obj["colour"]) == (change in (0, 2)) and (s != obj["shape"]) == (change in (1, 2))
            ]
            if not options:
                options = [(c, s) for c, s in self.seen_combinations if (c, s) != (obj["colour"], obj["shape"])]
            obj["colour"], obj["shape"] = self._pick(rng, options)
            if wrong["kind"] == "group":
                for other in wrong["objects"]:
                    other["colour"], other["shape"] = obj["colour"], obj["shape"]
            return self._clean_caption(wrong, rng)
        if kind == "boilerplate":
            return self._pick(rng, BOILERPLATE)
        raise ValueError(f"unknown noise kind {kind!r}")

    # ------------------------------------------------------------------ samples

    def sample(self, split: str, index: int, render: bool = True) -> SyntheticSample:
        """Sample ``index`` of ``split`` (deterministic). ``render=False`` skips the image (``None``)."""
        total = self.split_size(split)
        if not 0 <= index < total:
            raise IndexError(f"{split} has {total} samples, asked for index {index}")
        cfg = self.config
        scene = self.sample_scene(split, index)
        image = None
        if render:
            image = render_scene(scene["objects"], scene["tone"], scene["texture"], cfg.image_size, self._rng(split, index, 1), cfg.supersample)
        rng = self._rng(split, index, 2)
        canonical = self.describe(scene)
        meta: dict[str, Any] = {
            "split": split,
            "index": index,
            "kind": scene["kind"],
            "background": {"tone": scene["tone"], "texture": scene["texture"]},
            "objects": [{k: o[k] for k in ("colour", "shape", "size", "position")} for o in scene["objects"]],
            "description": canonical,
            "noise": None,
        }
        if split == "train":
            if rng.random() < cfg.noise:
                kinds = list(cfg.noise_weights)
                kind = self._pick(rng, kinds, [cfg.noise_weights[k] for k in kinds])
                caption = self._noisy_caption(scene, rng, kind)
                meta["noise"] = kind
            else:
                caption = self._clean_caption(scene, rng)
        elif split == "zeroshot":
            caption = canonical
            meta.update(label=scene["label"], label_index=scene["label_index"], unseen=scene["unseen"])
        else:
            caption = canonical
            meta["captions"] = [canonical, self.describe(scene, rng)]
        return SyntheticSample(f"{split}-{index:07d}", image, caption, meta)

    def iter_split(self, split: str, start: int = 0, stop: int | None = None, render: bool = True) -> Iterable[SyntheticSample]:
        stop = self.split_size(split) if stop is None else min(stop, self.split_size(split))
        for index in range(start, stop):
            yield self.sample(split, index, render)

    # ------------------------------------------------------------------ vocabulary

    def words(self) -> list[str]:
        """Every word the generator can emit, plus the zero-shot template words."""
        cfg = self.config
        texts: list[str] = list(cfg.colours) + list(cfg.shapes) + [PLURALS[s] for s in cfg.shapes]
        texts += [w for options in SIZE_WORDS.values() for w in options] + list(POSITIONS)
        texts += [p for options in POSITION_PHRASES.values() for p in options]
        texts += list(COUNT_WORDS.values()) + list(TONES) + list(TEXTURES) + list(CAPTION_WORDS)
        texts += list(NOISE_WORDS) + list(BOILERPLATE) + list(FILENAME_WORDS)
        texts += [t.format(name) for t in ZERO_SHOT_TEMPLATES for name in self.class_names[:1]]
        return texts

    def vocab(self) -> list[str]:
        """WordPiece vocabulary covering the corpus (see :func:`align_hf.data.vocab.build_vocab`)."""
        return build_vocab(self.words())

    def manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "unseen_class_names": self.unseen_class_names,
            "seen_class_names": self.seen_class_names,
            "zeroshot_templates": list(self.zeroshot_templates),
            "splits": {split: {"num_samples": self.split_size(split)} for split in SPLITS},
        }

"""Build the small TensorFlow checkpoints that tests/test_conversion_*.py read (needs TensorFlow).

Run by hand in a side environment, never in CI (the tests only read the committed outputs)::

    python3.11 -m venv ../tfenv
    ../tfenv/bin/pip install tensorflow-cpu==2.15.1 tf-keras==2.15.1 transformers==4.41.2 "numpy<2"
    ../tfenv/bin/python tests/tools/make_tf_fixtures.py --out tests/fixtures/tf     # or: make tf-fixtures

What it writes (into --out):

* ``checkpoints.tar.xz``: the checkpoints themselves (86 MB unpacked, 3.4 MB packed: weights are
  drawn from 15 levels per tensor, slots and raw TF1 weights are zeros, the TF1 copies repeat the
  ALIGN weights; every weight value is still independently random):
    - ``align_b0/ckpt``: an ALIGN model built the way kakaobrain/coyo-align builds it (Keras
      EfficientNet-B0 layer names with the top conv removed, Rescaling(1/127.5, -1), fixed
      ``correct_pad`` zero padding, virtual-batch BatchNormalization, an image Dense, transformers'
      TFBertModel with a tiny vocab, a text Dense on the [CLS] state, an unnamed temperature
      Variable, loss trackers), compiled with a legacy Adam so optimizer slots are saved too, and
      written with ``save_weights``.
    - ``efficientnet_tf1/model.ckpt``: the same image weights under tensorflow/tpu TF1 names, as
      ``/ExponentialMovingAverage`` shadows, with zeroed raw variables, a head, RMSProp slots for the
      stem and a ``global_step``.
    - ``bert_tf1/bert_model.ckpt``: the same BERT weights under google-research/bert TF1 names, with
      the pooler, the pre-training heads, ``adam_m``/``adam_v`` slots and ``global_step``.
    - ``dtypes/ckpt``: one variable per dtype TF writes, a string tensor, an empty and a larger
      tensor (TF2 object-based).
    - ``tf1_sharded/model.ckpt``: a TF1 name-based checkpoint split over two data shards, with a
      partitioned (sliced) variable.
* ``vocab.txt``: the tiny uncased WordPiece vocabulary of the BERT tower.
* ``expected.npz``: TensorFlow's own outputs for fixed inputs (image embeddings at 289 and 288 px,
  text embeddings, BERT hidden states, tensorflow/tpu-style 'SAME'-padded EfficientNet features),
  the inputs, and the exact values of the dtypes checkpoint.
* ``manifest.json``: versions and command, every checkpoint's keys with dtype, shape, sha256 of the
  bytes TensorFlow itself reads back, and (TF2) the key -> full_name map parsed by TF's protobuf.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two logical CPUs let the TF1 saver write one data shard per device; must precede any TF op.
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import transformers  # noqa: E402
from transformers import BertConfig, BertTokenizer, TFBertModel  # noqa: E402

L = tf.keras.layers

SEQ_LEN = 16
EMBED_DIM = 64
BERT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
TEXTS = ["a photo of a cat", "two dogs playing in the snow on a sunny day", "an old red car"]
N_IMAGES = 3
VBATCH = 16  # virtual_batch_size: Keras BN with it needs batches that are multiples of 16

# EfficientNet-B0 stages: kernel, repeats, filters in, filters out, expand ratio, stride.
# This table and round_filters() repeat align_hf.conversion.efficientnet_family on purpose: the
# fixtures are the independent reference the converters are tested against (and this script runs
# in a TensorFlow venv), so a slip in the package's copy must not reach them.
B0_STAGES = [
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
]

VOCAB_WORDS = (
    "a an the of in on at with and two three old new red blue green white black small big "
    "photo picture image cat cats dog dogs car cars playing running sitting snow sunny day night "
    "park street house tree man woman child people bird birds water beach city road field "
    "##s ##ing ##ed ##er ##ly"
).split()


# ----------------------------------------------------------------------------- random weights
def levels(rng: np.random.Generator, shape, scale: float, center: float = 0.0) -> np.ndarray:
    """Random values on 15 evenly spaced levels (unit-ish variance times ``scale``).

    Few distinct values per tensor keep the packed fixtures small; they are still independent per
    element, so any transposition or misplaced tensor changes the outputs.
    """
    k = rng.integers(-7, 8, size=shape)
    return (center + k * (scale * math.sqrt(3.0) / 7.0)).astype(np.float32)


def randomise(model: tf.keras.Model, rng: np.random.Generator) -> None:
    for var in model.weights:
        name = var.name
        shape = tuple(var.shape)
        if "moving_variance" in name:
            value = np.ones(shape, np.float32)  # calibrated below
        elif "moving_mean" in name:
            value = np.zeros(shape, np.float32)
        elif name.endswith("gamma:0"):
            value = levels(rng, shape, 0.2, center=1.0)
        elif name.endswith("beta:0") or name.endswith("bias:0"):
            value = levels(rng, shape, 0.2)
        elif "embeddings" in name or name.endswith("weight:0"):
            value = levels(rng, shape, 1.0)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) if "depthwise" not in name else int(np.prod(shape[:2]))
            value = levels(rng, shape, 1.0 / math.sqrt(fan_in))
        else:
            value = levels(rng, shape, 0.2)
        var.assign(value)


def calibrate_batchnorm(model: tf.keras.Model, images: np.ndarray) -> None:
    """Set every BN's moving statistics to the statistics it sees, so activations stay O(1)."""
    bns = [l for l in model.submodules if isinstance(l, L.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(images, training=True)
    for bn in bns:
        bn.momentum = 0.99


# ----------------------------------------------------------------------------- coyo-style ALIGN
def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def batch_norm(name: str) -> L.BatchNormalization:
    return L.BatchNormalization(axis=3, virtual_batch_size=VBATCH, name=name)


def keras_pad(kernel: int) -> tuple:
    # Keras correct_pad for an unknown input size: (k//2 - 1) before, k//2 after.
    return ((kernel // 2 - 1, kernel // 2), (kernel // 2 - 1, kernel // 2))


def mbconv(x, prefix, filters_in, filters_out, kernel, stride, expand, drop_rate):
    inputs = x
    filters = filters_in * expand
    if expand != 1:
        x = L.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = batch_norm(prefix + "expand_bn")(x)
        x = L.Activation("swish", name=prefix + "expand_activation")(x)
    if stride == 2:
        x = L.ZeroPadding2D(keras_pad(kernel), name=prefix + "dwconv_pad")(x)
    x = L.DepthwiseConv2D(
        kernel, strides=stride, padding="valid" if stride == 2 else "same", use_bias=False, name=prefix + "dwconv"
    )(x)
    x = batch_norm(prefix + "bn")(x)
    x = L.Activation("swish", name=prefix + "activation")(x)
    se = L.GlobalAveragePooling2D(name=prefix + "se_squeeze")(x)
    se = L.Reshape((1, 1, filters), name=prefix + "se_reshape")(se)
    se = L.Conv2D(max(1, int(filters_in * 0.25)), 1, activation="swish", name=prefix + "se_reduce")(se)
    se = L.Conv2D(filters, 1, activation="sigmoid", name=prefix + "se_expand")(se)
    x = L.multiply([x, se], name=prefix + "se_excite")
    x = L.Conv2D(filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = batch_norm(prefix + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = L.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = L.add([x, inputs], name=prefix + "add")
    return x


def keras_efficientnet(width: float = 1.0, depth: float = 1.0, name: str = "efficientnetb0") -> tf.keras.Model:
    """EfficientNet as coyo-align's copy of keras.applications builds it with include_top=False, pooling='avg'."""
    inputs = L.Input((None, None, 3))
    x = L.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = L.ZeroPadding2D(keras_pad(3), name="stem_conv_pad")(x)
    x = L.Conv2D(round_filters(32, width), 3, strides=2, padding="valid", use_bias=False, name="stem_conv")(x)
    x = batch_norm("stem_bn")(x)
    x = L.Activation("swish", name="stem_activation")(x)
    total = sum(math.ceil(depth * s[1]) for s in B0_STAGES)
    b = 0
    for i, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(B0_STAGES):
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(math.ceil(depth * repeats)):
            x = mbconv(
                x,
                f"block{i + 1}{chr(97 + j)}_",
                f_in if j == 0 else f_out,
                f_out,
                kernel,
                stride if j == 0 else 1,
                expand,
                0.2 * b / total,
            )
            b += 1
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return tf.keras.Model(inputs, x, name=name)


def vision_encoder(embed_dim: int) -> tf.keras.Model:
    effnet = keras_efficientnet()
    inputs = L.Input(shape=(289, 289, 3), name="image_input")
    outputs = L.Dense(embed_dim, dtype=tf.float32)(effnet(inputs))
    return tf.keras.Model(inputs, outputs, name="vision_encoder")


def text_encoder(embed_dim: int, vocab_size: int) -> tf.keras.Model:
    inputs = dict(
        input_ids=L.Input(shape=(SEQ_LEN,), dtype=tf.int32),
        attention_mask=L.Input(shape=(SEQ_LEN,), dtype=tf.int32),
        token_type_ids=L.Input(shape=(SEQ_LEN,), dtype=tf.int32),
    )
    bert = TFBertModel(BertConfig(vocab_size=vocab_size, **BERT))
    hidden = bert(inputs, training=None)["last_hidden_state"]
    outputs = L.Dense(embed_dim, dtype=tf.float32)(hidden[:, 0, :])
    return tf.keras.Model(inputs, outputs, name="text_encoder")


class Align(tf.keras.Model):
    """The attribute layout of coyo-align's ALIGN model (what its checkpoints' keys follow)."""

    def __init__(self, embed_dim: int, vocab_size: int):
        super().__init__()
        self.image_encoder = vision_encoder(embed_dim)
        self.text_encoder = text_encoder(embed_dim, vocab_size)
        self.temperature = tf.Variable(initial_value=1.0, trainable=True)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.loss_i2t_tracker = tf.keras.metrics.Mean(name="loss_i2t")
        self.loss_t2i_tracker = tf.keras.metrics.Mean(name="loss_t2i")

    def call(self, inputs, training=None):
        images, text = inputs
        return self.image_encoder(images, training), self.text_encoder(text, training)


# ----------------------------------------------------------------------------- inputs
def make_images(rng: np.random.Generator, n: int, size: int = 289) -> np.ndarray:
    """Smooth colour patterns plus noise, uint8 (n, size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = rng.uniform(1, 6, size=(3, 2))
        p = rng.uniform(0, 2 * np.pi, size=3)
        chans = [np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + p[c]) for c in range(3)]
        img = 127.5 + 100 * np.stack(chans, -1) + rng.normal(0, 12, size=(size, size, 3))
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(out)


def pad_batch(x: np.ndarray) -> np.ndarray:
    reps = -(-len(x) // VBATCH) * VBATCH - len(x)
    return np.concatenate([x, np.repeat(x[-1:], reps, axis=0)]) if reps else x


# ----------------------------------------------------------------------------- TF1 renaming
def tpu_efficientnet_names(effnet: tf.keras.Model) -> dict[str, np.ndarray]:
    """The Keras B0 weights under tensorflow/tpu TF1 names (BN stats flattened to (C,))."""
    out: dict[str, np.ndarray] = {}
    scope = "efficientnet-b0"
    block_ids: dict[str, int] = {}
    for var in effnet.weights:
        layer, leaf = var.name[:-2].rsplit("/", 1)
        value = var.numpy()
        if layer.startswith("stem_"):
            base = f"{scope}/stem/" + ("conv2d" if layer == "stem_conv" else "tpu_batch_normalization")
        else:
            block, part = layer.split("_", 1)
            idx = block_ids.setdefault(block, len(block_ids))
            has_expand = not block.startswith("block1")
            bn = ["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"]
            if not has_expand:
                bn = [None] + bn[:2]
            local = {
                "expand_conv": "conv2d",
                "expand_bn": bn[0],
                "dwconv": "depthwise_conv2d",
                "bn": bn[1],
                "se_reduce": "se/conv2d",
                "se_expand": "se/conv2d_1",
                "project_conv": "conv2d_1" if has_expand else "conv2d",
                "project_bn": bn[2],
            }[part]
            base = f"{scope}/blocks_{idx}/{local}"
        if leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
            value = value.reshape(-1)
        out[f"{base}/{leaf}"] = value
    return out


def google_bert_names(bert_model: TFBertModel) -> dict[str, np.ndarray]:
    out = {}
    for var in bert_model.weights:
        name = var.name[:-2]
        name = name[name.index("bert/") :]
        name = name.replace("layer_._", "layer_")
        name = name.replace("word_embeddings/weight", "word_embeddings")
        name = name.replace("position_embeddings/embeddings", "position_embeddings")
        name = name.replace("token_type_embeddings/embeddings", "token_type_embeddings")
        out[name] = var.numpy()
    return out


def save_tf1(prefix: Path, variables: dict[str, np.ndarray], devices: dict[str, str] | None = None,
             partitioned: dict[str, tuple[np.ndarray, int]] | None = None) -> None:
    """Write a name-based checkpoint with tf.compat.v1.train.Saver (sharded by device)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    devices = devices or {}
    with tf.Graph().as_default():
        var_list = {}
        for name, value in variables.items():
            with tf.device(devices.get(name, "/CPU:0")):
                var_list[name] = tf.compat.v1.Variable(value, name=f"v{len(var_list)}")
        saveables = list(var_list.items())
        assigns = []
        for name, (value, parts) in (partitioned or {}).items():
            pv = tf.compat.v1.get_variable(
                name,
                shape=value.shape,
                dtype=tf.as_dtype(value.dtype),
                initializer=tf.compat.v1.zeros_initializer(),
                partitioner=tf.compat.v1.fixed_size_partitioner(parts),
            )
            for part in pv:
                start = part._save_slice_info.var_offset[0]  # rows this partition holds
                assigns.append(part.assign(value[start : start + part.shape[0]]))
            saveables.append((name, pv))
        saver = tf.compat.v1.train.Saver(dict(saveables), sharded=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(assigns)
            saver.save(sess, str(prefix), write_meta_graph=False)


# ----------------------------------------------------------------------------- manifest
def describe_checkpoint(prefix: Path, root: Path) -> dict:
    """What TensorFlow itself reads back: keys, dtypes, shapes, sha256 of the bytes, full names."""
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    keys = {}
    for key in sorted(shapes):
        value = reader.get_tensor(key)
        if dtypes[key] == tf.string:
            raw = value if isinstance(value, bytes) else b"".join(np.asarray(value, dtype=object).reshape(-1))
        else:
            raw = np.ascontiguousarray(value).tobytes()
        keys[key] = {
            "dtype": dtypes[key].name,
            "shape": list(shapes[key]),
            "sha256": hashlib.sha256(raw).hexdigest()[:16],  # 64 bits tell tensors apart
        }
    full_names = {}
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in shapes:
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        for node in graph.nodes:
            for attr in node.attributes:
                full_names[attr.checkpoint_key] = attr.full_name
    files = sorted(p.name for p in prefix.parent.iterdir())
    return {"prefix": str(prefix.relative_to(root)), "files": files, "keys": keys, "full_names": full_names}


# ----------------------------------------------------------------------------- main
def build(out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="tf_fixtures_"))
    expected: dict[str, np.ndarray] = {}

    # Vocabulary and tokenised texts
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + VOCAB_WORDS
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    enc = tok(TEXTS, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="np")
    text_inputs = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for k, v in text_inputs.items():
        expected[f"text_{k}"] = v

    images = make_images(rng, N_IMAGES)
    expected["images_289"] = images

    # ---- ALIGN (coyo-align layout)
    tf.keras.backend.clear_session()
    align = Align(EMBED_DIM, len(vocab))
    align.compile(optimizer=tf.keras.optimizers.legacy.Adam(1e-3))
    calib = make_images(rng, VBATCH).astype(np.float32)
    align((calib, {k: np.repeat(v[:1], VBATCH, 0) for k, v in text_inputs.items()}), training=False)
    randomise(align, rng)
    calibrate_batchnorm(align.image_encoder, calib)
    align.temperature.assign(0.07)
    # One Adam step with zero gradients creates every slot (m, v = 0) and leaves weights unchanged.
    variables = align.trainable_variables
    align.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for tracker, value in ((align.loss_tracker, 4.2), (align.loss_i2t_tracker, 2.0), (align.loss_t2i_tracker, 2.2)):
        tracker.update_state(value)
    prefix = tmp / "align_b0" / "ckpt"
    align.save_weights(str(prefix))

    effnet = align.image_encoder.get_layer("efficientnetb0")
    image_dense = align.image_encoder.layers[-1]
    for size in (289, 288):
        x = pad_batch(images[:, :size, :size].astype(np.float32))
        pooled = effnet(x, training=False).numpy()
        expected[f"align_image_pooled_{size}"] = pooled[:N_IMAGES]
        expected[f"align_image_embeds_{size}"] = image_dense(pooled).numpy()[:N_IMAGES]
    full = align.image_encoder(pad_batch(images.astype(np.float32)), training=False).numpy()[:N_IMAGES]
    assert np.allclose(full, expected["align_image_embeds_289"], atol=1e-6)
    expected["align_text_embeds"] = align.text_encoder(text_inputs, training=False).numpy()
    expected["align_temperature"] = np.float32(align.temperature.numpy())
    spread = np.std(expected["align_image_embeds_289"], axis=0).mean()
    assert spread > 1e-2 * np.abs(expected["align_image_embeds_289"]).mean(), "images give near-identical embeddings"

    # BERT alone (for the TF1 BERT fixture)
    bert = align.text_encoder.get_layer([l.name for l in align.text_encoder.layers if "bert" in l.name][0])
    hidden = bert(text_inputs, training=False)["last_hidden_state"].numpy()
    expected["bert_last_hidden_state"] = hidden

    # tensorflow/tpu EfficientNet computes stride-2 convs with TF 'SAME' padding: clone with that.
    def same_padding(layer):
        cfg = layer.get_config()
        if isinstance(layer, L.ZeroPadding2D):
            return L.ZeroPadding2D(((0, 0), (0, 0)), name=layer.name)
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)) and tuple(cfg["strides"]) == (2, 2):
            cfg["padding"] = "same"
        if isinstance(layer, L.BatchNormalization):
            cfg["axis"] = 3  # virtual batching rewrote it to the reshaped rank at build time
        return layer.__class__.from_config(cfg)

    effnet_same = tf.keras.models.clone_model(effnet, clone_function=same_padding)
    effnet_same.set_weights(effnet.get_weights())
    for size in (289, 288):
        x = pad_batch(images[:, :size, :size].astype(np.float32))
        expected[f"tpu_effnet_pooled_{size}"] = effnet_same(x, training=False).numpy()[:N_IMAGES]
    assert np.allclose(expected["tpu_effnet_pooled_288"], expected["align_image_pooled_288"], atol=1e-5)
    assert not np.allclose(expected["tpu_effnet_pooled_289"], expected["align_image_pooled_289"], atol=1e-3)

    # ---- TF1 EfficientNet (tensorflow/tpu names, EMA shadows hold the real weights)
    ema = tpu_efficientnet_names(effnet)
    head_in = 320
    ema["efficientnet-b0/head/conv2d/kernel"] = levels(rng, (1, 1, head_in, 1280), 1 / math.sqrt(head_in))
    for leaf, center in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0), ("moving_variance", 1.0)):
        ema[f"efficientnet-b0/head/tpu_batch_normalization/{leaf}"] = levels(rng, (1280,), 0.1, center)
    ema["efficientnet-b0/head/dense/kernel"] = levels(rng, (1280, 10), 0.03)
    ema["efficientnet-b0/head/dense/bias"] = levels(rng, (10,), 0.1)
    tf1 = {}
    for name, value in ema.items():
        tf1[name] = np.zeros_like(value)  # raw weights differ from the shadows a converter must prefer
        tf1[f"{name}/ExponentialMovingAverage"] = value
    stem = "efficientnet-b0/stem/conv2d/kernel"
    tf1[f"{stem}/RMSProp"] = np.zeros_like(ema[stem])
    tf1[f"{stem}/RMSProp_1"] = np.zeros_like(ema[stem])
    tf1["global_step"] = np.int64(1000)
    save_tf1(tmp / "efficientnet_tf1" / "model.ckpt", tf1)

    # ---- TF1 BERT (google-research/bert names)
    gb = google_bert_names(bert)
    h, v = BERT["hidden_size"], len(vocab)
    gb["cls/predictions/transform/dense/kernel"] = levels(rng, (h, h), 0.1)
    gb["cls/predictions/transform/dense/bias"] = levels(rng, (h,), 0.1)
    gb["cls/predictions/transform/LayerNorm/gamma"] = levels(rng, (h,), 0.1, 1.0)
    gb["cls/predictions/transform/LayerNorm/beta"] = levels(rng, (h,), 0.1)
    gb["cls/predictions/output_bias"] = levels(rng, (v,), 0.1)
    gb["cls/seq_relationship/output_weights"] = levels(rng, (2, h), 0.1)
    gb["cls/seq_relationship/output_bias"] = levels(rng, (2,), 0.1)
    tf1 = dict(gb)
    for name, value in gb.items():
        tf1[f"{name}/adam_m"] = np.zeros_like(value)
        tf1[f"{name}/adam_v"] = np.zeros_like(value)
    tf1["global_step"] = np.int64(1000)
    save_tf1(tmp / "bert_tf1" / "bert_model.ckpt", tf1)

    # ---- every dtype (TF2 object-based)
    dtype_values = {
        "f16": np.array([[0.5, -1.25, 65504.0]], np.float16),
        "f32": rng.normal(size=(300, 50)).astype(np.float32),  # > 2 KB: exercises chunked CRC
        "f64": np.array([np.pi, -np.e, 1e300], np.float64),
        "bf16": np.array([1.0, -2.5, 3.140625, 1e30], np.float32),
        "i8": np.array([-128, 0, 127], np.int8),
        "i16": np.array([-32768, 1, 32767], np.int16),
        "i32": np.arange(-5, 7, dtype=np.int32).reshape(3, 4),
        "i64": np.array([-(2**62), 0, 2**62 + 5], np.int64),
        "u8": np.array([0, 1, 255], np.uint8),
        "u16": np.array([0, 65535], np.uint16),
        "u32": np.array([0, 2**32 - 1], np.uint32),
        "u64": np.array([0, 2**64 - 1], np.uint64),
        "bool": np.array([[True, False], [False, True]]),
        "c64": np.array([1 + 2j, -3.5j], np.complex64),
        "c128": np.array([1e-300 + 1j], np.complex128),
        "scalar": np.float32(42.5),
        "empty": np.zeros((0, 3), np.float32),
    }
    strings = np.array([[b"hello", b""], ["caf\u00e9".encode(), bytes(range(256))]], dtype=object)
    tf_vars = {}
    for name, value in dtype_values.items():
        dtype = tf.bfloat16 if name == "bf16" else tf.as_dtype(np.asarray(value).dtype)
        tf_vars[name] = tf.Variable(tf.cast(tf.constant(value), dtype) if name == "bf16" else tf.constant(value))
    tf_vars["str"] = tf.Variable(tf.constant(strings.tolist(), dtype=tf.string))
    ckpt = tf.train.Checkpoint(**tf_vars)
    ckpt.write(str(tmp / "dtypes" / "ckpt"))
    for name, var in tf_vars.items():
        value = var.numpy()
        if name == "bf16":
            expected["dtype_bf16_bits"] = np.frombuffer(value.tobytes(), np.uint16).reshape(value.shape)
            value = value.astype(np.float32)
        if name == "str":
            continue
        expected[f"dtype_{name}"] = value
    expected["dtype_str_lengths"] = np.array([[len(s) for s in row] for row in strings])

    # ---- TF1, two shards, a partitioned variable
    part = rng.normal(size=(300, 4)).astype(np.float32)
    save_tf1(
        tmp / "tf1_sharded" / "model.ckpt",
        {"layer/kernel": levels(rng, (5, 3), 1.0), "layer/bias": levels(rng, (3,), 1.0), "step": np.int64(7)},
        devices={"layer/bias": "/CPU:1", "step": "/CPU:1"},
        partitioned={"embedding/table": (part, 3)},
    )
    expected["tf1_partitioned"] = part

    # ---- manifest and archive
    manifest = {
        "generator": "tests/tools/make_tf_fixtures.py",
        "command": f"python tests/tools/make_tf_fixtures.py --out {out} --seed {seed}",
        "versions": {"tensorflow": tf.__version__, "tf_keras": importlib.metadata.version("tf-keras"),
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "seed": seed,
        "align": {"embed_dim": EMBED_DIM, "seq_len": SEQ_LEN, "vocab_size": len(vocab), "bert": BERT,
                  "efficientnet": "b0", "texts": TEXTS},
        "checkpoints": {},
    }
    checkpoints = {
        "align_b0": tmp / "align_b0" / "ckpt",
        "efficientnet_tf1": tmp / "efficientnet_tf1" / "model.ckpt",
        "bert_tf1": tmp / "bert_tf1" / "bert_model.ckpt",
        "dtypes": tmp / "dtypes" / "ckpt",
        "tf1_sharded": tmp / "tf1_sharded" / "model.ckpt",
    }
    for name, prefix in checkpoints.items():
        manifest["checkpoints"][name] = describe_checkpoint(prefix, tmp)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(out / "expected.npz", **expected)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=9) as tar:
        for name in checkpoints:
            for path in sorted((tmp / name).iterdir()):
                info = tar.gettarinfo(str(path), arcname=f"{name}/{path.name}")
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    (out / "checkpoints.tar.xz").write_bytes(buf.getvalue())
    shutil.rmtree(tmp)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/tf"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, args.seed)


if __name__ == "__main__":
    main()

"""The key names and tensor shapes of residual-encoder U-Net checkpoints: FOMO26's and nnssl's (fomo_reference.md,
section 7).

One network, two namings of its tensors:
- :data:`FOMO26` (gardening-tools' ``ResidualEncoderUNet``, in ``resenc_unet_b.ckpt``): the stem is
  ``encoder.stem.conv1``, a conv layer's norm is ``norm_op``, the decoder has ``upsample_layers``, ``decoder_convs``
  (``conv1``, ``conv2``, ...) and ``out_conv``;
- :data:`NNSSL` (dynamic-network-architectures' ``ResidualEncoderUNet``, in nnssl's ``network_weights`` and in our
  own nnU-Net checkpoints): ``encoder.stem.convs.0``, ``norm``, ``decoder.transpconvs``, ``decoder.stages`` and
  ``decoder.seg_layers`` (one per decoder stage, the last being the output conv).
The residual stages are named alike: ``encoder.stages.S.blocks.B.conv1`` / ``conv2`` / ``skip.I``.

PyTorch's state dict lists a module registered under two names twice: every conv layer's ``all_modules.0`` (conv)
and ``all_modules.1`` (norm) in both libraries, and in DNA every encoder tensor again under ``decoder.encoder.``
(its decoder keeps a reference to the encoder). These are :func:`aliases` of the canonical keys.
This module is the single written-down copy of the spec: the transfer table, the detection of
``fomo_inspect_checkpoint`` and the test checkpoints of ``testing.py`` all read it. Keys carry no ``model.`` prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from nnunet_ext.networks.resenc import NNSSL_RESENC_L, RESENC_DECODER_CONVS, preset_name

FOMO26 = "fomo26"
NNSSL = "nnssl"
#: The 1-channel stem kernel, by naming.
STEM_WEIGHT = {FOMO26: "encoder.stem.conv1.conv.weight", NNSSL: "encoder.stem.convs.0.conv.weight"}
#: Where every encoder key appears a second time in DNA's state dict.
DNA_ENCODER_ALIAS_PREFIX = "decoder."
ENCODER_PREFIX = "encoder."
#: Tensors of a conv layer's conv and norm; the 1x1 skip projections have no conv bias.
_CONV = ("conv.weight", "conv.bias")
_NORM = ("weight", "bias")
_NORM_MODULE = {FOMO26: "norm_op", NNSSL: "norm"}
#: Position of the conv inside a conv layer's ``all_modules``; the norm follows it, or follows a dropout where
#: the layer has one (gardening-tools' decoder convs hold a Dropout3d with p = 0: no tensors, no effect).
_ALL_MODULES_CONV = 0
CONV_KERNEL = (3, 3, 3)
UPSAMPLE_KERNEL = (2, 2, 2)
POINTWISE_KERNEL = (1, 1, 1)
PRETRAINING_CHANNELS = 1


@dataclass(frozen=True)
class ConvLayer:
    """One conv -> instance norm layer: its module path in each naming, channels, kernel and conv bias."""

    paths: dict[str, str]
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    bias: bool = True
    #: FOMO26 (gardening-tools) builds this layer with a dropout module between conv and norm.
    fomo26_dropout: bool = False

    def tensors(self, naming: str) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(key, shape) of the layer's canonical tensors in ``naming``."""
        path = self.paths[naming]
        yield f"{path}.conv.weight", (self.out_channels, self.in_channels, *self.kernel)
        if self.bias:
            yield f"{path}.conv.bias", (self.out_channels,)
        for tensor in _NORM:
            yield f"{path}.{_NORM_MODULE[naming]}.{tensor}", (self.out_channels,)

    def aliases(self, naming: str) -> Iterator[tuple[str, str]]:
        """(alias, canonical key) of the layer's ``all_modules`` entries."""
        path = self.paths[naming]
        for tensor in _CONV[: 2 if self.bias else 1]:
            yield f"{path}.all_modules.{_ALL_MODULES_CONV}.{tensor.split('.')[1]}", f"{path}.{tensor}"
        norm_index = _ALL_MODULES_CONV + 1 + (self.fomo26_dropout and naming == FOMO26)
        for tensor in _NORM:
            yield f"{path}.all_modules.{norm_index}.{tensor}", f"{path}.{_NORM_MODULE[naming]}.{tensor}"


@dataclass(frozen=True)
class PlainModule:
    """A module with weight and bias (transposed conv, output conv), by naming; a conv's weight is [out, in, ...],
    a transposed conv's [in, out, ...]."""

    paths: dict[str, str]
    weight_shape: tuple[int, ...]
    transposed: bool = False

    def tensors(self, naming: str) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield f"{self.paths[naming]}.weight", self.weight_shape
        yield f"{self.paths[naming]}.bias", (self.weight_shape[1 if self.transposed else 0],)


@dataclass(frozen=True)
class ResEncLayout:
    """One concrete residual-encoder U-Net: features and residual blocks per stage, decoder convs, channels."""

    features: tuple[int, ...]
    blocks: tuple[int, ...]
    decoder_convs: int = RESENC_DECODER_CONVS
    input_channels: int = PRETRAINING_CHANNELS
    output_channels: int = PRETRAINING_CHANNELS

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @property
    def model_name(self) -> str | None:
        """FOMO26's name of the size (``resenc_unet_b`` ...), None for another size."""
        return preset_name(self.features, self.blocks)

    def encoder_layers(self) -> list[ConvLayer]:
        """The stem, then every residual block's conv1, conv2 and skip projection, in the encoder's order."""
        layers = [ConvLayer({FOMO26: "encoder.stem.conv1", NNSSL: "encoder.stem.convs.0"}, self.input_channels,
                            self.features[0], CONV_KERNEL)]
        in_channels = self.features[0]
        for stage, (out_channels, n_blocks) in enumerate(zip(self.features, self.blocks)):
            for block in range(n_blocks):
                path = f"encoder.stages.{stage}.blocks.{block}"
                block_in = in_channels if block == 0 else out_channels
                layers += [ConvLayer(_same(f"{path}.conv1"), block_in, out_channels, CONV_KERNEL),
                           ConvLayer(_same(f"{path}.conv2"), out_channels, out_channels, CONV_KERNEL)]
                if block_in != out_channels:
                    # the skip average-pools first (a module without tensors) in every strided stage
                    skip_index = 0 if stage == 0 else 1
                    layers.append(ConvLayer(_same(f"{path}.skip.{skip_index}"), block_in, out_channels,
                                            POINTWISE_KERNEL, bias=False))
            in_channels = out_channels
        return layers

    def decoder_modules(self) -> list[ConvLayer | PlainModule]:
        """Per decoder stage (deepest first): the transposed conv, then its conv layers."""
        modules: list[ConvLayer | PlainModule] = []
        for stage in range(self.n_stages - 1):
            below, skip = self.features[-stage - 1], self.features[-stage - 2]
            modules.append(PlainModule({FOMO26: f"decoder.upsample_layers.{stage}",
                                        NNSSL: f"decoder.transpconvs.{stage}"}, (below, skip, *UPSAMPLE_KERNEL),
                                       transposed=True))
            for conv in range(self.decoder_convs):
                # the first conv sees [upsampled, skip] concatenated: twice the skip's channels
                modules.append(ConvLayer({FOMO26: f"decoder.decoder_convs.{stage}.conv{conv + 1}",
                                          NNSSL: f"decoder.stages.{stage}.convs.{conv}"},
                                         2 * skip if conv == 0 else skip, skip, CONV_KERNEL, fomo26_dropout=True))
        return modules

    def output_conv(self) -> PlainModule:
        """The full-resolution 1x1 output conv (FOMO26's ``out_conv``, DNA's last ``seg_layers``)."""
        return PlainModule({FOMO26: "decoder.out_conv", NNSSL: f"decoder.seg_layers.{self.n_stages - 2}"},
                           (self.output_channels, self.features[0], *POINTWISE_KERNEL))

    def deep_supervision_convs(self) -> list[PlainModule]:
        """DNA's other ``seg_layers`` (built whether or not deep supervision is on; nnssl's checkpoints hold them)."""
        return [PlainModule({NNSSL: f"decoder.seg_layers.{stage}"},
                            (self.output_channels, self.features[-stage - 2], *POINTWISE_KERNEL))
                for stage in range(self.n_stages - 2)]

    def expected_shapes(self, naming: str) -> dict[str, tuple[int, ...]]:
        """Every canonical key of this layout's full network (pretraining output) in ``naming``, with its shape."""
        modules = [*self.encoder_layers(), *self.decoder_modules(), self.output_conv(),
                   *(self.deep_supervision_convs() if naming == NNSSL else [])]
        return {key: shape for module in modules for key, shape in module.tensors(naming)}

    def aliases(self, naming: str) -> dict[str, str]:
        """Second name -> canonical key of every tensor the library's state dict lists twice (see module docstring)."""
        layers = [m for m in (*self.encoder_layers(), *self.decoder_modules()) if isinstance(m, ConvLayer)]
        aliases = dict(alias for layer in layers for alias in layer.aliases(naming))
        if naming == NNSSL:
            encoder_keys = [key for key in [*self.expected_shapes(naming), *aliases] if key.startswith(ENCODER_PREFIX)]
            aliases.update({DNA_ENCODER_ALIAS_PREFIX + key: aliases.get(key, key) for key in encoder_keys})
        return aliases


def _same(path: str) -> dict[str, str]:
    """A module path both namings share."""
    return {FOMO26: path, NNSSL: path}


def describe(layout: ResEncLayout, naming: str) -> dict[str, object]:
    """The checkpoint's architecture in the names FOMO26 and nnssl use."""
    name = layout.model_name
    return {"family": "resenc", "naming": naming, "architecture": name or "resenc (unpublished size)",
            "nnssl_name": NNSSL_RESENC_L if name == "resenc_unet_b" else None,
            "features_per_stage": list(layout.features), "blocks_per_stage": list(layout.blocks),
            "decoder_convs": layout.decoder_convs, "input_channels": layout.input_channels}


def detect_naming(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """:data:`FOMO26` or :data:`NNSSL` from the stem's key; None when there is no residual-encoder stem."""
    return next((naming for naming, key in STEM_WEIGHT.items()
                 if key in state_dict and state_dict[key].ndim == len(CONV_KERNEL) + 2), None)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, ResEncLayout] | None:
    """(naming, layout) read off a prefix-stripped state dict; None if it has no residual-encoder stem.

    Detection only names the candidate layout (features and blocks per stage from the residual blocks' first
    convs, decoder convs from the deepest decoder stage); whether the state dict really matches it is decided by
    comparing against :meth:`ResEncLayout.expected_shapes`.
    """
    naming = detect_naming(state_dict)
    if naming is None:
        return None
    stem = state_dict[STEM_WEIGHT[naming]]
    features, blocks = [], []
    while _block_conv(len(features), 0) in state_dict:
        stage = len(features)
        features.append(int(state_dict[_block_conv(stage, 0)].shape[0]))
        blocks.append(next(block for block in range(1, len(state_dict) + 2)
                           if _block_conv(stage, block) not in state_dict))
    first_decoder_conv = {FOMO26: "decoder.decoder_convs.0.conv{}.conv.weight",
                          NNSSL: "decoder.stages.0.convs.{}.conv.weight"}[naming]
    decoder_convs = 0
    while first_decoder_conv.format(decoder_convs + (1 if naming == FOMO26 else 0)) in state_dict:
        decoder_convs += 1
    features = features or [int(stem.shape[0])]
    layout = ResEncLayout(tuple(features), tuple(blocks or [0]), decoder_convs or RESENC_DECODER_CONVS,
                          input_channels=int(stem.shape[1]))
    output = state_dict.get(f"{layout.output_conv().paths[naming]}.weight")
    if output is not None and output.ndim == len(POINTWISE_KERNEL) + 2:
        layout = ResEncLayout(layout.features, layout.blocks, layout.decoder_convs, layout.input_channels,
                              int(output.shape[0]))
    return naming, layout


def _block_conv(stage: int, block: int) -> str:
    """The first conv kernel of residual block ``block`` in stage ``stage`` (the same in both namings)."""
    return f"encoder.stages.{stage}.blocks.{block}.conv1.conv.weight"


def split_aliases(state_dict: Mapping[str, torch.Tensor], layout: ResEncLayout, naming: str
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict without the second names of its tensors, and each dropped name with the reason.

    A second name whose tensor differs from its canonical key's stays in (and is then reported unexpected); one
    without its canonical key takes that key's place.
    """
    aliases = layout.aliases(naming)
    kept: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, tensor in state_dict.items():
        canonical = aliases.get(key)
        if canonical is None:
            kept.setdefault(key, tensor)
        elif canonical not in state_dict:
            kept[canonical] = tensor
        elif state_dict[canonical].shape == tensor.shape and torch.equal(state_dict[canonical], tensor):
            dropped[key] = f"second name of {canonical} (the same tensor)"
        else:
            kept[key] = tensor
    return kept, dropped


def layout_mismatches(state_dict: Mapping[str, torch.Tensor], layout: ResEncLayout, naming: str,
                      optional: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Keys of an alias-free ``state_dict`` that differ from ``layout``: ``missing``, ``unexpected``, ``wrong_shape``.

    Keys starting with one of ``optional`` may be absent (e.g. the decoder of a fine-tuned image-level network).
    """
    expected = layout.expected_shapes(naming)
    return {
        "missing": [key for key in expected if key not in state_dict and not key.startswith(optional or ("\0",))],
        "unexpected": [key for key in state_dict if key not in expected],
        "wrong_shape": [key for key, shape in expected.items()
                        if key in state_dict and tuple(state_dict[key].shape) != shape],
    }

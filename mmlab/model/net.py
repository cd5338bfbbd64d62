"""Stem, stages, downsampling and head; :func:`build` is the only reader of an ArchSpec."""

from __future__ import annotations

import torch
from torch import nn

from mmlab.spec.arch import ArchSpec
from mmlab.model.blocks import Block, GlobalBranch, LocalBranch, Mixer
from mmlab.model.layers import FFN, BNLinear, ConvBN, PatchMerging, Residual


def _conv_ffn(dim: int, ffn_hidden: int) -> nn.Sequential:
    """Residual DW 3x3 Conv-BN then residual FFN (the halves around a patch merging)."""
    return nn.Sequential(Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim)), Residual(FFN(dim, ffn_hidden)))


class Stage(nn.Module):
    """An optional ``downsample`` (conv-FFN, patch merging, conv-FFN) then ``blocks``."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class MobileMamba(nn.Module):
    """A MobileMamba-family network built from an :class:`~mmlab.spec.ArchSpec`.

    Follows timm's conventions: ``forward_features`` (B, C, H, W) → ``forward_head`` logits,
    ``num_classes``, ``num_features``, ``get_classifier`` and ``reset_classifier``.
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        self.num_features = spec.widths[-1]

        stem: list[nn.Module] = []
        in_ch = spec.in_chans
        for i, ch in enumerate(spec.stem_channels):
            if i:
                stem.append(nn.ReLU())
            stem.append(ConvBN(in_ch, ch, 3, 2, 1))
            in_ch = ch
        self.stem = nn.Sequential(*stem)  # convs at indices 0, 2, 4, ...

        stages = []
        for i, (stage, rates) in enumerate(zip(spec.stages, spec.block_drop_path)):
            down = None
            if i:
                prev = spec.stages[i - 1].width
                down = nn.Sequential(
                    _conv_ffn(prev, spec.ffn_hidden(prev)),
                    PatchMerging(prev, stage.width),
                    _conv_ffn(stage.width, spec.ffn_hidden(stage.width)),
                )
            blocks = [self._block(spec, i, rate) for rate in rates]
            stages.append(Stage(down, blocks))
        self.stages = nn.ModuleList(stages)
        self.head = self._head(spec.num_classes)

    @staticmethod
    def _block(spec: ArchSpec, i: int, drop_path: float) -> Block:
        stage = spec.stages[i]
        g, l, ident = stage.global_channels, stage.local_channels, stage.identity_channels
        global_op = (
            GlobalBranch(g, stage.kernel, stage.wavelet_levels, spec.wavelet,
                         spec.d_inner(i), stage.dt_rank, spec.d_state, spec.scan)
            if g else nn.Identity()
        )
        local_op = LocalBranch(l, stage.kernel) if l else nn.Identity()
        mixer = Mixer(stage.width, (g, l, ident), global_op, local_op)
        return Block(stage.width, spec.ffn_hidden(stage.width), mixer, drop_path)

    def _head(self, num_classes: int) -> nn.Module:
        return BNLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, R, R) → last stage's map (B, C, R/stride/2^(S-1), ...)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes`` 0 removes it); only average pooling exists."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool: {global_pool!r} is not allowed; only 'avg'")
        self.num_classes = num_classes
        self.spec = self.spec.replace(num_classes=num_classes)
        self.head = self._head(num_classes)


def build(spec: ArchSpec) -> MobileMamba:
    """Build the network a spec describes (training mode, reference initialisation)."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build() takes an ArchSpec, got {type(spec).__name__}; see mmlab.load_spec")
    return MobileMamba(spec)

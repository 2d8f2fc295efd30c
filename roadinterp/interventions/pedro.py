"""PEDRO as a pyvene intervention: ``h' = l(h) * h`` on a hidden-state site.

``PedroIntervention`` is sourceless and trainable. pyvene hands it the site's
positions (``[batch, n_positions, d]``); its generator pools them (``last``,
``mean`` or ``attention``), maps the pooled vector through the bottleneck MLP to
``l: [batch, d]`` and scales every given position by ``l``. With positions
``"all"`` this is the paper's prompt-dependent scaling of the whole prompt; with
``"last"`` it pools and scales the last token. pyvene passes no padding mask:
use unpadded or left-padded batches with ``last`` pooling. At init ``l == 1``
and the intervention is exactly the identity.
"""

from __future__ import annotations

import torch

from roadinterp._pyvene import pv
from roadinterp.errors import ConfigError
from roadinterp.pedro import PedroConfig, PedroGenerator, scale


class PedroIntervention(pv.SourcelessIntervention, pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
    """Sourceless, trainable PEDRO scaling of a site.

    Pass a :class:`~roadinterp.pedro.PedroConfig` (``config=``), its fields as
    keywords (``bottleneck=8, pooling="last", activation="relu"``), or an existing
    ``generator`` (to share weights with a :class:`~roadinterp.pedro.PedroAdapter`).
    """

    def __init__(
        self, embed_dim: int, *, config: PedroConfig | None = None, bottleneck: int = 8, pooling: str = "last",
        activation: str = "relu", seed: int | None = None, generator: PedroGenerator | None = None, **kwargs,
    ) -> None:
        super().__init__(embed_dim=embed_dim, **kwargs)
        self.keep_last_dim = True  # pyvene hands us [batch, n_positions, d], not [batch, n_positions * d]
        if generator is not None:
            if generator.config.dim != embed_dim or generator.out_dim != embed_dim:
                raise ConfigError(
                    f"generator pools width {generator.config.dim} and scales width {generator.out_dim}, "
                    f"but the site is {embed_dim} wide"
                )
            self.generator = generator
            return
        if config is None:
            config = PedroConfig(embed_dim, bottleneck, pooling, activation)
        elif config.dim != embed_dim:
            raise ConfigError(f"PedroConfig.dim is {config.dim} but the site is {embed_dim} wide")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.generator = PedroGenerator(config, embed_dim, generator=gen)

    @property
    def config(self) -> PedroConfig:
        return self.generator.config

    def forward(self, base, source=None, subspaces=None, **kwargs):
        d = self.generator.config.dim
        if base.shape[-1] % d:
            raise ConfigError(f"PedroIntervention is {d} wide but the site is {base.shape[-1]} wide")
        h = base if base.dim() == 3 else base.reshape(base.shape[0], -1, d)  # [batch, n_positions, d]
        vectors = self.generator(h)  # [batch, d] fp32
        return scale(h, vectors).reshape(base.shape)

    def __str__(self) -> str:
        return f"PedroIntervention({self.generator.extra_repr()})"

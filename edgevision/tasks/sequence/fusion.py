"""FusionActNet (Saha et al., "Decoding Human Activities ...", arXiv 2310.02011).

What the paper says (abstract, v1-v3): two residual networks are trained *separately*, one on
the static activities (the body is immobile: sitting, standing, lying) and one on the dynamic
ones (walking, stairs, jogging ...); then a guidance module, a Residual MobileNet, is trained
with the two pre-trained experts to weight their prediction vectors:
``y_pred = g(x) * y_s + (1 - g(x)) * y_d``. UCI HAR 96.71% (v1) / 97.35% (v3), MotionSense 95.35%.

Choices where the text is silent (ours):
- experts: :class:`~edgevision.tasks.sequence.models.ResNet1d` with heads over their own
  superclass only (S static, D dynamic classes); guidance:
  :class:`~edgevision.tasks.sequence.models.ResidualMobileNet1d` with one output, g = sigmoid;
- the two prediction vectors are the experts' softmaxes placed in the full K-class vector (zero
  on the other superclass), so y_pred is a probability vector; the model returns
  ``log(y_pred)`` as logits (softmax(logits) == y_pred; argmax unchanged), computed in log
  space (``logsigmoid(z) + log_softmax(static)`` and ``logsigmoid(-z) + log_softmax(dynamic)``,
  reordered into class order) so it is exact and stable and exports to ONNX as Gather/Concat;
- staged training = three decoupled losses (:meth:`FusionActNet.losses`): each expert's
  cross-entropy on its own superclass's samples only, and the guidance module's loss on the
  fused prediction with the experts' outputs detached. Because the supports are disjoint, that
  stage-2 loss -log y_pred[y] = -log g - log y_s[y] (static y) splits into a binary
  cross-entropy on static-vs-dynamic for g plus a term the guidance cannot change, so the
  guidance gradient does not depend on the experts' state and the experts get no gradient from
  the fusion: training all three together in one loop gives each part exactly the gradients of
  the paper's separate stages (their order is irrelevant). ``stage=`` runs one stage alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgevision.models.base import check_num_classes
from edgevision.registry import register_model
from edgevision.tasks.sequence.models import (
    _PAPER,
    DEFAULT_CHANS,
    DEFAULT_WINDOW,
    SEQUENCE_CFG,
    ResidualMobileNet1d,
    ResNet1d,
    SequenceNet,
    _check_no_drop_path,
    check_sequence_input,
    check_window,
)

# UCI HAR's labels 1..6 = WALKING, WALKING_UPSTAIRS, WALKING_DOWNSTAIRS, SITTING, STANDING,
# LAYING: indices 3, 4, 5 are static. Used when a 6-class model is built without a mapping.
UCI_HAR_STATIC = (3, 4, 5)
STAGES = ("all", "experts", "guidance")


def check_static_classes(static_classes, num_classes: int) -> tuple[int, ...]:
    """The static class indices, checked: unique ints in [0, K), leaving both superclasses non-empty."""
    if static_classes is None:
        if num_classes == len(("walking", "upstairs", "downstairs", "sitting", "standing", "laying")):
            return UCI_HAR_STATIC
        raise ValueError(f"fusionactnet needs static_classes=(indices of the static activities among the "
                         f"{num_classes} classes), e.g. static_classes=(3, 4, 5) for UCI HAR; the rest are dynamic")
    try:
        static = tuple(int(i) for i in static_classes)
    except (TypeError, ValueError):
        raise TypeError(f"static_classes must be a sequence of class indices; got {static_classes!r}") from None
    bad = [i for i in static if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"static_classes {bad} out of range for {num_classes} classes (0..{num_classes - 1})")
    if len(set(static)) != len(static):
        raise ValueError(f"static_classes has repeated indices: {static}")
    if not static or len(static) == num_classes:
        raise ValueError(f"fusionactnet needs at least one static and one dynamic class; got static_classes="
                         f"{static} of {num_classes} classes")
    return tuple(sorted(static))


class FusionActNet(SequenceNet):
    """Static expert + dynamic expert (1-D ResNets) fused by a guidance Residual MobileNet."""

    classifier_names = ("static_net", "dynamic_net", "guidance")

    def __init__(self, in_chans: int = DEFAULT_CHANS, num_classes: int = 6, window: int | None = DEFAULT_WINDOW,
                 static_classes=None, drop_rate: float = 0.2, expert_kwargs: dict | None = None,
                 guidance_kwargs: dict | None = None):
        super().__init__()
        check_num_classes(num_classes)
        if num_classes < 2:
            raise ValueError(f"fusionactnet needs >= 2 classes (a static and a dynamic one); got num_classes={num_classes}")
        self._init_common(in_chans, num_classes, window, drop_rate)
        static = check_static_classes(static_classes, num_classes)
        dynamic = tuple(i for i in range(num_classes) if i not in static)
        self.static_classes, self.dynamic_classes = static, dynamic
        common = dict(in_chans=in_chans, window=None, drop_rate=drop_rate)  # the wrapper checks the window
        self.static_net = ResNet1d(num_classes=len(static), **common, **(expert_kwargs or {}))
        self.dynamic_net = ResNet1d(num_classes=len(dynamic), **common, **(expert_kwargs or {}))
        self.guidance = ResidualMobileNet1d(num_classes=1, **common, **(guidance_kwargs or {}))
        # position of class k in cat([static log-probs, dynamic log-probs]) (an ONNX Gather)
        order = [0] * num_classes
        for j, k in enumerate(static + dynamic):
            order[k] = j
        self.register_buffer("class_order", torch.tensor(order, dtype=torch.long), persistent=False)
        # label k -> index within its expert's head, and superclass (1 = static) of each label
        local = [static.index(k) if k in static else dynamic.index(k) for k in range(num_classes)]
        self.register_buffer("local_index", torch.tensor(local, dtype=torch.long), persistent=False)
        is_static = [k in static for k in range(num_classes)]
        self.register_buffer("is_static", torch.tensor(is_static, dtype=torch.bool), persistent=False)
        self.feature_info = self.guidance.feature_info
        self.num_features = self.guidance.num_features

    # --- inference ----------------------------------------------------------------------
    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(static logits [B, S], dynamic logits [B, D], guidance logit [B]; sigmoid = P(static))."""
        check_sequence_input(self, x)
        return self.static_net(x), self.dynamic_net(x), self.guidance(x)[:, 0]

    def fuse(self, static_logits, dynamic_logits, gate_logit) -> torch.Tensor:
        """log(g * y_s + (1 - g) * y_d) over the K classes, computed in log space."""
        log_s = F.logsigmoid(gate_logit)[:, None] + F.log_softmax(static_logits, dim=1)
        log_d = F.logsigmoid(-gate_logit)[:, None] + F.log_softmax(dynamic_logits, dim=1)
        return torch.cat([log_s, log_d], dim=1).index_select(1, self.class_order)

    def forward(self, x: torch.Tensor, parts: bool = False):
        """Fused logits [B, K]; ``parts=True``: the tuple of :meth:`forward_parts` (for the
        staged losses; through ``model(x, parts=True)`` so DistributedDataParallel sees it)."""
        out = self.forward_parts(x)
        return out if parts else self.fuse(*out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input(self, x)
        return self.guidance.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError("fusionactnet's head needs both experts: call model(x) or model.forward_parts(x)")

    def forward_intermediates(self, *args, **kwargs):
        raise NotImplementedError("fusionactnet has three networks; take intermediates from model.static_net, "
                                  "model.dynamic_net or model.guidance")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        raise ValueError("fusionactnet's classes are split into static and dynamic experts; build a new model "
                         "with num_classes=K and static_classes=(...) instead of resetting the classifier")

    def get_classifier(self):
        return self.static_net.head, self.dynamic_net.head, self.guidance.head

    # --- training -----------------------------------------------------------------------
    def losses(self, parts, target: torch.Tensor, stage: str = "all",
               label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        """The three decoupled losses of the staged training (see the module docstring).

        stage: 'experts' (stage 1: each expert on its superclass's samples), 'guidance'
        (stage 2: the fused prediction's NLL with the experts detached) or 'all' (both; the
        gradients of each part are those of its own stage). Returns {'loss': total, ...parts}.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        static_logits, dynamic_logits, gate_logit = parts
        out = {}
        if stage in ("all", "experts"):
            sup = self.is_static[target]
            local = self.local_index[target]
            out["loss_static"] = _masked_ce(static_logits, local, sup, label_smoothing)
            out["loss_dynamic"] = _masked_ce(dynamic_logits, local, ~sup, label_smoothing)
        if stage in ("all", "guidance"):
            fused = self.fuse(static_logits.detach(), dynamic_logits.detach(), gate_logit)
            out["loss_guidance"] = F.nll_loss(fused, target)
        out["loss"] = sum(out.values())
        return out


def _masked_ce(logits, local_target, mask, label_smoothing):
    """Cross-entropy over the samples of one superclass (0 when the batch has none; an expert
    with a single class has nothing to learn and gives 0)."""
    if logits.shape[1] < 2:
        return logits.sum() * 0.0  # touches the expert's parameters (zero gradient) for DDP
    # every sample is computed (shapes stay static for compile/export); others weigh 0
    per = F.cross_entropy(logits, local_target.clamp(max=logits.shape[1] - 1), reduction="none",
                          label_smoothing=label_smoothing)
    w = mask.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


@register_model("fusionactnet", task="sequence", paper=_PAPER, input_size=(DEFAULT_CHANS, DEFAULT_WINDOW),
                cfg=SEQUENCE_CFG, source="paper abstract: UCI HAR 96.71% (v1), 97.35% (v3); MotionSense 95.35%",
                notes="static and dynamic 1-D ResNet experts weighted by a 1-D Residual MobileNet guidance "
                      "module; needs static_classes=(...) unless num_classes=6 (UCI HAR: 3, 4, 5 static)")
def fusionactnet(num_classes: int = 6, in_chans: int = DEFAULT_CHANS, drop_path_rate: float = 0.0,
                 static_classes=None, window: int | None = DEFAULT_WINDOW, **kwargs):
    _check_no_drop_path("fusionactnet", drop_path_rate)
    return FusionActNet(in_chans=in_chans, num_classes=num_classes, window=check_window(window),
                        static_classes=static_classes, **kwargs)

"""``HealthThresholds``: every threshold of the health rules (health.py) and of the silent-bug
diagnosis (diagnosis.py), with the reason for each default.

Its own module, below both: the rules and the diagnosis read the same thresholds, and the
diagnosis runs inside the rules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HealthThresholds:
    """Thresholds of the health rules, with the reasoning behind each default.

    grad_norm_abs: a total or per-parameter gradient norm above 1e3 is far
        outside what a normalised model with a mean-reduced loss produces
        (the bundled scenarios stay below ~30); it means an unscaled loss,
        a missing normalisation or a learning rate that already diverged.
    grad_norm_spike: x times the norm's running average (EMA, decay
        ``ema_decay``) after ``warmup_steps`` steps; noise between batches
        moves the norm by 2-3x, a blow-up by orders of magnitude.
    vanishing_ratio / learning_ratio: a parameter whose grad norm is below
        1e-7 of its weight norm while another parameter's is above 1e-4
        gets no meaningful signal compared with the rest of the network.
    dead_fraction: over half of a ReLU layer's units zero for the whole batch.
    saturated_fraction / saturation_band: over 90% of a Sigmoid/Tanh layer's
        outputs within 0.1% of the output range from a bound (the gradient
        there is < 1e-3 of its peak).
    tiny_update_ratio / huge_update_ratio: the healthy band of
        ||update|| / ||weight|| is roughly 1e-4..1e-2 per step (Karpathy's
        ~1e-3 rule of thumb); below 1e-8 nothing is learnt, above 1.0 the
        step replaces the weights. Ratios are ignored while the weight norm
        is below ``min_weight_norm`` (zero-initialised biases) and, for
        huge_updates, during the first ``warmup_steps`` steps (Adam's first
        steps are lr-sized whatever the weight scale). tiny_updates, like
        vanishing gradients, must last ``vanishing_steps`` measured steps (a
        LayerScale-gated block under SGD has them on step 0 only). For 1-D
        parameters (biases, norm gains) huge_updates divides by at least
        ``bias_floor`` (0.05) per element: a bias that crosses zero under Adam
        at lr 1e-2 is learning, not being overwritten.
    vanishing_steps / vanishing_update_ratio: a vanishing gradient is reported
        only when it lasts 3 measured steps in a row and the optimizer's last
        update of the parameter was below 1e-6 of its norm. A block scaled by a
        LayerScale of 1e-6 (ConvNeXt, CaiT) has such gradients at step 0 and
        learns normally: Adam rescales them into ~lr-sized updates, and under
        SGD the scale itself grows within a step or two.
    loss_factor / loss_window: the median of the last 5 losses above 4x the
        best such median seen (and at least ``loss_min_rise`` above it); a
        median, so a single spiky batch that training recovers from is not
        divergence (the bidirectional GRU under RMSprop has one at step 66).

    Silent bugs (engine/diagnosis.py):

    input_scale: the input of the first Linear/Conv has a per-feature RMS
        (sqrt(mean^2 + std^2)) above 10. PyTorch's default init
        (Kaiming-uniform, bound 1/sqrt(fan_in)) makes pre-activations about
        as large as the inputs' RMS, so ~1 is what it expects; standardised
        data is ~1, raw 0-255 pixels ~100.
    progress_window / progress_sigma / progress_min_gain: no progress when,
        after 2 windows of 10 steps, the mean loss of the latest 10 is not
        below the mean of the first 10 by more than 2 standard errors of the
        difference (batch noise) and at least 1% of the first mean; not while
        the lr rises (a warm-up). A healthy model improves on its first
        steps within 20 steps; one that plateaus later has improved and stays
        quiet. chance_tolerance: the mean within 10% of ln C (C classes read
        from the loss input) is called chance level.
    lr_collapse_factor / lr_collapse_steps: the lr fell below 1/100 of its
        peak within 10 steps of the peak. A cosine decay needs ~94% of its
        length to lose two orders of magnitude; StepLR(step_size=1,
        gamma=0.1) stepped per batch does it in 2.
    weight_decay_ratio / weight_decay_shrink: the decay term (wd*||w||, or
        lr*wd*||w|| against the whole update for decoupled AdamW) is at least
        half the gradient term (median over 10 measured steps), the decayed
        weights' norm has shrunk below half of what it was at the first
        measured step, and the loss stalled (the no-progress test). A decay
        of 1e-4..1e-2 keeps the ratio near 1e-3..1e-1 while the model learns;
        at the equilibrium of a decay that is far too strong the two terms
        are equal (the gradient only holds the weights against the decay),
        so 0.5 with a halved norm separates the two.
    oscillation_window / oscillation_alternation / oscillation_amplitude /
        oscillation_floor / oscillation_settle: over the last 12 losses, the
        change flips sign on 80% of steps, the median change is 50% of the
        loss's level and 5% of the first window's mean loss, and the second
        half is not 5% lower than the first. Mini-batch noise flips sign on
        about 2/3 of steps but with a smaller amplitude on a model that
        learns, and a converged model's noise is small against its starting
        loss. When the data repeats every P < 12 batches, each loss is
        compared with the same batch's P steps earlier (two batches of
        different difficulty alternate without anything being wrong).
    loss_watch_steps / loss_watch_every: the loss function's inputs are
        inspected (probabilities, broadcasting) on the first 3 steps and every
        100th: those bugs are in the code and show on step 0, and watching costs
        a few hundred microseconds per step. Warnings are caught every step.
    Gradients exploding through time use ``grad_norm_abs`` and
        ``grad_norm_spike`` on each recurrent layer's own gradient norm.
    """

    grad_norm_abs: float = 1e3
    grad_norm_spike: float = 50.0
    ema_decay: float = 0.9
    warmup_steps: int = 5
    vanishing_ratio: float = 1e-7
    learning_ratio: float = 1e-4
    dead_fraction: float = 0.5
    saturated_fraction: float = 0.9
    saturation_band: float = 1e-3
    tiny_update_ratio: float = 1e-8
    huge_update_ratio: float = 1.0
    min_weight_norm: float = 1e-3
    loss_factor: float = 4.0
    loss_window: int = 5
    loss_min_rise: float = 0.1
    vanishing_steps: int = 3
    bias_floor: float = 0.05
    vanishing_update_ratio: float = 1e-6
    input_scale: float = 10.0
    progress_window: int = 10
    progress_sigma: float = 2.0
    progress_min_gain: float = 0.01
    chance_tolerance: float = 0.1
    lr_collapse_factor: float = 100.0
    lr_collapse_steps: int = 10
    weight_decay_ratio: float = 0.5
    weight_decay_shrink: float = 0.5
    oscillation_window: int = 12
    oscillation_alternation: float = 0.8
    oscillation_amplitude: float = 0.5
    oscillation_floor: float = 0.05
    oscillation_settle: float = 0.05
    loss_watch_steps: int = 3
    loss_watch_every: int = 100
